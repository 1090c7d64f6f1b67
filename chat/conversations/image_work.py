"""Per-user limits on the web tier's image work: uploads per minute, pixels decoded per minute, and images
being decoded at once.

Decoding and re-encoding one image can take half a gigabyte for a second (a 40-megapixel PNG of one colour is
~150 KB on the wire), so a user may have only IMAGE_PROCESSING_PER_USER of them in progress at a time, uploads
and /v1 requests together, only UPLOADS_PER_MINUTE uploads a minute, and only IMAGE_PIXELS_PER_MINUTE pixels
(as their headers declare them, charged before any decoding) a minute: the pixel budget is what bounds the
CPU one user spends (decoding, re-encoding and thumbnailing cost about 1.7 s of CPU per 40 MP here). All are
counted in Redis, shared by every web process, and checked before an image is decoded. When Redis cannot
count, the work goes ahead (the byte, pixel and per-request caps still hold) and a warning is logged.
"""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from django.conf import settings
from django.utils.translation import gettext as _

from chat.core import rate_windows
from chat.core.errors import ChatError
from chat.core.redis_server import client as _client

log = logging.getLogger(__name__)
UPLOAD_WINDOW_SECONDS = 60  # "per minute" (a module constant so tests can shorten the wait)
# A count that a crashed process never gave back frees itself after this: far longer than any image takes.
PROCESSING_TTL_SECONDS = 120
PROCESSING_RETRY_AFTER = 2  # seconds: images in progress are done in about that


class ImageWorkLimited(ChatError):
    """Image work refused by a per-user limit: answered with 429 and Retry-After."""

    def __init__(self, code: str, message: str, retry_after: int) -> None:
        super().__init__(code, message)
        self.retry_after = retry_after


def _processing_key(user_id: int) -> str:
    return f"deepseek:images:processing:{user_id}"


def check_upload_rate(user_id: int) -> None:
    """Count one upload in this minute's window, or ImageWorkLimited past UPLOADS_PER_MINUTE (0 = no limit)."""
    limit = settings.UPLOADS_PER_MINUTE
    if not limit:
        return
    try:
        wait = rate_windows.hit(f"deepseek:images:uploads:{user_id}:{UPLOAD_WINDOW_SECONDS}", limit,
                                UPLOAD_WINDOW_SECONDS)
    except redis.RedisError:
        log.warning("upload rate unchecked: Redis is unreachable")
        return
    if wait is not None:
        raise ImageWorkLimited("upload_rate_limited", _("More than %(limit)d uploads in a minute; try again in "
                                                        "%(seconds)d s.") % {"limit": limit, "seconds": wait}, wait)


def charge_pixels(user_id: int, pixels: int) -> None:
    """Charge `pixels` (declared by the images' headers) to the user's budget for this minute, or
    ImageWorkLimited past IMAGE_PIXELS_PER_MINUTE (0 = no limit). A refused charge is taken back: the budget
    measures work done, and a refusal cost only a header read. A request for more than the whole budget at
    once is let through when the minute's budget is untouched (IMAGE_PIXELS_PER_REQUEST bounds it)."""
    limit = settings.IMAGE_PIXELS_PER_MINUTE
    if not limit or pixels <= 0:
        return
    now = time.time()
    window = int(now // UPLOAD_WINDOW_SECONDS)
    key = f"deepseek:images:pixels:{user_id}:{window}"
    try:
        pipe = _client().pipeline()
        pipe.incrby(key, pixels)
        pipe.expire(key, UPLOAD_WINDOW_SECONDS + 60)
        total = pipe.execute()[0]
        if total <= limit or total == pixels:
            return
        _client().decrby(key, pixels)
    except redis.RedisError:
        log.warning("image pixels unchecked: Redis is unreachable")
        return
    wait = max(1, int((window + 1) * UPLOAD_WINDOW_SECONDS - now) + 1)
    raise ImageWorkLimited("image_pixels_limited",
                           _("Your images in the last minute have too many pixels together (at most %(limit)s a "
                             "minute); try again in %(seconds)d s.") % {"limit": f"{limit:,}", "seconds": wait},
                           wait)


@contextmanager
def processing(user_id: int) -> Iterator[None]:
    """Hold one of the user's IMAGE_PROCESSING_PER_USER places while images are read and decoded (0 = no
    limit); ImageWorkLimited when all are taken. The place is given back when the block ends, however it ends;
    one never given back (a crashed process) expires PROCESSING_TTL_SECONDS after it was taken."""
    limit = settings.IMAGE_PROCESSING_PER_USER
    key, member = _processing_key(user_id), uuid.uuid4().hex
    taken = 0
    if limit:
        try:
            now = time.time()
            pipe = _client().pipeline()
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zadd(key, {member: now + PROCESSING_TTL_SECONDS})
            pipe.zcard(key)
            pipe.expire(key, PROCESSING_TTL_SECONDS)
            taken = pipe.execute()[2]
        except redis.RedisError:
            log.warning("image work unlimited: Redis is unreachable")
    try:
        if taken > limit:
            raise ImageWorkLimited("image_processing_limited",
                                   _("%(limit)d of your images are being processed already; wait for them to "
                                     "finish.") % {"limit": limit}, PROCESSING_RETRY_AFTER)
        yield
    finally:
        if taken:
            _give_back(key, member)


def _give_back(key: str, member: str) -> None:
    try:
        _client().zrem(key, member)
    except redis.RedisError:  # it expires by itself
        log.warning("could not give back an image-processing place (%s)", key)


def in_progress(user_id: int) -> int:
    """The user's places taken now (tests and operators read it)."""
    client = _client()
    client.zremrangebyscore(_processing_key(user_id), "-inf", time.time())
    return int(client.zcard(_processing_key(user_id)))
