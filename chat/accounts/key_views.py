"""The API keys page: a user's keys, a new one shown once, revoking, limits, today's usage and how to call /v1."""
from __future__ import annotations

from django.contrib import messages as flash
from django.contrib.auth import authenticate
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from chat.accounts import api_keys
from chat.accounts import usage as api_usage
from chat.accounts.api_keys import NAME_MAX
from chat.accounts.models import ApiKey
from chat.core.errors import ChatError
from chat.core.served_models import default_model
from chat.core.ui_strings import ui_strings


def _page(request: HttpRequest, *, new_key: str = "", name_error: str = "", name: str = "",
          password_error: str = "", status: int = 200) -> HttpResponse:
    user_id = request.user.pk
    context = {
        "keys": ApiKey.objects.filter(user=request.user),
        "new_key": new_key,
        "name_error": name_error,
        "password_error": password_error,
        "name": name,
        "name_max": NAME_MAX,
        "limits": api_usage.current_limits(),
        "usage": api_usage.usage_today(user_id),
        "in_flight": api_usage.in_flight(user_id),
        "base_url": request.build_absolute_uri("/v1"),
        "model_name": default_model().name,
        "ui_strings": ui_strings(),
    }
    return render(request, "chat/api_keys.html", context, status=status)


@never_cache  # the response to a create holds the key itself: no cache, no back-button copy
@login_required
@require_http_methods(["GET", "POST"])
def api_keys_page(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return _page(request)
    name = request.POST.get("name", "")
    refused = _check_password(request)
    if refused is not None:
        return refused
    try:
        _row, key = api_keys.do_create_key(request.user, name, request=request)
    except ChatError as exc:
        return _page(request, name_error=exc.message, name=name, status=400)
    return _page(request, new_key=key)


def _check_password(request: HttpRequest) -> HttpResponse | None:
    """A new key is a new way in: the password again, checked as a sign-in is (django-axes counts a wrong
    one towards the lockout, and a locked-out user cannot make keys either). None when it is right."""
    name, password = request.POST.get("name", ""), request.POST.get("password", "")
    if not password:  # not a guess: nothing to count
        return _page(request, password_error=_("Enter your password to make a key."), name=name, status=400)
    user = authenticate(request, username=request.user.get_username(), password=password)
    if user is not None and user.pk == request.user.pk:
        return None
    if getattr(request, "axes_locked_out", False):
        request.axes_locked_out = False  # answered here, not with axes' sign-in page
        return _page(request, password_error=_("Too many wrong passwords. Try again later."), name=name,
                     status=429)
    return _page(request, password_error=_("That is not your password; no key was made."), name=name, status=400)


@login_required
@require_POST
def revoke_all_api_keys(request: HttpRequest) -> HttpResponse:
    """Revoke every live key of the user at once (offered after a password change)."""
    live = list(ApiKey.objects.filter(user=request.user, revoked_at=None).values_list("id", flat=True))
    for key_id in live:
        api_keys.do_revoke_key(request.user, key_id, request=request)
    flash.success(request, _("All your API keys were revoked; requests with them are refused from now on."))
    return redirect("api_keys")


@login_required
@require_POST
def revoke_api_key(request: HttpRequest, key_id) -> HttpResponse:
    try:
        row = api_keys.do_revoke_key(request.user, key_id, request=request)
    except ChatError:
        raise Http404("No such key.") from None
    flash.success(request, _("The key %(prefix)s… was revoked; requests with it are refused from now on.")
                  % {"prefix": row.prefix})
    return redirect("api_keys")
