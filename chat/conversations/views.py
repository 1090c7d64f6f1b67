"""Pages: the chat home, one conversation and what the sidebar does to it (rename, delete, settings, export, import)."""
from __future__ import annotations

import datetime
import json
import uuid

from django.contrib import messages as flash
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from chat.audit import record as audit
from chat.conversations import actions, exports, windows
from chat.conversations.actions import ChatError
from chat.conversations.forms import ConversationSettingsForm
from chat.conversations.models import Conversation
from chat.core.served_models import all_models, default_model
from chat.core.ui_strings import ui_strings
from chat.core.view_declarations import audited, body_limit, moderated

SIDEBAR_LIMIT = 200


def _sidebar_groups(conversations) -> list[tuple[str, list[Conversation]]]:
    """Newest first, grouped by the day of their last message in the site's time zone."""
    today = timezone.localdate()
    groups: dict[str, list[Conversation]] = {_("Today"): [], _("Yesterday"): [], _("Earlier"): []}
    labels = list(groups)
    for conversation in conversations:
        day = timezone.localdate(conversation.updated_at)
        index = 0 if day >= today else 1 if day == today - datetime.timedelta(days=1) else 2
        groups[labels[index]].append(conversation)
    return [(label, items) for label, items in groups.items() if items]


def _page(request: HttpRequest, conversation=None, *, settings_form=None, status: int = 200,
          import_error: str = "") -> HttpResponse:
    spec = all_models().get(conversation.model) if conversation else default_model()
    query = request.GET.get("q", "").strip()
    listed = actions.search_conversations(request.user, query) if query else actions.conversations_for(request.user)
    context = {
        "sidebar_groups": _sidebar_groups(listed[:SIDEBAR_LIMIT]),
        "query": query,
        "conversation": conversation,
        "model": spec,
        "models": list(all_models().values()),  # only configured models are offered
        "settings_form": settings_form or (ConversationSettingsForm(instance=conversation) if conversation else None),
        "import_error": import_error,
        # Every version's place in the tree, but the text of the branch on show's newest messages only.
        "initial_state": {
            **(windows.page_state(conversation) if conversation else {"messages": [], "current_leaf": None}),
            "reasoning": bool(spec and spec.reasoning),
            "strings": {"load_earlier": _("Show earlier messages"), "loading": _("Loading…"),
                        "load_failed": _("The messages could not be loaded.")},
        },
        "ui_strings": ui_strings(),
    }
    return render(request, "chat/chat.html", context, status=status)


def _owned(request: HttpRequest, conversation_id) -> Conversation:
    try:
        return actions.get_conversation(request.user, conversation_id)
    except ChatError:
        raise Http404("No such conversation.") from None


@audited
@login_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    return _page(request)


@audited
@login_required
@require_POST
def new_conversation(request: HttpRequest) -> HttpResponse:
    try:
        conversation = actions.do_create_conversation(request.user, request.POST.get("model") or None)
    except ChatError as exc:
        return HttpResponse(exc.message, status=400, content_type="text/plain; charset=utf-8")
    return redirect("conversation", conversation_id=conversation.id)


@audited
@login_required
@require_GET
def conversation(request: HttpRequest, conversation_id) -> HttpResponse:
    return _page(request, _owned(request, conversation_id))


@audited
@login_required
@require_GET
def branch_messages(request: HttpRequest, conversation_id) -> HttpResponse:
    """The newest messages of the branch ending at ?until=<message id>, rendered, oldest first (the page
    asks for them on "Show earlier messages" and when another version is picked): a window like the page's."""
    found = _owned(request, conversation_id)
    try:
        until = uuid.UUID(request.GET.get("until", ""))
    except ValueError:
        raise Http404("No such message.") from None
    nodes = windows.tree(found)
    if not any(node.id == until for node in nodes):
        raise Http404("No such message.")
    return JsonResponse({"messages": windows.branch_window(found, until, nodes)})


@audited
@login_required
@require_POST
def rename(request: HttpRequest, conversation_id) -> HttpResponse:
    """Inline rename from the sidebar (fetch, JSON answer) or a plain form post (redirect)."""
    _owned(request, conversation_id)
    wants_json = request.headers.get("Accept", "").startswith("application/json")
    try:
        renamed = actions.do_rename(request.user, conversation_id, request.POST.get("title"))
    except ChatError as exc:
        if wants_json:
            return JsonResponse({"error": {"code": exc.code, "message": exc.message}}, status=400)
        return HttpResponse(exc.message, status=400, content_type="text/plain; charset=utf-8")
    if wants_json:
        return JsonResponse({"title": renamed.title})
    return redirect("conversation", conversation_id=renamed.id)


@audited
@login_required
@require_POST
def delete(request: HttpRequest, conversation_id) -> HttpResponse:
    found = _owned(request, conversation_id)
    actions.do_delete_conversation(request.user, conversation_id)
    audit.record("conversation_deleted", request=request, conversation_id=found.id, model=found.model)
    flash.success(request, _("The conversation was deleted."))
    return redirect("home")


@audited
@moderated("system_prompt")
@login_required
@require_POST
def update_settings(request: HttpRequest, conversation_id) -> HttpResponse:
    found = _owned(request, conversation_id)
    form = ConversationSettingsForm(request.POST, instance=found)
    if not form.is_valid():
        found.refresh_from_db()  # the form wrote the rejected values onto the instance
        return _page(request, found, settings_form=form, status=400)
    form.save()
    flash.success(request, _("Settings saved."))
    return redirect("conversation", conversation_id=found.id)


@audited
@login_required
@require_GET
def export(request: HttpRequest, conversation_id, ext: str) -> HttpResponse:
    found = _owned(request, conversation_id)
    audit.record("conversation_exported", request=request, conversation_id=found.id, detail={"format": ext})
    if ext == "json":
        body = json.dumps(exports.export_json(found), ensure_ascii=False, indent=2)
        content_type = "application/json; charset=utf-8"
    else:
        body, content_type = exports.export_markdown(found), "text/markdown; charset=utf-8"
    response = HttpResponse(body, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{exports.export_filename(found, ext)}"'
    return response


def refuse_oversized_import(request: HttpRequest, declared: int) -> HttpResponse:
    """An import whose Content-Length is past the cap (chat.core.body_limits): refused unread."""
    return _page(request, status=413, import_error=_("The file could not be imported: %(reason)s")
                 % {"reason": _("The file is too large to import.")})


@audited
@body_limit(lambda: exports.IMPORT_MAX_BYTES, refuse_oversized_import)
@login_required
@require_POST
def import_conversation(request: HttpRequest) -> HttpResponse:
    try:
        exports.check_import_rate(request.user)  # before request.FILES parses the upload
        upload = request.FILES.get("file")
        if upload is None:
            raise ChatError("invalid_import", _("Choose a JSON file exported from deepseek-web."))
        if upload.size > exports.IMPORT_MAX_BYTES:
            raise ChatError("invalid_import", _("The file is too large to import."))
        imported = exports.do_import(request.user, upload.read())
    except ChatError as exc:
        # The details name fields of the file format, which stay in English.
        return _page(request, status=400, import_error=_("The file could not be imported: %(reason)s")
                     % {"reason": exc.message})
    return redirect("conversation", conversation_id=imported.id)
