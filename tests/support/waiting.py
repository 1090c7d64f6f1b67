"""Waiting for a state, never for a duration: poll until the predicate holds; the deadline only guards
against a hang (and then the message says what never came)."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(predicate: Callable[[], Any], what: str | Callable[[], str], timeout: float = 120.0,
             step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
