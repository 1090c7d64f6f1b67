"""Sign-in throttling glue for django-axes: the client address it counts by, and the lockout page."""
from __future__ import annotations

import math
from typing import Any

from axes.helpers import get_client_username, get_cool_off
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.db.models import Max
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.translation import ngettext

from chat.core import request_meta


def client_ip(request: HttpRequest) -> str | None:
    """The address axes counts failures by: the one the audit log records (AUDIT_TRUSTED_PROXY_COUNT)."""
    return request_meta.client_ip(request.META)


def seconds_left(request: HttpRequest, username: str) -> int:
    """Seconds until this username + address may try again (at least 1)."""
    cool_off = get_cool_off(request)
    if cool_off is None:
        return 1
    last = AccessAttempt.objects.filter(
        username=username, ip_address=getattr(request, "axes_ip_address", None) or client_ip(request),
    ).aggregate(last=Max("attempt_time"))["last"]
    if last is None:
        return max(1, math.ceil(cool_off.total_seconds()))
    return max(1, math.ceil((last + cool_off - timezone.now()).total_seconds()))


def lockout_response(request: HttpRequest, original_response: Any = None, credentials: Any = None) -> HttpResponse:
    """The login page with the lockout message, status 429 and Retry-After (axes' AXES_LOCKOUT_CALLABLE).

    The arguments after `request` are not relied on: axes' async middleware passes them shifted, and
    the credentials it found are on the request anyway."""
    credentials = getattr(request, "axes_credentials", None) or {}
    username = get_client_username(request, credentials) or ""
    seconds = seconds_left(request, username)
    minutes = math.ceil(seconds / 60)
    message = ngettext(
        "Too many failed sign-in attempts. Try again in %(minutes)d minute.",
        "Too many failed sign-in attempts. Try again in %(minutes)d minutes.",
        minutes,
    ) % {"minutes": minutes}
    form = AuthenticationForm(request, initial={"username": username})
    response = render(request, "registration/login.html", {
        "form": form, "lockout_message": message, "next": request.POST.get("next", ""),
        "signup_mode": settings.SIGNUP_MODE,
    }, status=429)
    response["Retry-After"] = str(seconds)
    return response
