"""Pages: accounts, creating and opening conversations, the sidebar, and owner scoping."""
import datetime

import pytest
from django.utils import timezone

from chat.conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db


def test_it_signs_up_and_logs_in_with_the_contract_fields(client, django_user_model):
    response = client.post("/accounts/signup/", {"username": "carol", "password1": "a long pass phrase 9",
                                                 "password2": "a long pass phrase 9"})
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/").status_code == 200
    client.post("/accounts/logout/")
    assert client.get("/").status_code == 302
    response = client.post("/accounts/login/", {"username": "carol", "password": "a long pass phrase 9"})
    assert response.status_code == 302
    assert client.get("/").status_code == 200


def test_a_bad_signup_shows_the_error_and_creates_no_user(client, django_user_model):
    response = client.post("/accounts/signup/", {"username": "dave", "password1": "a long pass phrase 9",
                                                 "password2": "different phrase 9"})
    assert response.status_code == 400
    assert "didn’t match" in response.content.decode() or "didn't match" in response.content.decode()
    assert not django_user_model.objects.filter(username="dave").exists()


def test_a_wrong_password_is_refused(client, alice):
    response = client.post("/accounts/login/", {"username": "alice", "password": "nope"})
    assert response.status_code == 200 and "didn't match" in response.content.decode()
    assert client.get("/").status_code == 302


def test_logout_needs_a_post(client, alice):
    client.force_login(alice)
    assert client.get("/accounts/logout/").status_code == 405
    assert client.get("/").status_code == 200


def test_pages_need_login(client):
    assert client.get("/")["Location"].startswith("/accounts/login/")
    assert client.post("/c/new/").status_code == 302
    assert Conversation.objects.count() == 0


def test_new_creates_a_conversation_and_redirects_to_it(client, alice):
    client.force_login(alice)
    response = client.post("/c/new/")
    conversation = Conversation.objects.get(user=alice)
    assert response.status_code == 302 and response["Location"] == f"/c/{conversation.id}/"
    assert conversation.model == "deepseek-chat"
    page = client.get(response["Location"])
    assert page.status_code == 200 and b'id="composer"' in page.content


def test_new_refuses_get_and_unknown_models(client, alice):
    client.force_login(alice)
    assert client.get("/c/new/").status_code == 405
    response = client.post("/c/new/", {"model": "gpt-4"})
    assert response.status_code == 400 and b"gpt-4" in response.content
    assert Conversation.objects.count() == 0


def test_new_is_protected_by_csrf(alice):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert client.post("/c/new/").status_code == 403
    assert Conversation.objects.count() == 0


def test_another_users_conversation_is_404(client, alice, bob):
    theirs = Conversation.objects.create(user=bob, model="deepseek-chat", title="bob's secret")
    client.force_login(alice)
    response = client.get(f"/c/{theirs.id}/")
    assert response.status_code == 404 and b"bob's secret" not in response.content
    assert b"bob's secret" not in client.get("/").content


def test_the_sidebar_lists_the_users_conversations_newest_first(client, alice, bob):
    now = timezone.now()
    for i, title in enumerate(["chat-oldest", "chat-middle", "chat-newest"]):
        Conversation.objects.create(user=alice, model="deepseek-chat", title=title,
                                    updated_at=now + datetime.timedelta(minutes=i))
    Conversation.objects.create(user=bob, model="deepseek-chat", title="not alice's")
    client.force_login(alice)
    html = client.get("/").content.decode()
    assert html.index("chat-newest") < html.index("chat-middle") < html.index("chat-oldest")
    assert "not alice's" not in html


def test_the_page_shows_history_escaped_and_says_the_demo_model_is_noise(client, alice):
    conversation = Conversation.objects.create(user=alice, model="deepseek-chat")
    question = Message.objects.create(conversation=conversation, position=1, role="user",
                                      content="<script>alert(1)</script>")
    Message.objects.create(conversation=conversation, position=2, role="assistant", content="an answer",
                           parent=question)
    client.force_login(alice)
    html = client.get(f"/c/{conversation.id}/").content.decode()
    # Messages reach the page as JSON data (shown by chat.js as text or sanitized HTML).
    assert "<script>alert(1)</script>" not in html and "\\u003Cscript\\u003Ealert(1)\\u003C/script\\u003E" in html
    assert "an answer" in html
    assert "Demo model in use" in html and "DEEPSEEK_MODELS" in html


def test_healthz_answers_without_login(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_new_chat_offers_only_the_configured_models(client, alice, settings, demo_model_path):
    settings.DEEPSEEK_MODELS = [
        {"name": "deepseek-chat", "path": str(demo_model_path), "demo": True},
        {"name": "deepseek-reasoner", "path": str(demo_model_path), "reasoning": True},
    ]
    client.force_login(alice)
    html = client.get("/").content.decode()
    picker = html.split('id="new-chat-model"')[1].split("</select>")[0]
    assert '<option value="deepseek-chat">' in picker and '<option value="deepseek-reasoner">' in picker
    assert picker.count("<option") == 2
    response = client.post("/c/new/", {"model": "deepseek-reasoner"})
    assert Conversation.objects.get(user=alice).model == "deepseek-reasoner"
    assert response.status_code == 302


def test_with_one_model_there_is_nothing_to_pick(client, alice, settings, demo_model_path):
    settings.DEEPSEEK_MODELS = [{"name": "deepseek-chat", "path": str(demo_model_path), "demo": True}]
    client.force_login(alice)
    assert 'id="new-chat-model"' not in client.get("/").content.decode()
