"""SQLite, with its writers taking turns instead of sleeping.

SQLite lets one writer at a time; a writer that finds the lock taken sleeps in SQLite's busy handler
(1, 2, 5 … up to 100 ms a try) however soon the lock is free. With a worker writing dozens of answers and
the web saving messages, those sleeps were most of the time to first token at 48 users (shared/FACTS.md).
Here a write (a transaction, which begins IMMEDIATE, or a lone INSERT/UPDATE/DELETE) first takes this
process's lock and then a lock file shared by every process on the database (flock), which wake the next
writer as soon as the last one ends; SQLite's own lock is then free when asked for.

`ENGINE: "deepseek_web.sqlite"` (settings.py, for SQLite databases).
"""
from __future__ import annotations

import fcntl
import os
import threading
import time

from django.db import OperationalError
from django.db.backends.sqlite3 import base

_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


class _WriterTurns:
    """One per process and database file: a thread lock, then an flock on `<database>.writers`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._thread_lock = threading.RLock()
        self._fd: int | None = None
        self._depth = 0  # re-entries by the holding thread (a lone write inside its own turn)

    def acquire(self, timeout: float) -> None:
        """Wait for this process's turn, then the database's; like SQLite, give up after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        if not self._thread_lock.acquire(timeout=timeout):
            raise OperationalError("database is locked")
        self._depth += 1
        if self._depth == 1:
            try:
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                self._flock(deadline)
            except BaseException:
                self._depth -= 1
                self._thread_lock.release()
                raise

    def _flock(self, deadline: float) -> None:
        """Another process's writer holds it at most a transaction's length: look again soon (a blocking
        flock could not give up, and a process stuck in a transaction would hang every other one)."""
        pause = 0.0005
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise OperationalError("database is locked") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.005)

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread_lock.release()

    def after_fork(self) -> None:
        self._thread_lock = threading.RLock()
        self._fd, self._depth = None, 0


_turns: dict[str, _WriterTurns] = {}
_turns_lock = threading.Lock()


def turns_for(name: str) -> _WriterTurns | None:
    if not name or name == ":memory:" or name.startswith("file:"):
        return None  # in-memory databases belong to one connection
    with _turns_lock:
        if name not in _turns:
            _turns[name] = _WriterTurns(f"{name}.writers")
        return _turns[name]


def _after_fork() -> None:
    for turns in _turns.values():
        turns.after_fork()


os.register_at_fork(after_in_child=_after_fork)


class CursorWrapper(base.SQLiteCursorWrapper):
    turns: _WriterTurns | None = None
    timeout: float = 30.0

    def execute(self, query, params=None):
        turns = self.turns
        if turns is None or self.connection.in_transaction or not query.lstrip()[:7].upper().startswith(_WRITES):
            return super().execute(query, params)
        turns.acquire(self.timeout)
        try:
            return super().execute(query, params)
        finally:
            turns.release()


class DatabaseWrapper(base.DatabaseWrapper):
    _holds_turn = False

    def _turns(self) -> _WriterTurns | None:
        return turns_for(str(self.settings_dict["NAME"]))

    def _timeout(self) -> float:
        return float(self.settings_dict.get("OPTIONS", {}).get("timeout", 5))

    def create_cursor(self, name=None):
        cursor = self.connection.cursor(factory=CursorWrapper)
        cursor.turns, cursor.timeout = self._turns(), self._timeout()
        return cursor

    def _start_transaction_under_autocommit(self):
        turns = self._turns()
        if turns is not None and not self._holds_turn:
            turns.acquire(self._timeout())
            self._holds_turn = True
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            self._end_turn()
            raise

    def _end_turn(self) -> None:
        if self._holds_turn:
            self._holds_turn = False
            turns = self._turns()
            if turns is not None:
                turns.release()

    def _commit(self):
        try:
            return super()._commit()
        finally:
            self._end_turn()

    def _rollback(self):
        try:
            return super()._rollback()
        finally:
            self._end_turn()

    def _close(self):
        try:
            return super()._close()
        finally:
            self._end_turn()
