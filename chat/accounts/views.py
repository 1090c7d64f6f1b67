"""Account pages: sign-up (within the flood limit) and the audited password change."""
from __future__ import annotations

from django.contrib.auth import login
from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.views import PasswordChangeView
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_http_methods

from chat.accounts import signups
from chat.audit import record as audit


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("home")
    form = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        wait = signups.take_signup(request)
        if wait is not None:
            form.add_error(None, _("Too many accounts were created from your network in the last hour. "
                                   "Try again later."))
            response = render(request, "registration/signup.html", {"form": form}, status=429)
            response["Retry-After"] = str(wait)
            return response
        user = form.save()
        audit.record("signup", actor=user, request=request)
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("home")
    return render(request, "registration/signup.html", {"form": form}, status=400 if form.errors else 200)


class AuditedPasswordChangeView(PasswordChangeView):
    """Django's password change, with an audit event when it succeeds."""

    def form_valid(self, form):
        response = super().form_valid(form)
        audit.record("password_change", request=self.request)
        return response
