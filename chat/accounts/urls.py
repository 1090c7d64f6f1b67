"""Account pages and the API keys page."""
from django.urls import path

from chat.accounts import key_views, views

urlpatterns = [
    path("accounts/login/", views.SiteLoginView.as_view(), name="login"),
    path("accounts/signup/", views.signup, name="signup"),
    path("accounts/password_change/", views.AuditedPasswordChangeView.as_view(), name="password_change"),
    path("accounts/password_change/done/", views.password_change_done, name="password_change_done"),
    path("account/api-keys/", key_views.api_keys_page, name="api_keys"),
    path("account/api-keys/<uuid:key_id>/revoke/", key_views.revoke_api_key, name="revoke_api_key"),
    path("account/api-keys/revoke-all/", key_views.revoke_all_api_keys, name="revoke_all_api_keys"),
]
