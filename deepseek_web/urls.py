"""URL roots: accounts, admin, languages, health, and the chat pages."""
from django.contrib import admin
from django.urls import include, path

from chat import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/signup/", views.signup, name="signup"),
    path("accounts/password_change/", views.AuditedPasswordChangeView.as_view(), name="password_change"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("i18n/", include("django.conf.urls.i18n")),  # set_language: the choice is kept in a cookie
    path("healthz", views.healthz, name="healthz"),
    path("", include("chat.urls")),
]
