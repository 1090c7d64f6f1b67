"""The error users can fix: it becomes an error frame, an API error or a form message, never a crash."""
from __future__ import annotations

from typing import Any


class ChatError(Exception):
    def __init__(self, code: str, message: str, message_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.message_id = message_id
