"""Celery tasks: thin adapters between Message rows (chat.worker.replies) and the engine."""
from __future__ import annotations

import logging
from collections.abc import Iterator

from celery import shared_task
from celery.signals import worker_ready, worker_shutdown
from django.conf import settings
from django.db import close_old_connections
from django.utils.translation import gettext as _

from chat.conversations import lifecycle
from chat.conversations.liveness import WritingBeacon
from chat.core import errors, log_context
from chat.core.metrics_snapshots import ensure_pushing, stop_pushing
from chat.core.served_models import all_models, get_model
from chat.core.worker_routing import Heartbeat, private_queue
from chat.worker import watchdog
from chat.worker.replies import ReplyJob, ReplyWriter, claim
from chat.worker.tick_writer import tick_writer
from inference.batching import BatchConfig
from inference.engine import Delta, Engine, GenerationStats, PromptTooLong, SamplingParams
from inference.loading import ModelCache, ModelLoadError
from inference.registry import ModelSpec, UnknownModel
from inference.upstream import UpstreamEngine, UpstreamError

log = logging.getLogger(__name__)
_models = ModelCache()
_engines: dict[ModelSpec, Engine | UpstreamEngine] = {}


def engine_for(spec: ModelSpec) -> Engine | UpstreamEngine:
    """The process-wide engine for a model, loading it on first use (an upstream model loads nothing)."""
    engine = _engines.get(spec)
    if engine is None:
        if spec.upstream:
            engine = _engines[spec] = UpstreamEngine(spec)
        else:
            # The batching manager takes token ids only: vision models answer one request per thread.
            engine = _engines[spec] = Engine(_models.get(spec), spec, None if spec.vision else batch_config(),
                                             max_sequences=settings.ENGINE_MAX_SEQUENCES,
                                             solo_sequences=settings.ENGINE_SOLO_SEQUENCES)
    return engine


def batch_config() -> BatchConfig | None:
    if not settings.ENGINE_BATCHING:
        return None
    return BatchConfig(page_size=settings.ENGINE_KV_PAGE_SIZE, num_blocks=settings.ENGINE_KV_BLOCKS,
                       max_batch_tokens=settings.ENGINE_MAX_BATCH_TOKENS)


def sampling_params(spec: ModelSpec, job: ReplyJob) -> SamplingParams:
    """The conversation's sampling settings within the operator's limits (None: the model's default)."""
    return SamplingParams(
        # The conversation may ask for fewer tokens than the operator allows, never more.
        max_new_tokens=min(job.max_tokens or spec.max_new_tokens, spec.max_new_tokens),
        temperature=spec.temperature if job.temperature is None else job.temperature,
        top_p=spec.top_p if job.top_p is None else job.top_p,
        seed=job.seed,
        stop=tuple(job.stop),
    )


@shared_task(name="inference.tasks.generate", ignore_result=True)
def generate(message_id: str) -> None:
    """Write the answer for one pending assistant message, streaming it to the conversation."""

    # The request id came in the task's headers (chat.core.log_context sets it before each task).
    log_context.bind(message_id=message_id)
    job = claim(message_id)
    if job is None:
        return
    log_context.bind(conversation_id=job.conversation_id, model=job.model)
    log.info("writing answer %s with %s", message_id, job.model)
    writer = ReplyWriter(job)
    try:
        spec = get_model(job.model)
        engine = engine_for(spec)
        if isinstance(engine, UpstreamEngine):
            _answer_upstream(engine, job, sampling_params(spec, job), writer)
        else:
            _answer_locally(engine, job, sampling_params(spec, job), writer)
    except (UnknownModel, ModelLoadError, PromptTooLong, UpstreamError) as exc:
        writer.fail(_failure_text(exc, job))
    except Exception:
        error = errors.error_id()
        log.exception("generation of %s failed (error id %s)", message_id, error, extra={"error_id": error})
        try:
            writer.fail(errors.with_error_id(
                _("The model failed while writing this answer; the partial answer was kept."), error))
        except Exception:  # e.g. the database is gone too: the row stays for a later sweep
            log.exception("could not record the failure of %s", message_id)
    finally:
        writer.close()


def _failure_text(exc: Exception, job: ReplyJob) -> str:
    """What the person who asked reads for a failure we expected. A prompt too long is theirs to fix and
    says so; for the others, a stable sentence and an error id, while the log line with the same id has
    the detail (a model's path, the loader's exception, an upstream's reply)."""
    if isinstance(exc, PromptTooLong):
        return str(exc)
    error = errors.error_id()
    log.error("answer %s failed (error id %s): %s", job.message_id, error, exc, extra={"error_id": error})
    if isinstance(exc, UpstreamError) and exc.status:
        text = _("The upstream server for %(model)s answered with status %(status)s.")
    elif isinstance(exc, UpstreamError):
        text = _("The upstream server for %(model)s failed to answer.")
    elif isinstance(exc, ModelLoadError):
        text = _("The model %(model)s could not be loaded.")
    else:
        text = _("The model %(model)s is not served here.")
    return errors.with_error_id(text % {"model": job.model, "status": getattr(exc, "status", None)}, error)


