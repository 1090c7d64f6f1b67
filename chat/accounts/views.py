"""Account pages: sign-in (which tells an account awaiting approval so), sign-up (as SIGNUP_MODE allows, within
the flood limit) and the audited password change, which ends the user's other sessions."""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model, login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm, UserCreationForm
from django.contrib.auth.views import LoginView, PasswordChangeView
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse_lazy
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_http_methods

from chat.accounts import session_index, signups
from chat.accounts.models import ApiKey, PendingSignup
from chat.audit import record as audit


class ApprovalAwareLoginForm(AuthenticationForm):
    """Django's sign-in form; an account that is still awaiting approval is told so, but only after its
    right password (a wrong one gets the usual answer, so nobody learns which accounts exist)."""

    error_messages = {
        **AuthenticationForm.error_messages,
        "awaiting_approval": gettext_lazy("Your account is awaiting approval by the site's staff; "
                                          "you can sign in once it is approved."),
    }

    def clean(self) -> dict[str, Any]:
        try:
            return super().clean()
        except ValidationError:
            password = self.cleaned_data.get("password") or ""
            pending = PendingSignup.objects.select_related("user").filter(
                **{f"user__{self.username_field.name}": self.cleaned_data.get("username")}).first()
            if pending is None:
                # The same hashing work a pending account costs, so timing tells no account apart.
                get_user_model()().set_password(password)
            elif pending.user.check_password(password):
                raise ValidationError(self.error_messages["awaiting_approval"], code="awaiting_approval") from None
            raise


class SiteLoginView(LoginView):
    form_class = ApprovalAwareLoginForm

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        return {**super().get_context_data(**kwargs), "signup_mode": settings.SIGNUP_MODE}


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    """SIGNUP_MODE: open (signed in at once), approval (made inactive until staff approve it), closed (403:
    only staff make accounts, in the admin)."""
    mode = settings.SIGNUP_MODE
    if mode == "closed":
        return render(request, "registration/signup_closed.html", status=403)
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
        if mode == "approval":
            with transaction.atomic():
                user = form.save(commit=False)
                user.is_active = False
                user.save()
                PendingSignup.objects.create(user=user)
            audit.record("signup", actor=user, request=request, detail={"awaiting_approval": True})
            return render(request, "registration/signup_pending.html", {"username": user.get_username()})
        user = form.save()
        audit.record("signup", actor=user, request=request)
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("home")
    return render(request, "registration/signup.html", {"form": form, "signup_mode": mode},
                  status=400 if form.errors else 200)


class AuditedPasswordChangeView(PasswordChangeView):
    """Django's password change, with an audit event when it succeeds. The user's other sessions end
    (someone who knew the old password is signed out everywhere else), this one goes on, and the done
    page offers to revoke the API keys, which a new password does not touch."""

    template_name = "registration/password_change.html"
    success_url = reverse_lazy("password_change_done")

    def form_valid(self, form):
        response = super().form_valid(form)  # saves the password and gives this session a new key
        session_key = self.request.session.session_key
        ended = session_index.end_other_sessions(self.request.user, session_key)
        session_index.remember(self.request.user, session_key)
        audit.record("password_change", request=self.request, detail={"sessions_ended": ended})
        return response


@login_required
def password_change_done(request: HttpRequest) -> HttpResponse:
    keys = ApiKey.objects.filter(user=request.user, revoked_at=None)
    return render(request, "registration/password_changed.html", {"keys": keys})
