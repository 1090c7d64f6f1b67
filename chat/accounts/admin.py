"""The users' admin page, with what SIGNUP_MODE=approval needs: a filter for accounts awaiting approval
and the action that approves them."""
from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db import transaction
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from chat.accounts.models import PendingSignup
from chat.audit import record as audit

User = get_user_model()


class AwaitingApprovalFilter(admin.SimpleListFilter):
    title = _("sign-up")
    parameter_name = "awaiting_approval"

    def lookups(self, request: Any, model_admin: Any) -> list[tuple[str, Any]]:
        return [("yes", _("Awaiting approval"))]

    def queryset(self, request: Any, queryset: Any) -> Any:
        return queryset.filter(pending_signup__isnull=False) if self.value() == "yes" else queryset


@admin.action(description=_("Approve the selected accounts (they can sign in)"), permissions=["change"])
def approve(modeladmin: Any, request: Any, queryset: Any) -> None:
    pending = list(queryset.filter(pending_signup__isnull=False))
    for user in pending:
        with transaction.atomic():
            PendingSignup.objects.filter(user=user).delete()
            User.objects.filter(pk=user.pk).update(is_active=True)
        audit.record("admin_change", request=request, detail={"approved_signup": user.get_username()})
    modeladmin.message_user(request, ngettext("%(count)d account approved.", "%(count)d accounts approved.",
                                              len(pending)) % {"count": len(pending)}, messages.SUCCESS)


class SiteUserAdmin(UserAdmin):
    list_filter = (AwaitingApprovalFilter, *UserAdmin.list_filter)
    actions = [approve]


if admin.site.is_registered(User):
    admin.site.unregister(User)
admin.site.register(User, SiteUserAdmin)
