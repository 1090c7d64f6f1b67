"""Per-user limits on chat messages, across all of a user's tabs and conversations.

A socket's token bucket (SOCKET_FRAME_BURST, SOCKET_FRAMES_PER_SECOND) slows one connection; these
hold back a user who floods through many: answers being written at once (counted in the database,
so every web process sees the same number) and messages per minute (a fixed window in Redis, shared
by every web process). The /v1 API has its own (chat/accounts/usage.py).
"""
from __future__ import annotations

import logging

import redis
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.utils.translation import gettext as _

from chat.conversations.models import Conversation, Message
from chat.core import rate_windows
from chat.core.errors import ChatError

log = logging.getLogger(__name__)
RATE_WINDOW_SECONDS = 60


def check_and_count(user: AbstractBaseUser) -> None:
    """Before a send or a regeneration is saved: ChatError when it would pass a limit (0 = no limit);
    otherwise it counts towards this minute's messages."""
    most = settings.CHAT_ACTIVE_ANSWERS_PER_USER
    if most and Message.objects.filter(conversation__user=user, conversation__source=Conversation.Source.CHAT,
                                       role=Message.Role.ASSISTANT, status__in=Message.ACTIVE).count() >= most:
        raise ChatError("too_many_answers", _("%(limit)d answers are being written for you already. Wait for one "
                                              "to finish, or stop one.") % {"limit": most})
    per_minute = settings.CHAT_MESSAGES_PER_MINUTE
    if not per_minute:
        return
    try:
        wait = rate_windows.hit(f"deepseek:chat:messages:{user.pk}:{RATE_WINDOW_SECONDS}", per_minute,
                                RATE_WINDOW_SECONDS)
    except redis.RedisError:  # the answer could not be queued either; the send reports that
        log.warning("message limit skipped: Redis unavailable")
        return
    if wait is not None:
        raise ChatError("rate_limited", _("You are sending messages too fast (at most %(limit)d a minute). "
                                          "Try again in %(seconds)d s.") % {"limit": per_minute, "seconds": wait})
