"""Database work from async code on a pool of threads, for the calls that may run side by side.

Channels' `database_sync_to_async` runs every call of the process on one thread, one after another: 48
people pressing Enter at once waited for 48 message saves in a row, each with its Redis round trips (the
announcement and the queueing), about 0.45 s for the last (shared/FACTS.md). A socket still awaits each of
its own frames in order, and the database serialises the writes that must be.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from channels.db import database_sync_to_async


def in_db_pool(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` as an awaitable run on the event loop's thread pool, with channels' connection care."""
    return database_sync_to_async(function, thread_sensitive=False)
