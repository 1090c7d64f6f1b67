"""The sidebar and header actions over HTTP: groups, search, rename, delete, settings, exports."""
from __future__ import annotations

import datetime
import json

import pytest
from django.utils import timezone

from chat.conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db


def chat(user, title, days_ago=0, text=""):
    conversation = Conversation.objects.create(
        user=user, model="deepseek-chat", title=title, updated_at=timezone.now() - datetime.timedelta(days=days_ago)
    )
    if text:
        Message.objects.create(conversation=conversation, position=1, role="user", content=text)
    return conversation


def sidebar(html: str) -> str:
    return html.split('class="conversation-nav"')[1].split("</nav>")[0]


def test_it_groups_conversations_by_day_newest_first(client, alice):
    chat(alice, "old one", days_ago=9)
    chat(alice, "yesterday's", days_ago=1)
    chat(alice, "fresh")
    client.force_login(alice)
    nav = sidebar(client.get("/").content.decode())
    order = [nav.index(s) for s in ("Today", "fresh", "Yesterday", "yesterday", "Earlier", "old one")]
    assert order == sorted(order)


def test_search_finds_titles_and_message_text_of_the_owner_only(client, alice, bob):
    chat(alice, "Travel plans", text="nothing here")
    chat(alice, "Groceries", text="buy 牛奶 and bread")
    chat(alice, "Unrelated")
    chat(bob, "Bob's travel", text="travel secrets")
    client.force_login(alice)
    nav = sidebar(client.get("/", {"q": "TRAVEL"}).content.decode())
    assert "Travel plans" in nav and "Bob" not in nav and "Groceries" not in nav
    nav = sidebar(client.get("/", {"q": "牛奶"}).content.decode())
    assert "Groceries" in nav and "Travel" not in nav and "Unrelated" not in nav
    assert "No conversation matches." in sidebar(client.get("/", {"q": "zzz"}).content.decode())


def test_rename_saves_a_clean_title_and_answers_json(client, alice):
    conversation = chat(alice, "old")
    client.force_login(alice)
    response = client.post(f"/c/{conversation.id}/rename/", {"title": "  New   name "},
                           HTTP_ACCEPT="application/json")
    assert response.json() == {"title": "New name"}
    conversation.refresh_from_db()
    assert conversation.title == "New name"


