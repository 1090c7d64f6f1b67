"""OpenAI-style message content (text and `image_url` parts) → the text and the user's stored images.

Used by the `/v1` API: `data:` URLs are decoded here, `http(s)` URLs fetched only when
REMOTE_IMAGES_ENABLED (chat/images/remote.py), and every image then goes through the same
validation (validate_images, before anything else is checked or written) and storage (store_images)
as an upload (chat/conversations/uploads.py).
"""
from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.utils.translation import gettext as _

from chat.conversations import uploads
from chat.conversations.models import Attachment
from chat.core.errors import ChatError
from chat.images.remote import FetchPolicy, RemoteImageRefused, fetch_image_bytes
from chat.images.validation import ImageRejected, ValidatedImage, declared_size

DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,",
                      re.IGNORECASE)


@dataclass(frozen=True)
class ParsedContent:
    text: str
    images: list[bytes]


def fetch_policy() -> FetchPolicy:
    return FetchPolicy(enabled=settings.REMOTE_IMAGES_ENABLED, max_bytes=settings.ATTACHMENT_MAX_BYTES,
                       timeout=settings.REMOTE_IMAGES_TIMEOUT)


def decode_data_url(url: str) -> bytes:
    """The bytes of a base64 `data:` URL; the declared type is ignored (the image decides)."""
    match = DATA_URL.match(url)
    if not match or not match.group("b64"):
        raise ChatError("invalid_image_url", _("An image data: URL must be base64-encoded "
                                               "(data:image/png;base64,…)."))
    payload = url[match.end():]
    # Refuse before decoding: base64 is 4 characters per 3 bytes.
    if len(payload) * 3 // 4 > settings.ATTACHMENT_MAX_BYTES + 3:
        raise ChatError("too_large", _("The image is larger than the %(limit)d bytes allowed.")
                        % {"limit": settings.ATTACHMENT_MAX_BYTES})
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ChatError("invalid_image_url", _("The image data: URL is not valid base64.")) from None


def parse_content(content: Any) -> ParsedContent:
    """Checks the shape and gathers the text and image bytes (nothing is stored yet)."""
    if isinstance(content, str):
        return ParsedContent(content, [])
    if not isinstance(content, list):
        raise ChatError("invalid_content", _("content must be a string or a list of parts."))
    texts: list[str] = []
    images: list[bytes] = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            if not isinstance(url, str):
                raise ChatError("invalid_content", _("Part %(index)d: image_url.url must be a string.")
                                % {"index": index})
            if len(images) == settings.ATTACHMENTS_PER_MESSAGE:  # refused before the one too many is read
                raise ChatError("too_many_attachments", _("A message can carry at most %(limit)d images.")
                                % {"limit": settings.ATTACHMENTS_PER_MESSAGE})
            images.append(_image_bytes(url))
        else:
            raise ChatError("invalid_content", _("Part %(index)d must be a text or an image_url part.")
                            % {"index": index})
    return ParsedContent("\n".join(texts), images)


def _image_bytes(url: str) -> bytes:
    if url[:5].lower() == "data:":
        return decode_data_url(url)
    try:
        return fetch_image_bytes(url, fetch_policy())
    except RemoteImageRefused as exc:
        raise ChatError(exc.code, exc.message) from None


def declared_sizes(images: Sequence[bytes]) -> list[tuple[int, int]]:
    """(width, height) as each image's header declares it, nothing decoded: what the per-request budget
    (chat/conversations/image_budget.check_image_budget) counts before validate_images decodes anything.
    An image validation would refuse by its header alone is refused here, with its ChatError (empty_file,
    too_large, not_an_image, corrupt_image, too_many_pixels)."""
    try:
        return [declared_size(raw, uploads.limits()) for raw in images]
    except ImageRejected as exc:
        raise ChatError(exc.code, exc.message) from None


def validate_images(images: list[bytes]) -> list[ValidatedImage]:
    """Each image checked and re-encoded as an upload is (chat/conversations/uploads.py), nothing stored yet: a bad
    one is refused with its ChatError (not_an_image, too_large…) before any other check needs it."""
    return [uploads.validate_upload(raw) for raw in images]


def store_images(user: AbstractBaseUser, images: list[bytes] | list[ValidatedImage]) -> list[Attachment]:
    """Store each image (validated here when given as bytes) as the user's upload; on any refusal,
    none stays stored."""
    stored: list[Attachment] = []
    try:
        for image in images:
            validated = uploads.validate_upload(image) if isinstance(image, bytes) else image
            stored.append(uploads.store_validated(user, validated))
    except BaseException:
        for attachment in stored:
            attachment.delete()
        raise
    return stored
