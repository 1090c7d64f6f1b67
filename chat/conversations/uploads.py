"""Storing the images users attach: validate first, then store under random names, within quotas.

Nothing reaches the storage or the database before the image passed chat.images.validation.validate_image,
and a failure after the files were written removes them again.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import Count, Sum
from django.db.models.signals import post_delete
from django.dispatch import receiver
from django.urls import reverse
from django.utils.translation import gettext as _

from chat.conversations.models import Attachment
from chat.core.errors import ChatError
from chat.images.validation import ImageLimits, ImageRejected, ValidatedImage, declared_size, validate_image

log = logging.getLogger(__name__)


def limits() -> ImageLimits:
    return ImageLimits(max_bytes=settings.ATTACHMENT_MAX_BYTES, max_pixels=settings.ATTACHMENT_MAX_PIXELS)


def check_quota(user: AbstractBaseUser, adding: int) -> None:
    used = Attachment.objects.filter(owner=user).aggregate(count=Count("id"), size=Sum("size"))
    if used["count"] >= settings.ATTACHMENTS_PER_USER:
        raise ChatError("quota_exceeded", _("You have stored %(count)d images, the most allowed. Delete some "
                                            "conversations to make room.") % {"count": used["count"]})
    if (used["size"] or 0) + adding > settings.ATTACHMENT_BYTES_PER_USER:
        raise ChatError("quota_exceeded", _("Your images would take more than the %(limit)d MB allowed. Delete some "
                                            "conversations to make room.")
                        % {"limit": settings.ATTACHMENT_BYTES_PER_USER // (1024 * 1024)})


def too_large(size: int) -> ChatError:
    return ChatError("too_large", _("The image is %(size)d bytes; the limit is %(limit)d.")
                     % {"size": size, "limit": settings.ATTACHMENT_MAX_BYTES})


def check_size(size: int) -> None:
    """The byte cap, checkable before an upload is read into memory."""
    if size > settings.ATTACHMENT_MAX_BYTES:
        raise too_large(size)


def do_upload(user: AbstractBaseUser, raw: bytes) -> Attachment:
    """Validate an uploaded image, store it and its thumbnail, and record it as the user's."""
    return store_validated(user, validate_upload(raw))


def declared_pixels(raw: bytes) -> int:
    """The pixels an image's header declares (nothing decoded), or 0 for one validation will refuse anyway."""
    try:
        width, height = declared_size(raw, limits())
    except ImageRejected:
        return 0
    return width * height


def validate_upload(raw: bytes) -> ValidatedImage:
    """The checks of do_upload that need no user and write nothing: the size cap, then the image
    (chat.images.validation.validate_image). Raises ChatError with the image's code (not_an_image, too_large…)."""
    check_size(len(raw))
    try:
        return validate_image(raw, limits())
    except ImageRejected as exc:
        raise ChatError(exc.code, exc.message) from None


def store_validated(user: AbstractBaseUser, image: ValidatedImage) -> Attachment:
    """Store an image that passed validate_upload, and its thumbnail, as the user's, within the quota."""
    check_quota(user, len(image.data))
    attachment = Attachment(owner=user, sha256=image.sha256, size=len(image.data), mime=image.mime,
                            width=image.width, height=image.height)
    attachment.file.save(f"image.{image.extension}", ContentFile(image.data), save=False)
    attachment.thumbnail.save("thumbnail.webp", ContentFile(image.thumbnail), save=False)
    try:
        with transaction.atomic():
            check_quota(user, len(image.data))  # again, now that concurrent uploads have landed
            attachment.save()
    except BaseException:
        _delete_files(attachment)
        raise
    return attachment


def get_attachment(user: AbstractBaseUser, attachment_id: Any) -> Attachment:
    """The user's attachment, or ChatError("not_found") for anything else (no existence leak)."""
    try:
        return Attachment.objects.get(id=uuid.UUID(str(attachment_id)), owner=user)
    except (ValueError, TypeError, AttributeError, Attachment.DoesNotExist):
        raise ChatError("not_found", _("No such image.")) from None


def check_attachments(user: AbstractBaseUser, ids: Any) -> list[uuid.UUID]:
    """Ids from a `send` frame: a list of the user's own images not yet sent with a message."""
    if not isinstance(ids, list):
        raise ChatError("invalid_frame", _("attachments must be a list of ids."))
    if len(ids) > settings.ATTACHMENTS_PER_MESSAGE:
        raise ChatError("too_many_attachments", _("A message can carry at most %(limit)d images.")
                        % {"limit": settings.ATTACHMENTS_PER_MESSAGE})
    try:
        # Ids are text: str() of a deeply nested list from the frame would raise RecursionError.
        parsed = list(dict.fromkeys(_parse_id(i) for i in ids))
    except (ValueError, TypeError, AttributeError):
        raise ChatError("invalid_id", _("The %(what)s id is not valid.") % {"what": _("image")}) from None
    found = Attachment.objects.filter(id__in=parsed, owner=user, message__isnull=True).count()
    if found != len(parsed):
        raise ChatError("not_found", _("No such image."))
    return parsed


def _parse_id(value: Any) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str):
        raise TypeError("an id must be a string")
    return uuid.UUID(value)


def attach(user: AbstractBaseUser, ids: Iterable[uuid.UUID], message_id: Any) -> None:
    """Inside the send's transaction: the images become the message's (exactly once)."""
    ids = list(ids)
    taken = Attachment.objects.filter(id__in=ids, owner=user, message__isnull=True).update(message_id=message_id)
    if taken != len(ids):  # a concurrent send took one of them first
        raise ChatError("not_found", _("No such image."))


def describe(attachment: Attachment) -> dict:
    """What pages and frames show of an attachment (never its storage name)."""
    return {
        "id": str(attachment.id),
        "mime": attachment.mime,
        "width": attachment.width,
        "height": attachment.height,
        "size": attachment.size,
        "url": reverse("attachment_file", args=[attachment.id]),
        "thumbnail_url": reverse("attachment_thumbnail", args=[attachment.id]),
    }


def _delete_files(attachment: Attachment) -> None:
    for field in (attachment.file, attachment.thumbnail):
        if field.name:
            try:
                field.storage.delete(field.name)
            except OSError:
                log.warning("could not delete %s", field.name, exc_info=True)


@receiver(post_delete, sender=Attachment)
def delete_files_with_the_row(sender, instance: Attachment, **kwargs) -> None:
    # Deleting a message or conversation cascades here; the files go once the deletion commits.
    transaction.on_commit(lambda: _delete_files(instance))
