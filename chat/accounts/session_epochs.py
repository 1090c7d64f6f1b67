"""Open sockets follow the session they were opened with: a logout, a password change or a deactivation
ends them (ChatConsumer closes with 4401).

A socket checks its user once, at the handshake. After that it asks, at every command, for its user's
session epoch: a counter in Redis that grows whenever something may have ended a session of that user
(`sessions_changed`, called by the signals in chat/accounts/signals.py, and by any code that ends sessions
another way). An unchanged epoch costs one GET; a changed one (or a socket that has not looked for
SESSION_RECHECK_SECONDS, which catches sessions that expired or were deleted without a word) re-reads the
session from the store (`live_session`). `sessions_changed` also tells the user's open sockets at once,
through the channel-layer group `user_group(user_id)`, so nothing more streams to a socket whose
session ended, even one that sends no command.

A session that changes its own password stays signed in under a new key (Django's update_session_auth_hash
cycles it; so does signing in again): SessionSuccessionMiddleware notes the new key under the old one's
fingerprint, and a socket opened with the old key follows it, so that session's sockets stay open.
"""
from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
from importlib import import_module
from typing import Any

import redis
from asgiref.sync import async_to_sync, iscoroutinefunction, markcoroutinefunction, sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model, load_backend
from django.utils.crypto import constant_time_compare

from chat.core import redis_server

log = logging.getLogger(__name__)

# The channel-layer event a user's sockets get when one of the user's sessions may have ended
# (ChatConsumer.session_recheck).
RECHECK_EVENT = "session.recheck"
# An epoch nobody bumped for this long is dropped; a socket that cached it then sees a change and re-checks.
EPOCH_TTL_SECONDS = 30 * 24 * 3600
# How long a cycled session's successor is remembered: far longer than a socket takes to re-check (it is told
# at once), short enough that old fingerprints do not pile up.
SUCCESSOR_TTL_SECONDS = 24 * 3600
# A socket follows at most this many cycles of its session in one re-check.
MAX_SUCCESSIONS = 5


def epoch_key(user_id: Any) -> str:
    return f"deepseek:session-epoch:{user_id}"


def user_group(user_id: Any) -> str:
    """The channel-layer group every open socket of the user joins."""
    return f"user.{user_id}"


def fingerprint(session_key: str | None) -> str:
    """A session's name in events that cross Redis (never the key itself, which would sign anyone in)."""
    return hashlib.sha256((session_key or "").encode()).hexdigest()[:32] if session_key else ""


def parse_epoch(value: bytes | str | None) -> int:
    """An epoch as Redis returns it (None: never bumped, or expired)."""
    return int(value) if value else 0


# The changes a request made, announced when it ends (SessionSuccessionMiddleware): by then a logout has
# deleted its session, and a password change has moved its own session to a new key and noted it, so a
# socket that re-checks at once finds what the request left, not what it was in the middle of.
_deferred: contextvars.ContextVar[list[tuple[Any, str | None]] | None] = contextvars.ContextVar(
    "deferred_session_changes", default=None)


def sessions_changed(user_id: Any, ended_session_key: str | None = None) -> None:
    """A session of the user may have ended (or `ended_session_key` did): bump the epoch, so every socket
    re-checks its session at its next command, and tell the user's open sockets to re-check now (a socket of
    the ended session closes without reading it). Within a request, once the request is over."""
    deferred = _deferred.get()
    if deferred is not None:
        deferred.append((user_id, ended_session_key))
        return
    _announce(user_id, ended_session_key)


def _announce(user_id: Any, ended_session_key: str | None) -> None:
    try:
        client = redis_server.client()
        pipe = client.pipeline()
        pipe.incr(epoch_key(user_id))
        pipe.expire(epoch_key(user_id), EPOCH_TTL_SECONDS)
        pipe.execute()
    except redis.RedisError:  # sockets still re-check every SESSION_RECHECK_SECONDS
        log.warning("could not bump the session epoch of user %s", user_id, exc_info=True)
    _tell_sockets(user_id, {"type": RECHECK_EVENT, "ended": fingerprint(ended_session_key)})


