"""Pages: sign-up, the chat home, one conversation; plus the liveness probe."""
from __future__ import annotations

from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from inference.registry import all_models, default_model

from . import actions
from .actions import ChatError
from .frames import message_frame

SIDEBAR_LIMIT = 100


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("home")
    form = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("home")
    return render(request, "registration/signup.html", {"form": form}, status=400 if form.errors else 200)


def _page(request: HttpRequest, conversation=None) -> HttpResponse:
    spec = all_models().get(conversation.model) if conversation else default_model()
    messages = list(conversation.messages.all()) if conversation else []
    context = {
        "conversations": actions.conversations_for(request.user)[:SIDEBAR_LIMIT],
        "conversation": conversation,
        "messages": messages,
        "model": spec,
        "models": list(all_models().values()),  # only configured models are offered
        "initial_frames": [message_frame(m)["message"] for m in messages],
    }
    return render(request, "chat/chat.html", context)


@login_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    return _page(request)


@login_required
@require_POST
def new_conversation(request: HttpRequest) -> HttpResponse:
    try:
        conversation = actions.do_create_conversation(request.user, request.POST.get("model") or None)
    except ChatError as exc:
        return HttpResponse(exc.message, status=400, content_type="text/plain; charset=utf-8")
    return redirect("conversation", conversation_id=conversation.id)


@login_required
@require_GET
def conversation(request: HttpRequest, conversation_id) -> HttpResponse:
    try:
        found = actions.get_conversation(request.user, conversation_id)
    except ChatError:
        raise Http404("No such conversation.") from None
    return _page(request, found)


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"status": "ok"})
