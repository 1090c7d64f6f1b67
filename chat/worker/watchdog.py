"""A worker process's watchdog: it exits (non-zero) when the worker can no longer take tasks, so its
supervisor (`make run`'s stack, compose's restart policy) starts a fresh one.

Celery's consumer reconnects by itself after most broker outages, but not after all. Seen with Celery and
kombu 5.7 (the resilience suite's Redis restart, mid-answer): on the lost connection the consumer first
`collect()`s it, which sets kombu's transport.client to None, then closes it; closing the channel restores
its unacked messages (acks_late: the answers being written) through a new Redis client built from
transport.client.hostname: AttributeError, which is no connection error, so it escapes the consumer,
Celery logs "Unrecoverable error" and starts a warm shutdown that waits for the running answers (their
acks fail the same way) and may not end. The process lives on, its heartbeat thread goes on announcing
it, and nothing is taken. So the watchdog judges end to end, from a thread of its own:
- is Redis reachable (a PING)?
- when it is, does this worker's own consumer answer a Celery control ping (`app.control.ping` to its
  own hostname)? The ping travels through the broker and is answered by the consumer's event loop,
  the loop that takes tasks from the queues: not by the pool threads writing answers, so a worker
  busy on every thread still answers it.
- is the worker stopping by itself (no one asked: Celery's own shutdown after an error)?
Redis unreachable for WORKER_BROKER_GRACE_SECONDS, or reachable while the consumer has not answered for
WORKER_CONSUMER_GRACE_SECONDS (counted from when Redis came back, since the consumer needs a moment to
reconnect), or a shutdown of its own that has not ended within WORKER_CONSUMER_GRACE_SECONDS (the answers
being written may finish meanwhile; Celery then exits non-zero by itself), and the process logs one error
line and ends with EXIT_CODE. Time the process spent stopped (SIGSTOP, a suspended host) does not count:
no judgement is made on time the worker could not use.

What the worker held is then handled as for a worker that was killed (chat/conversations/lifecycle.py):
answers it was writing lose their writing keys and the other workers' (or the restarted worker's) sweep
fails them with their partial text; a redelivered task finds its row no longer pending and skips it, so
nothing is written twice; tasks on its private queue are moved back to the shared queue by the others'
heartbeats (or taken again by a restart under the same name).

It starts once the worker is ready (after the models are loaded: chat/worker/tasks.py join_models) and
stands down as soon as a shutdown is asked for (a signal: a warm shutdown may take long while answers
finish, and whoever asked bounds it); not for a shutdown Celery began by itself, which must still end.
Only a command-line worker is watched: a worker embedded in another process (tests) is not its own
process to end.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable

import redis
from celery.apps.worker import Worker
from celery.bootsteps import RUN
from celery.signals import worker_shutting_down
from celery.worker import state as worker_state
from django.conf import settings
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)
EXIT_CODE = 75  # EX_TEMPFAIL: "try again later", which is what the supervisor does
REDIS_TIMEOUT_SECONDS = 2.0


class Watchdog:
    """Checks every `interval` seconds; calls `on_dead(reason)` once when the worker cannot consume."""

    def __init__(self, app, hostname: str, broker_grace: float, consumer_grace: float,
                 on_dead: Callable[[str], None] | None = None, controller=None) -> None:
        self.app, self.hostname, self.controller = app, hostname, controller
        self.broker_grace, self.consumer_grace = broker_grace, consumer_grace
        self.interval = min(5.0, max(0.5, min(broker_grace, consumer_grace) / 6))
        self.ping_timeout = min(5.0, max(1.0, consumer_grace / 6))
        self.on_dead = on_dead or exit_process
        # Its own client, without redis-py's retries: a check takes a bounded time, which is how time the
        # process spent stopped is told apart (below).
        self._redis = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=REDIS_TIMEOUT_SECONDS,
                                           socket_connect_timeout=REDIS_TIMEOUT_SECONDS, retry=Retry(NoBackoff(), 0))
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-watchdog", daemon=True)
        self._probe: threading.Thread | None = None

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    # ---- the checks ------------------------------------------------------------------------------
    def redis_reachable(self) -> bool:
        try:
            return bool(self._redis.ping())
        except Exception:
            return False

    def consumer_answers(self) -> bool:
        """True when this worker's consumer answered a control ping through the broker."""
        try:
            # A connection of its own each time (a pooled one may be a socket the outage broke), whose reads
            # give up in time (kombu's Redis sockets wait forever by default).
            timeouts = {"socket_timeout": self.ping_timeout + 5, "socket_connect_timeout": REDIS_TIMEOUT_SECONDS}
            with self.app.connection_for_write(transport_options=timeouts) as connection:
                replies = self.app.control.ping(destination=[self.hostname], timeout=self.ping_timeout, limit=1,
                                                connection=connection)
        except Exception:
            log.debug("control ping to %s failed", self.hostname, exc_info=True)
            return False
        return any(self.hostname in reply for reply in replies or ())

    def checks(self, bound: float) -> tuple[bool, bool]:
        """(Redis reachable, consumer answered), run on a helper thread given `bound` seconds: a check that
        hangs (a lock held by a thread that died, a socket without a timeout) counts as the consumer not
        answering, and the watchdog itself never hangs."""
        if self._probe is not None and self._probe.is_alive():
            return True, False  # the last one still hangs
        result: list[tuple[bool, bool]] = []

        def probe() -> None:
            reachable = self.redis_reachable()
            result.append((reachable, reachable and self.consumer_answers()))

        self._probe = threading.Thread(target=probe, name="worker-watchdog-probe", daemon=True)
        self._probe.start()
        self._probe.join(bound)
        return result[0] if result else (True, False)

    def _shutting_down(self) -> bool:
        """Told to stop, or a shutdown was asked for (a signal sets Celery's flags)."""
        return self._stopped.is_set() or shutdown_requested()

    def stopping_by_itself(self) -> bool:
        """The worker is shutting down though no one asked (Celery's "Unrecoverable error" path)."""
        blueprint = getattr(self.controller, "blueprint", None)
        return blueprint is not None and blueprint.state != RUN and not shutdown_requested()

    # ---- the loop ----------------------------------------------------------------------------------
    def _run(self) -> None:
        now = time.monotonic()
        redis_down_since: float | None = None
        stopping_since: float | None = None
        consumer_judged_from = now  # its last answer, or Redis coming back, or the start
        warned = False  # an outage was logged: its end is logged too
        # What the slowest checks take (Redis: connect + read; the ping: connect, publish, wait, then a read
        # cut by its socket timeout): they are given that long, and time beyond it is time the process was
        # stopped.
        check_bound = REDIS_TIMEOUT_SECONDS * 2 + (REDIS_TIMEOUT_SECONDS + 2 * self.ping_timeout + 5) + 1.0
        while not self._shutting_down():
            started = time.monotonic()
            if self._stopped.wait(self.interval):
                return
            checking = time.monotonic()
            stopping = self.stopping_by_itself()
            # Nothing to ask a worker that is stopping: its consumer is gone.
            reachable, answered = (True, False) if stopping else self.checks(check_bound)
            now = time.monotonic()
            # The process was stopped (or starved) beyond what waiting and checking take: that time the
            # worker could not use is not held against it.
            frozen = max(0.0, checking - started - self.interval - 1.0) + max(0.0, now - checking - check_bound)
            if redis_down_since is not None:
                redis_down_since += frozen
            if stopping_since is not None:
                stopping_since += frozen
            consumer_judged_from += frozen
            if self._shutting_down():
                return
            if stopping:
                if stopping_since is None:
                    stopping_since = now
                    log.warning("worker %s is shutting down by itself (Celery logged why above) and takes no "
                                "tasks; it is ended if it has not exited in %g s", self.hostname, self.consumer_grace)
                elif now - stopping_since > self.consumer_grace:
                    return self._dead(f"it began shutting down by itself {now - stopping_since:.0f} s ago and has "
                                      f"not exited (WORKER_CONSUMER_GRACE_SECONDS={self.consumer_grace:g})")
                continue
            if not reachable:
                if redis_down_since is None:
                    redis_down_since = now
                    warned = True
                    log.warning("Redis (the broker) is unreachable; worker %s exits if it stays so for %g s",
                                self.hostname, self.broker_grace)
                elif now - redis_down_since > self.broker_grace:
                    return self._dead(f"Redis (the broker) has been unreachable for {now - redis_down_since:.0f} s "
                                      f"(WORKER_BROKER_GRACE_SECONDS={self.broker_grace:g})")
                continue
            if redis_down_since is not None:
                redis_down_since = None
                consumer_judged_from = max(consumer_judged_from, now)  # its consumer may still be reconnecting
            silent = now - consumer_judged_from
            if answered:
                consumer_judged_from = now
                if warned:
                    warned = False
                    log.warning("worker %s takes tasks again: Redis and its consumer answer", self.hostname)
            elif silent > self.consumer_grace:
                return self._dead(f"its consumer has not answered a control ping for {silent:.0f} s "
                                  f"while Redis answers (WORKER_CONSUMER_GRACE_SECONDS={self.consumer_grace:g})")
            elif silent > self.consumer_grace / 2 and not warned:
                warned = True
                log.warning("the consumer of worker %s has not answered a control ping for %.0f s; the worker "
                            "exits if it stays silent for %g s", self.hostname, silent, self.consumer_grace)

    def _dead(self, why: str) -> None:
        self.on_dead(f"worker {self.hostname} can no longer take tasks: {why}; exiting so that its "
                     f"supervisor starts a new one")