def _tell_sockets(user_id: Any, event: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # the usual case: a view or the admin, in a thread of its own
        try:
            async_to_sync(layer.group_send)(user_group(user_id), event)
        except Exception:  # Redis gone: the epoch (or the periodic re-check) still ends the sockets
            log.warning("could not tell the sockets of user %s to re-check", user_id, exc_info=True)
        return
    # Called from async code (a signal fired on the event loop's thread): send without blocking it.
    task = asyncio.ensure_future(layer.group_send(user_group(user_id), event))
    _pending.add(task)
    task.add_done_callback(_pending.discard)


_pending: set[asyncio.Future] = set()  # keeps fire-and-forget sends alive until they finish


async def acurrent_epoch(client: Any, user_id: Any) -> int:
    """The user's epoch, read with an asyncio Redis client (the socket's shared one). Raises RedisError."""
    return parse_epoch(await client.get(epoch_key(user_id)))


def current_epoch(user_id: Any) -> int:
    """The user's epoch (sync). Raises RedisError."""
    return parse_epoch(redis_server.client().get(epoch_key(user_id)))


def _successor_key(session_key: str) -> str:
    return f"deepseek:session-successor:{fingerprint(session_key)}"


def record_successor(old_key: str, new_key: str) -> None:
    try:
        redis_server.client().set(_successor_key(old_key), new_key, ex=SUCCESSOR_TTL_SECONDS)
    except redis.RedisError:  # that session's sockets close (4401) and the page signs in again
        log.warning("could not note a cycled session", exc_info=True)


def _successor(session_key: str) -> str | None:
    try:
        found = redis_server.client().get(_successor_key(session_key))
    except redis.RedisError:
        return None
    return found.decode() if found else None


def live_session(session_key: str | None, user_id: Any) -> str | None:
    """(Database thread.) The key under which the socket's session still signs in this user: its own, or
    the one it was cycled to (a password change in that session); None when it no longer does."""
    for _ in range(MAX_SUCCESSIONS + 1):
        if not session_key:
            return None
        if session_is_valid(session_key, user_id):
            return session_key
        session_key = _successor(session_key)
    return None


def session_is_valid(session_key: str | None, user_id: Any) -> bool:
    """(Database thread.) Whether the session still signs in this user, as a page request would find it:
    it still exists (a logout deletes it, a password change elsewhere deletes the others), names this user
    through a configured backend that still lets the user in (active), and carries the hash of the user's
    current password. Unlike django.contrib.auth.get_user it changes nothing (no flush, no new key: the
    socket cannot hand the browser a new cookie)."""
    if not session_key:
        return False
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key=session_key)
    data = store.load()  # {} when the session is gone or expired
    backend_path = data.get(BACKEND_SESSION_KEY)
    if str(data.get(SESSION_KEY)) != str(user_id) or backend_path not in settings.AUTHENTICATION_BACKENDS:
        return False
    user_model = get_user_model()
    get_user = getattr(load_backend(backend_path), "get_user", None)
    user = get_user(user_model._meta.pk.to_python(user_id)) if get_user else None
    if user is None:  # deleted, or refused (inactive) by the backend
        return False
    given = data.get(HASH_SESSION_KEY) or ""
    hashes = [user.get_session_auth_hash(), *user.get_session_auth_fallback_hash()]
    return bool(given) and any(constant_time_compare(given, known) for known in hashes)


class SessionSuccessionMiddleware:
    """Notes a signed-in session's new key when a request cycled it (update_session_auth_hash after a password
    change, a sign-in on top of a session), so the sockets opened with the old key follow it (`live_session`),
    then announces the request's session changes. It sits before (outside) SessionMiddleware: the session is
    saved by then (a cycled session gets its new password hash only when it is saved). Costs nothing when
    the key did not change (no session or user read)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        before, changes = _cookie_key(request), []
        token = _deferred.set(changes)
        try:
            return self.get_response(request)
        finally:  # even when the view raised: what it committed is announced
            _deferred.reset(token)
            _after_request(_cycled(request, before), changes)

    async def __acall__(self, request: Any) -> Any:
        before, changes = _cookie_key(request), []
        token = _deferred.set(changes)  # the view's thread sees (and fills) the same list
        try:
            return await self.get_response(request)
        finally:  # even when the view raised: what it committed is announced
            _deferred.reset(token)
            cycled = _cycled(request, before)
            if cycled or changes:
                await sync_to_async(_after_request, thread_sensitive=False)(cycled, changes)


def _after_request(cycled: tuple[str, str] | None, changes: list[tuple[Any, str | None]]) -> None:
    """The successor first, so a socket told of the change finds it."""
    if cycled:
        record_successor(*cycled)
    for user_id, ended_session_key in changes:
        _announce(user_id, ended_session_key)


def _cookie_key(request: Any) -> str | None:
    return request.COOKIES.get(settings.SESSION_COOKIE_NAME)


def _cycled(request: Any, before: str | None) -> tuple[str, str] | None:
    """(old key, new key) when the request moved a signed-in session to a new key. A changed key means the
    session's data is in memory (cycled or created here), so reading it costs no query."""
    session = getattr(request, "session", None)  # none when answered before SessionMiddleware (static files)
    after = session.session_key if session is not None else None
    if not before or not after or before == after or SESSION_KEY not in session:
        return None
    return before, after
