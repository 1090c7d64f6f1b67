"""Audit, moderation and body caps follow the view, not its URL name: served under another name, a view keeps them."""
from __future__ import annotations

import pytest
from django.test import Client, override_settings
from django.urls import include, path

from chat.audit.models import AuditEvent
from chat.conversations import attachment_views, views
from chat.conversations.models import Attachment, Conversation

# This module is the URL conf of its tests: the views under names no middleware ever heard of.
urlpatterns = [
    path("renamed/home/", views.home, name="renamed_home"),
    path("renamed/c/<uuid:conversation_id>/settings/", views.update_settings, name="renamed_settings"),
    path("renamed/attachments/", attachment_views.upload, name="renamed_upload"),
    path("", include("deepseek_web.urls")),
]

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]


@pytest.fixture
def client(alice):
    client = Client()
    client.force_login(alice)
    return client


def test_it_audits_a_view_served_under_a_new_url_name(client):
    response = client.get("/renamed/home/")

    assert response.status_code == 200
    event = AuditEvent.objects.get(action="http_request")
    assert event.detail == {"method": "GET", "view": "renamed_home"} and event.status == 200


def test_it_moderates_the_declared_field_of_a_view_served_under_a_new_url_name(client, alice, settings):
    settings.MODERATION_ENABLED = True
    settings.MODERATION_EXTRA_RULES = [{"pattern": "zz-forbidden-zz"}]
    conversation = Conversation.objects.create(user=alice, model="deepseek-chat", system_prompt="Be brief.")

    response = client.post(f"/renamed/c/{conversation.id}/settings/",
                           {"model": "deepseek-chat", "system_prompt": "say zz-forbidden-zz"})

    assert response.status_code == 400
    conversation.refresh_from_db()
    assert conversation.system_prompt == "Be brief."


@override_settings(ATTACHMENT_MAX_BYTES=64 * 1024)
def test_it_refuses_an_oversized_body_unread_for_a_view_served_under_a_new_url_name(client):
    response = client.generic("POST", "/renamed/attachments/", b"--b\r\n",
                              content_type="multipart/form-data; boundary=b", CONTENT_LENGTH=str(900 * 1024 * 1024))

    assert response.status_code == 413 and response.json()["error"]["code"] == "too_large"
    assert Attachment.objects.count() == 0


def test_a_view_that_declares_nothing_is_not_audited(client):
    assert client.get("/healthz").status_code == 200
    assert not AuditEvent.objects.filter(action="http_request").exists()


def test_an_old_admin_address_of_a_moved_model_leads_to_its_new_one(admin_client):
    response = admin_client.get("/admin/chat/moderationrule/add/?kind=regex")

    assert response.status_code == 302 and response["Location"] == "/admin/moderation/moderationrule/add/?kind=regex"
    assert admin_client.get(response["Location"]).status_code == 200
