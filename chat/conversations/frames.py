"""The socket protocol's server → client frames (DESIGN.md), built in one place."""
from __future__ import annotations

from typing import Any

from chat.conversations.models import Message
from chat.conversations.rendering import render_markdown
from chat.conversations.uploads import describe


def group_name(conversation_id: Any) -> str:
    return f"conv.{conversation_id}"


def message_frame(message: Message) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": str(message.id),
        "role": message.role,
        "content": message.content,
        "reasoning": message.reasoning,
        "status": message.status,
        "finish_reason": message.finish_reason or None,
        "seq": message.seq,
        "position": message.position,
        "parent_id": str(message.parent_id) if message.parent_id else None,
        "created_at": message.created_at.isoformat(),
    }
    if message.role == Message.Role.ASSISTANT and not message.is_active:
        # Finished answers come rendered (Markdown → sanitized HTML); while one streams, pages
        # show its plain text, so no token makes anything re-parse.
        body["html"] = render_markdown(message.content)
    if message.role == Message.Role.USER:
        body["attachments"] = [describe(a) for a in message.attachments.all()]
    if message.status == Message.Status.FAILED and message.error:
        body["error"] = message.error
    if message.client_id:
        body["client_id"] = message.client_id
    return {"type": "message", "message": body}


def delta_frame(message_id: Any, seq: int, content: str, reasoning: str) -> dict[str, Any]:
    return {"type": "delta", "message_id": str(message_id), "seq": seq, "content": content, "reasoning": reasoning}


def done_frame(message: Message) -> dict[str, Any]:
    return {
        "type": "done",
        "message_id": str(message.id),
        "finish_reason": message.finish_reason,
        "usage": {"prompt_tokens": message.prompt_tokens, "completion_tokens": message.completion_tokens},
    }


def error_frame(code: str, text: str, message_id: Any = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": text}
    if message_id is not None:
        frame["message_id"] = str(message_id)
    return frame
