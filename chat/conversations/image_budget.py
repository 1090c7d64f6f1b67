"""How many images, and how many of their pixels, one answer may look at: the limits the socket, /v1 and the
worker share.

A 6000×6000 one-bit PNG is 5 KB on the wire and 108 MB once decoded to RGB, so bytes say nothing about the
cost: these limits count images and their pixels as declared in their headers (width × height, read without
decoding). The web tier refuses a request over the budget before anything is written or queued; the worker
applies the same budget again to the branch it answers (newest_within_budget), before it decodes anything,
so rows written before an operator lowered a limit cannot get past it either.
"""
from __future__ import annotations

from collections.abc import Sequence

from django.conf import settings
from django.utils.translation import gettext as _

from chat.conversations.models import Attachment, Conversation
from chat.core.errors import ChatError

Size = tuple[int, int]  # width, height


def check_image_budget(sizes: Sequence[Size], conversation: Conversation | None = None) -> None:
    """Refuse images (their declared sizes) that one request may not bring: more than IMAGES_PER_REQUEST,
    more than IMAGE_PIXELS_PER_REQUEST pixels together, or more than IMAGES_PER_CONVERSATION in the
    conversation with those it holds already (`conversation`; None for a request that creates its own,
    as /v1 does). Raises ChatError naming the limit and the numbers; reads no image."""
    count = len(sizes)
    if count > settings.IMAGES_PER_REQUEST:
        raise ChatError("request_images_exceeded",
                        _("The request has %(count)s images; one answer can look at %(limit)s at most.")
                        % {"count": f"{count:,}", "limit": f"{settings.IMAGES_PER_REQUEST:,}"})
    pixels = sum(width * height for width, height in sizes)
    if pixels > settings.IMAGE_PIXELS_PER_REQUEST:
        raise ChatError("request_pixels_exceeded",
                        _("The request's images have %(pixels)s pixels together; one answer can look at %(limit)s "
                          "at most.") % {"pixels": f"{pixels:,}", "limit": f"{settings.IMAGE_PIXELS_PER_REQUEST:,}"})
    held = Attachment.objects.filter(message__conversation=conversation).count() if conversation else 0
    if count and held + count > settings.IMAGES_PER_CONVERSATION:
        raise ChatError("conversation_images_exceeded",
                        _("The conversation would hold %(count)s images; the limit is %(limit)s. Start a new "
                          "conversation.") % {"count": f"{held + count:,}",
                                              "limit": f"{settings.IMAGES_PER_CONVERSATION:,}"})


def attachment_sizes(ids: Sequence[object]) -> list[Size]:
    """The sizes of stored images, as validation recorded them (no file is opened)."""
    return list(Attachment.objects.filter(id__in=ids).values_list("width", "height"))


def newest_within_budget(sizes_newest_first: Sequence[Size]) -> int:
    """How many of these images, newest first, an answer looks at: as many as fit the per-request count
    and pixel budget, stopping at the first that does not (every older one is left out with it)."""
    kept = pixels = 0
    for width, height in sizes_newest_first:
        pixels += width * height
        if kept == settings.IMAGES_PER_REQUEST or pixels > settings.IMAGE_PIXELS_PER_REQUEST:
            break
        kept += 1
    return kept
