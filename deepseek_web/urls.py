"""URL roots: accounts, admin, languages, health, the /v1 API, and the chat pages."""
from django.contrib import admin
from django.http import HttpRequest, HttpResponseRedirect
from django.urls import include, path, re_path

from chat.api import views as api_views
from deepseek_web import health, metrics_endpoint

# Models that moved app in the re-layout (ApiKey and ApiUsage to accounts, the audit log to audit, the
# rules to moderation) have new admin addresses: old bookmarks and links land on the new pages.
MOVED_ADMIN_MODELS = {"apikey": "accounts", "apiusage": "accounts", "auditevent": "audit",
                      "auditcheckpoint": "audit", "moderationrule": "moderation"}


def moved_admin_page(request: HttpRequest, model: str, rest: str) -> HttpResponseRedirect:
    query = request.META.get("QUERY_STRING", "")
    return HttpResponseRedirect(f"/admin/{MOVED_ADMIN_MODELS[model]}/{model}/{rest}" + (f"?{query}" if query else ""))


urlpatterns = [
    re_path(r"^admin/chat/(?P<model>apikey|apiusage|auditevent|auditcheckpoint|moderationrule)/(?P<rest>.*)$",
            moved_admin_page),
    path("admin/", admin.site.urls),
    path("", include("chat.accounts.urls")),  # before Django's: sign-up and the audited password change
    path("accounts/", include("django.contrib.auth.urls")),
    path("i18n/", include("django.conf.urls.i18n")),  # set_language: the choice is kept in a cookie
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics_endpoint.metrics, name="metrics"),
    # The OpenAI/DeepSeek-compatible API; anything else under /v1/ answers a JSON 404.
    path("v1/chat/completions", api_views.chat_completions, name="api_chat_completions"),
    path("v1/models", api_views.models, name="api_models"),
    path("v1/openapi.json", api_views.openapi, name="api_openapi"),
    path("v1/<path:rest>", api_views.not_found),
    path("v1", api_views.not_found),
    # DeepSeek's own samples use the bare host as base URL (https://api.deepseek.com/chat/completions).
    path("chat/completions", api_views.chat_completions),
    path("models", api_views.models),
    path("", include("chat.conversations.urls")),
]

# A database outage raised outside a view (the session or user loaded in middleware) answers 503, not 500.
handler500 = "chat.core.outage.server_error"
