"""The words the page's JavaScript shows, translated on the server (the page has no i18n JS)."""
from __future__ import annotations

from django.utils.translation import gettext as _


def ui_strings() -> dict[str, str]:
    return {
        "you": _("You"),
        "assistant": _("Assistant"),
        "thinking": _("Thinking"),
        "thought": _("Thought"),
        "stopped": _("Stopped."),
        "failed": _("This answer failed."),
        "filtered": _("This answer was withheld by the content filter."),
        "copy": _("Copy"),
        "copied": _("Copied"),
        "copy_failed": _("Could not copy; the text is selected, so press Ctrl+C."),
        "copy_code": _("Copy code"),
        "regenerate": _("Regenerate"),
        "edit": _("Edit"),
        "save_and_send": _("Save & send"),
        "cancel": _("Cancel"),
        "previous_version": _("Previous version"),
        "next_version": _("Next version"),
        "version": _("Version"),
        "not_connected": _("Not connected; reconnecting…"),
        "offline": _("Offline — reconnecting in %(seconds)s s…"),
        "too_many_sockets": _("Too many chat tabs are open; close some. This one tries again in a minute."),
        "unavailable": _("This conversation is not available."),
        "rename": _("Rename"),
        "rename_failed": _("Could not rename the conversation."),
        "title_label": _("Conversation title"),
        "edit_label": _("Edit your message"),
        "theme_system": _("Theme: system"),
        "theme_dark": _("Theme: dark"),
        "theme_light": _("Theme: light"),
        "attached_image": _("Attached image"),
        "remove_image": _("Remove this image"),
        "upload_failed": _("The image could not be uploaded."),
        "not_an_image": _("Only PNG, JPEG, WebP and GIF images can be attached."),
        "still_uploading": _("Wait until the images are uploaded."),
    }