@pytest.mark.parametrize("title", ["", "   ", "x" * 201, "bad\x00title"])
def test_rename_refuses_a_bad_title_and_keeps_the_old_one(client, alice, title):
    conversation = chat(alice, "old")
    client.force_login(alice)
    response = client.post(f"/c/{conversation.id}/rename/", {"title": title}, HTTP_ACCEPT="application/json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_title"
    assert response.json()["error"]["message"]
    conversation.refresh_from_db()
    assert conversation.title == "old"


def test_delete_removes_the_conversation_and_its_messages(client, alice):
    conversation = chat(alice, "to delete", text="bye")
    client.force_login(alice)
    response = client.post(f"/c/{conversation.id}/delete/")
    assert response.status_code == 302 and response["Location"] == "/"
    assert not Conversation.objects.exists() and not Message.objects.exists()


def test_another_users_conversation_is_404_everywhere_and_unchanged(client, alice, bob):
    conversation = chat(alice, "alice's", text="private")
    client.force_login(bob)
    urls = [("get", f"/c/{conversation.id}/"), ("post", f"/c/{conversation.id}/rename/"),
            ("post", f"/c/{conversation.id}/delete/"), ("post", f"/c/{conversation.id}/settings/"),
            ("get", f"/c/{conversation.id}/export.md"), ("get", f"/c/{conversation.id}/export.json")]
    for method, url in urls:
        response = getattr(client, method)(url, {"title": "hacked", "model": "deepseek-chat", "temperature": "1"})
        assert response.status_code == 404, url
        assert b"private" not in response.content
    conversation.refresh_from_db()
    assert conversation.title == "alice's" and conversation.temperature is None
    assert Message.objects.filter(conversation=conversation).count() == 1


def test_settings_are_saved_and_blank_means_the_models_default(client, alice):
    conversation = chat(alice, "s")
    client.force_login(alice)
    response = client.post(f"/c/{conversation.id}/settings/", {
        "model": "deepseek-chat", "system_prompt": "Answer in French.", "temperature": "0.3", "top_p": "",
        "max_tokens": "50"})
    assert response.status_code == 302
    conversation.refresh_from_db()
    assert (conversation.system_prompt, conversation.temperature, conversation.top_p, conversation.max_tokens) == (
        "Answer in French.", 0.3, None, 50)


@pytest.mark.parametrize("field,value,message", [
    ("temperature", "2.5", "less than or equal to 2"),
    ("temperature", "-1", "greater than or equal to 0"),
    ("top_p", "0", "greater than or equal to 0.01"),
    ("top_p", "1.5", "less than or equal to 1"),
    ("max_tokens", "0", "greater than or equal to 1"),
    ("max_tokens", "97", "at most 96 tokens"),
    ("model", "gpt-4", "Select a valid choice"),
    ("system_prompt", "x" * 4001, "at most 4000 characters"),
    ("system_prompt", "a\x00b", "NUL"),
    ("temperature", "warm", "Enter a number"),
])
def test_settings_out_of_range_get_a_clear_error_and_nothing_is_saved(client, alice, field, value, message):
    conversation = chat(alice, "s")
    client.force_login(alice)
    data = {"model": "deepseek-chat", "system_prompt": "", "temperature": "", "top_p": "", "max_tokens": ""}
    data[field] = value
    response = client.post(f"/c/{conversation.id}/settings/", data)
    assert response.status_code == 400
    assert message in response.content.decode()
    conversation.refresh_from_db()
    assert (conversation.model, conversation.system_prompt, conversation.temperature, conversation.top_p,
            conversation.max_tokens) == ("deepseek-chat", "", None, None, None)


def test_exports_are_attachments_that_browsers_do_not_sniff(client, alice):
    conversation = chat(alice, "Export me", text="<script>window.__xss(1)</script>")
    client.force_login(alice)
    md = client.get(f"/c/{conversation.id}/export.md")
    assert md["Content-Type"] == "text/markdown; charset=utf-8"
    assert md["Content-Disposition"].startswith("attachment;") and md["X-Content-Type-Options"] == "nosniff"
    assert "<script>window.__xss(1)</script>" in md.content.decode()  # the user's text, verbatim
    js = client.get(f"/c/{conversation.id}/export.json")
    assert js["Content-Type"] == "application/json; charset=utf-8"
    assert js["Content-Disposition"].startswith("attachment;")
    assert json.loads(js.content)["messages"][0]["content"] == "<script>window.__xss(1)</script>"
    assert client.get(f"/c/{conversation.id}/export.html").status_code == 404


def test_import_creates_a_new_conversation_and_a_bad_file_creates_nothing(client, alice):
    source = chat(alice, "Round trip", text="hello")
    client.force_login(alice)
    exported = client.get(f"/c/{source.id}/export.json").content
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = client.post("/c/import/", {"file": SimpleUploadedFile("c.json", exported, "application/json")})
    assert response.status_code == 302
    imported = Conversation.objects.exclude(id=source.id).get()
    assert response["Location"] == f"/c/{imported.id}/" and imported.title == "Round trip"
    assert imported.messages.get().content == "hello"
    before = (Conversation.objects.count(), Message.objects.count())
    response = client.post("/c/import/", {"file": SimpleUploadedFile("c.json", b"PK\x03\x04zip", "application/json")})
    assert response.status_code == 400 and 'id="import-error"' in response.content.decode()
    assert (Conversation.objects.count(), Message.objects.count()) == before
    response = client.post("/c/import/", {})
    assert response.status_code == 400 and (Conversation.objects.count(), Message.objects.count()) == before


def test_pages_send_a_strict_content_security_policy(client, alice):
    client.force_login(alice)
    response = client.get(f"/c/{chat(alice, 'x').id}/")
    policy = response["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy and "object-src 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert response["X-Content-Type-Options"] == "nosniff" and response["X-Frame-Options"] == "DENY"
    html = response.content.decode()
    # No inline script or style: every <script> is a file or JSON data.
    for tag in html.split("<script")[1:]:
        head = tag.split(">")[0]
        assert "src=" in head or 'type="application/json"' in head, head
    assert " style=" not in html and "<style" not in html


def test_the_language_is_switchable_and_remembered(client, alice):
    client.force_login(alice)
    response = client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/"})
    assert response.status_code == 302 and response.cookies["django_language"].value == "zh-hans"
    html = client.get("/").content.decode()
    assert 'lang="zh-hans"' in html and "新对话" in html
    client.post("/i18n/setlang/", {"language": "en", "next": "/"})
    assert "New chat" in client.get("/").content.decode()


def test_the_theme_cookie_picks_the_first_paint(client, alice):
    client.force_login(alice)
    client.cookies["theme"] = "dark"
    assert 'data-theme="dark"' in client.get("/").content.decode()
    client.cookies["theme"] = "<script>"
    assert 'data-theme="system"' in client.get("/").content.decode()