def _answer_locally(engine: Engine, job: ReplyJob, params: SamplingParams, writer: ReplyWriter) -> None:
    prompt_ids = engine.encode_chat(job.history, params.max_new_tokens, conversation=job.conversation_id)
    writer.start(len(prompt_ids))
    stats = GenerationStats()
    # In the shared batch, the process's tick writer reads the tokens and writes the text (no thread is
    # woken per token); a request that cannot join the batch is relayed by this thread.
    generation = engine.open(prompt_ids, params, stats, wake=tick_writer().wake)
    # The thread now waits for the whole answer: it lets its database connection go unless connections are
    # kept (SQLite's default), or 128 answers would hold 128 PostgreSQL connections (DATABASE_CONN_MAX_AGE).
    close_old_connections()
    if generation is None:
        ended = _relay(engine.generate(prompt_ids, params, stats), stats, writer)
    else:
        try:
            ended = _conclude(tick_writer().follow(writer, generation, stats), stats, writer)
        finally:
            generation.report()
    if ended:
        engine.remember_turn(job.conversation_id, job.history, writer.content, prompt_ids, stats)


def _answer_upstream(engine: UpstreamEngine, job: ReplyJob, params: SamplingParams, writer: ReplyWriter) -> None:
    # The upstream renders and counts the prompt itself; its count arrives with the last chunk.
    writer.start(0)
    close_old_connections()  # as for a local answer: no connection held while the upstream writes
    stats = GenerationStats()
    _relay(engine.generate(job.history, params, stats), stats, writer)


def _relay(stream: Iterator[Delta], stats: GenerationStats, writer: ReplyWriter) -> bool:
    """Feed the engine's deltas to the writer and finish the row; True when the answer ended on its own."""
    ended = False
    for delta in stream:
        if not writer.append(delta.content, delta.reasoning, stats.completion_tokens):
            stream.close()
            break
    else:
        writer.completion_tokens = stats.completion_tokens
        writer.prompt_tokens = stats.prompt_tokens or writer.prompt_tokens
        ended = writer.final_check()
    # All its text saved and sent before the end's frames; a refused save means the row was stopped.
    return _conclude(writer.release() and ended, stats, writer)


def _conclude(ended: bool, stats: GenerationStats, writer: ReplyWriter) -> bool:
    """Finish the row: done when the answer ended on its own; otherwise the text was refused: a moderation
    rule tripped, Stop was pressed, nobody is watching, or the row was deleted."""
    if ended:
        writer.done(stats.finish_reason)
        return True
    if writer.filtered is not None:
        writer.content_filtered()
    elif writer.should_cancel():
        writer.cancelled()
    return False


_heartbeats: list[Heartbeat] = []


@worker_ready.connect
def join_models(sender=None, **kwargs) -> None:
    """Load the models whose queues this worker consumes (so the first answer is not slow),
    then take a private queue per model and announce it, so conversations stick to us."""
    if sender is None:
        return
    ensure_pushing()  # this worker's metrics reach the web's /metrics through Redis
    # The sender is the worker's consumer; its app knows which queues this worker was given.
    queues = set(sender.app.amqp.queues.consume_from)
    mine = [spec.celery_queue for spec in all_models().values() if spec.celery_queue in queues]
    for spec in all_models().values():
        if spec.celery_queue in mine:
            try:
                engine_for(spec)
            except ModelLoadError:
                pass  # already logged in one line; answers for it fail with the reason
    for queue in mine:
        sender.add_task_queue(private_queue(queue, sender.hostname))
    if mine:
        _heartbeats.append(Heartbeat(sender.hostname, mine).start())
        # Answers left streaming by a worker that died are failed (their text kept) by the survivors;
        # answers whose queued task Redis lost are queued again, and those never taken fail in time.
        _heartbeats.append(WritingBeacon(sender.hostname, lifecycle.sweep).start())
    # From now on the worker exits when it can no longer take tasks, so its supervisor restarts it.
    watchdog.start(sender)


@worker_shutdown.connect
def stop_engines(**kwargs) -> None:
    """The batching loops run in non-daemon threads: stop them, or the worker never exits."""
    watchdog.stop()
    while _heartbeats:
        _heartbeats.pop().stop()
    stop_pushing()
    for spec, engine in list(_engines.items()):
        if isinstance(engine, UpstreamEngine):
            # It holds nothing but a connection pool: close it, and open a new one if asked again.
            _engines.pop(spec, None)
            engine.close()
        elif engine.batcher is not None:
            engine.batcher.stop(timeout=10)
