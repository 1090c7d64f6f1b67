"""Chat pages."""
from django.urls import path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("c/new/", views.new_conversation, name="new_conversation"),
    path("c/<uuid:conversation_id>/", views.conversation, name="conversation"),
]