def exit_process(reason: str) -> None:
    """Log the reason, flush the logs (bounded: a handler's lock may be held by a stuck thread), end the
    process's children (an embedded beat), and end the process at once: a warm shutdown would wait on the
    broker and on answers this worker cannot finish properly anyway."""
    log.error(reason)
    for child in multiprocessing.active_children():
        try:
            child.terminate()
        except Exception:
            pass

    def flush() -> None:
        for handler in [*logging.getLogger().handlers, *log.handlers]:
            try:
                handler.flush()
            except Exception:
                pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass

    flusher = threading.Thread(target=flush, name="watchdog-flush", daemon=True)
    flusher.start()
    flusher.join(2.0)
    os._exit(EXIT_CODE)


def shutdown_requested() -> bool:
    """Whether a shutdown was asked for: a signal (SIGTERM, Ctrl-C) sets one of Celery's flags."""
    stop, terminate = worker_state.should_stop, worker_state.should_terminate
    return (stop is not None and stop is not False) or (terminate is not None and terminate is not False)


_watchdog: Watchdog | None = None


def start(consumer) -> Watchdog | None:
    """Watch the worker whose consumer this is (from worker_ready); not a worker embedded in another process."""
    global _watchdog
    controller = getattr(consumer, "controller", None)
    if not isinstance(controller, Worker):
        return None
    if _watchdog is not None:
        _watchdog.stop()
    _watchdog = Watchdog(consumer.app, consumer.hostname, settings.WORKER_BROKER_GRACE_SECONDS,
                         settings.WORKER_CONSUMER_GRACE_SECONDS, controller=controller).start()
    return _watchdog


def stop() -> None:
    """The worker is shutting down (worker_shutdown). Stand down when the shutdown was asked for; a shutdown
    Celery began by itself goes on being watched, so that a worker hanging on its way out is still ended."""
    global _watchdog
    if _watchdog is not None and shutdown_requested():
        _watchdog.stop()
        _watchdog = None


@worker_shutting_down.connect
def _stand_down(**kwargs) -> None:
    """A shutdown was asked for (SIGTERM, Ctrl-C): answers may take long to finish; the supervisor bounds it."""
    if _watchdog is not None:
        _watchdog.stop()
