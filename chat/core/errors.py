"""The error users can fix (ChatError: an error frame, an API error or a form message, never a crash), and
error ids for the failures they cannot: a stable sentence for them, the detail in the log under the same id."""
from __future__ import annotations

import secrets
from typing import Any

from django.utils.translation import gettext as _

from chat.core import log_context


class ChatError(Exception):
    def __init__(self, code: str, message: str, message_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.message_id = message_id


def error_id() -> str:
    """The id a user quotes to find a failure in the log: the request's own id when there is one (every
    log line of that request carries it already), else a new short one."""
    return log_context.request_id() or secrets.token_hex(6)


def with_error_id(message: str, error: str) -> str:
    """A stable message for the user, with the id that finds its detail in the log (logged with
    `extra={"error_id": ...}`). The detail itself (paths, exception text, an upstream's reply) is never
    in it."""
    return _("%(message)s (error id: %(error_id)s)") % {"message": message, "error_id": error}
