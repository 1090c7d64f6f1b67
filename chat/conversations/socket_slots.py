"""How many chat sockets one user and one process may hold open (SOCKETS_PER_USER, SOCKETS_PER_PROCESS).

Every open socket costs its process a file descriptor, a channel-layer subscription and a task, and Redis
its share of connections; one session opening 1,500 used up both. A user's sockets are counted across
processes in a Redis sorted set of leases (member: the socket's channel name, score: when its lease ends),
which the process's SocketHub refreshes while the socket is open (chat/conversations/liveness.py): a process
that dies leaves its sockets counted for at most liveness.LEASE_SECONDS, where a counter would leak forever.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis
from django.conf import settings

from chat.conversations.liveness import LEASE_SECONDS, SocketHub

log = logging.getLogger(__name__)

_open_here = 0  # sockets admitted in this process (its one event loop) and not yet closed


def _user_key(user_id: object) -> str:
    return f"deepseek:sockets:{user_id}"


@dataclass
class Slot:
    """An admitted socket; `release` it when the socket closes."""

    hub: SocketHub
    key: str | None  # None: users' sockets are not counted (SOCKETS_PER_USER = 0)
    member: str

    async def release(self) -> None:
        global _open_here
        _open_here -= 1
        if self.key is None:
            return
        self.hub.drop(self.key, self.member)
        try:
            await self.hub.client.zrem(self.key, self.member)
        except redis.RedisError:  # its lease runs out by itself
            log.warning("could not release a socket slot")


class ProcessFull(Exception):
    """This process holds SOCKETS_PER_PROCESS sockets: the page tries again later (another may have room)."""


class UserFull(Exception):
    """The user holds SOCKETS_PER_USER sockets already."""


async def admit(hub: SocketHub, user_id: object, member: str) -> Slot:
    """Count a new socket of the user, or raise ProcessFull / UserFull (nothing counted then). When Redis
    cannot count, the socket is let in (it cannot work without Redis anyway) and counted at the next refresh."""
    global _open_here
    if settings.SOCKETS_PER_PROCESS and _open_here >= settings.SOCKETS_PER_PROCESS:
        raise ProcessFull
    _open_here += 1  # taken before the first await, so sockets connecting together cannot pass the cap
    if not settings.SOCKETS_PER_USER:
        return Slot(hub, None, member)
    key = _user_key(user_id)
    now = time.time()
    pipe = hub.client.pipeline()
    pipe.zremrangebyscore(key, "-inf", now)
    pipe.zadd(key, {member: now + LEASE_SECONDS})
    pipe.zcard(key)
    pipe.expire(key, int(LEASE_SECONDS) + 1)
    try:
        count = (await pipe.execute())[2]
    except redis.RedisError:
        log.warning("could not count the sockets of user %s", user_id)
    else:
        # Two sockets racing for the last place may both be refused; never both let in.
        if count > settings.SOCKETS_PER_USER:
            try:
                await hub.client.zrem(key, member)
            except redis.RedisError:  # its lease runs out by itself
                pass
            _open_here -= 1
            raise UserFull
    hub.keep(key, member)
    return Slot(hub, key, member)
