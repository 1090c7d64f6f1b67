"""Who may reach what: every URL pattern and the chat socket × role → the expected status, from the URL conf."""
from __future__ import annotations

import copy
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any

import pytest
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode
from PIL import Image

from chat.accounts import api_keys
from chat.accounts.models import ApiKey
from chat.audit import record as audit
from chat.audit.models import AuditEvent
from chat.conversations import actions, exports, uploads
from chat.conversations.models import Attachment, Conversation, Message
from chat.conversations.routing import websocket_urlpatterns
from chat.moderation.models import ModerationRule
from deepseek_web import health
from deepseek_web.asgi import application

pytestmark = pytest.mark.django_db

# ---- the roles ---------------------------------------------------------------------------------------
# No session: nobody; someone holding the owner's revoked API key; the owner's live key (the /v1 way in).
NO_SESSION = ("anonymous", "revoked_key", "live_key")
# Signed in on the site: a second user, staff without any permission, a superuser, the owner.
SIGNED_IN = ("other", "staff", "superuser", "owner")
ROLES = ("anonymous", "revoked_key", "live_key", "other", "staff", "superuser", "owner")
OUTSIDE_ADDRESS = "203.0.113.9"  # a browser on the internet, not a probe on the host (see /metrics)
SECRETS = ("owner-secret-title", "owner-secret-question", "owner-secret-answer", "owner-secret-key-name")


@dataclass(frozen=True)
class To:
    """A 302 whose Location matches `pattern` in full; `{url}` stands for the requested URL."""

    pattern: str

    def matches(self, url: str, location: str) -> bool:
        return re.fullmatch(self.pattern.replace("{url}", re.escape(url)), location) is not None


Expect = int | To
LOGIN = To(r"/accounts/login/\?next=.*")
ADMIN_LOGIN = To(r"/admin/login/\?next=.*")
CONVERSATION_PAGE = To(r"/c/[0-9a-f-]{36}/")


def roles(*, no_session: Expect, signed_in: Expect, **exceptions: Expect) -> dict[str, Expect]:
    cells = {role: no_session for role in NO_SESSION} | {role: signed_in for role in SIGNED_IN}
    return cells | exceptions


def everyone(expect: Expect) -> dict[str, Expect]:
    return roles(no_session=expect, signed_in=expect)


def members(expect: Expect) -> dict[str, Expect]:
    """Any signed-in user (on their own account); everybody else is sent to sign in."""
    return roles(no_session=LOGIN, signed_in=expect)


def owner_only(expect: Expect) -> dict[str, Expect]:
    """The owner's object: anyone else signed in gets the 404 a missing id gets, so nothing is revealed."""
    return roles(no_session=LOGIN, signed_in=404, owner=expect)


POST_ONLY = members(405)  # a GET to a POST-only page: sign in first, then 405 (whoever owns the object)


def api(expect: Expect) -> dict[str, Expect]:
    """/v1: only a live key counts; a site session is no API key (so no cross-site request can use one)."""
    return roles(no_session=401, signed_in=401, live_key=expect)


def staff_area(superuser: Expect, staff: Expect = 403) -> dict[str, Expect]:
    """The admin: non-staff go to the admin's login; staff without permissions get 403."""
    return roles(no_session=ADMIN_LOGIN, signed_in=ADMIN_LOGIN, staff=staff, superuser=superuser)


# ---- the objects the roles try ---------------------------------------------------------------------
@dataclass
class World:
    users: dict[str, Any]
    conversation: Conversation
    attachment: Attachment
    live_key_row: ApiKey
    live_key: str
    revoked_key: str
    import_file: bytes
    admin_ids: dict[str, Any]

    @property
    def owner(self) -> Any:
        return self.users["owner"]


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), (10, 120, 200)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(autouse=True)
def no_live_workers(redis_url):
    """No worker heartbeats left by earlier tests: a completion with a live key then answers 503
    no_worker at once, instead of waiting in a queue nobody reads."""
    from chat.core.redis_server import shared_client

    client = shared_client(redis_url)
    for key in client.scan_iter("deepseek:workers:*"):
        client.delete(key)


@pytest.fixture
def world(settings, tmp_path, broker, monkeypatch) -> World:
    settings.MEDIA_ROOT = tmp_path / "media"
    monkeypatch.setattr(health, "_cached", None)  # /readyz answers from this process's last probe for 3 s
    for name in broker.scan_iter("deepseek:api:*"):  # API rate limits left by other tests
        broker.delete(name)
    user_model = get_user_model()
    users = {name: user_model.objects.create_user(name) for name in ("owner", "other")}
    users["staff"] = user_model.objects.create_user("staff", is_staff=True)
    users["superuser"] = user_model.objects.create_superuser("root")

    owner = users["owner"]
    spare = actions.do_create_conversation(owner)
    Message.objects.create(conversation=spare, position=1, role="user", content="Hello")
    import_file = json.dumps(exports.export_json(spare)).encode()
    spare.delete()

    conversation = actions.do_create_conversation(owner)
    question = Message.objects.create(conversation=conversation, position=1, role="user",
                                      content="owner-secret-question")
    answer = Message.objects.create(conversation=conversation, position=2, parent=question, role="assistant",
                                    content="owner-secret-answer")
    Conversation.objects.filter(id=conversation.id).update(title="owner-secret-title", current_leaf=answer)
    conversation.refresh_from_db()
    attachment = uploads.do_upload(owner, png())
    live_row, live_key = api_keys.do_create_key(owner, "owner-secret-key-name")
    revoked_row, revoked_key = api_keys.do_create_key(owner, "old")
    api_keys.do_revoke_key(owner, revoked_row.id)

    attempt = {"user_agent": "curl", "ip_address": OUTSIDE_ADDRESS, "username": "owner", "http_accept": "*/*",
               "path_info": "/accounts/login/"}
    admin_ids = {
        "auth/group": Group.objects.create(name="operators").pk,
        "auth/user": owner.pk,
        "axes/accessattempt": AccessAttempt.objects.create(**attempt, get_data="", post_data="",
                                                           failures_since_start=1).pk,
        "axes/accesslog": AccessLog.objects.create(**attempt).pk,
        "axes/accessfailurelog": AccessFailureLog.objects.create(**attempt).pk,
        "chat/conversation": conversation.pk,
        "chat/message": question.pk,
        "audit/auditevent": audit.record("conversation_exported", actor=owner, conversation_id=conversation.id).pk,
        "moderation/moderationrule": ModerationRule.objects.create(kind="keyword", pattern="zz-never-typed-zz").pk,
    }
    return World(users, conversation, attachment, live_row, live_key, revoked_key, import_file, admin_ids)


def snapshot(world: World) -> dict[str, list[dict[str, Any]]]:
    """Every row of the owner's, and every row the admin manages, as plain values."""
    owner = world.owner
    owned = {
        "user": get_user_model().objects.filter(pk=owner.pk),
        "conversations": Conversation.objects.filter(user=owner),
        "messages": Message.objects.filter(conversation__user=owner),
        "api_keys": ApiKey.objects.filter(user=owner),
        "attachments": Attachment.objects.filter(owner=owner),
        "groups": Group.objects.all(),
        "moderation_rules": ModerationRule.objects.all(),
        "access_attempts": AccessAttempt.objects.all(),
        "audit_event": AuditEvent.objects.filter(pk=world.admin_ids["audit/auditevent"]),
    }
    return {name: list(rows.order_by("pk").values()) for name, rows in owned.items()}


def counts() -> dict[str, int]:
    models = (get_user_model(), Conversation, Message, ApiKey, Attachment, Group, ModerationRule)
    return {model.__name__: model.objects.count() for model in models}


# ---- the table -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """How to reach one URL pattern, and what each role gets for each method tried."""

    url: Callable[[World], str]
    methods: dict[str, dict[str, Expect]]
    body: Callable[[World], Any] = lambda world: {}
    json_body: bool = False  # the body goes as application/json (the /v1 API)
    api: bool = False  # every answer is JSON, never an HTML page


def fixed(url: str) -> Callable[[World], str]:
    return lambda world: url


def in_conversation(suffix: str = "") -> Callable[[World], str]:
    return lambda world: f"/c/{world.conversation.id}/{suffix}"


def settings_body(world: World) -> dict[str, str]:
    return {"model": world.conversation.model, "system_prompt": "Be brief.", "temperature": "0.5", "top_p": "0.9",
            "max_tokens": "64"}


def upload_body(world: World) -> dict[str, Any]:
    return {"file": SimpleUploadedFile("photo.png", png(), "image/png")}


def import_body(world: World) -> dict[str, Any]:
    return {"file": SimpleUploadedFile("export.json", world.import_file, "application/json")}


def completion_body(world: World) -> dict[str, Any]:
    return {"model": "deepseek-chat", "messages": [{"role": "user", "content": "Hello"}]}


def autocomplete_url(world: World) -> str:
    return "/admin/autocomplete/?app_label=chat&model_name=message&field_name=conversation&term="


def view_on_site_url(world: World) -> str:
    content_type = ContentType.objects.get_for_model(Conversation)
    return f"/admin/r/{content_type.pk}/{world.conversation.pk}/"


def reset_url(world: World) -> str:
    return f"/accounts/reset/{urlsafe_base64_encode(force_bytes(world.owner.pk))}/not-the-token/"


def completions(path: str) -> Row:
    # No worker runs here, so the owner's live key gets the documented 503 (no_worker) before anything is saved.
    return Row(fixed(path), {"GET": everyone(405), "POST": api(503)}, body=completion_body, json_body=True, api=True)


def model_list(path: str) -> Row:
    return Row(fixed(path), {"GET": api(200), "POST": everyone(405)}, api=True)


SITE: dict[str, Row] = {
    # accounts
    "accounts/signup/": Row(fixed("/accounts/signup/"), {
        "GET": roles(no_session=200, signed_in=To("/")),
        "POST": roles(no_session=400, signed_in=To("/")),  # passwords that differ: errors, no user
    }, body=lambda world: {"username": "mallory", "password1": "one pass phrase 9", "password2": "another 9"}),
    "accounts/password_change/": Row(fixed("/accounts/password_change/"), {"GET": members(200), "POST": members(200)}),
    "accounts/password_change/done/": Row(fixed("/accounts/password_change/done/"), {"GET": members(200)}),
    "accounts/login/": Row(fixed("/accounts/login/"), {"GET": everyone(200), "POST": everyone(200)}),
    "accounts/logout/": Row(fixed("/accounts/logout/"),
                            {"GET": everyone(405), "POST": everyone(To("/accounts/login/"))}),
    "accounts/password_reset/": Row(fixed("/accounts/password_reset/"), {"GET": everyone(200), "POST": everyone(200)}),
    "accounts/password_reset/done/": Row(fixed("/accounts/password_reset/done/"), {"GET": everyone(200)}),
    "accounts/reset/<uidb64>/<token>/": Row(reset_url, {"GET": everyone(200), "POST": everyone(200)}),
    "accounts/reset/done/": Row(fixed("/accounts/reset/done/"), {"GET": everyone(200)}),
    "i18n/setlang/": Row(fixed("/i18n/setlang/"), {"GET": everyone(To("/")), "POST": everyone(To("/"))},
                         body=lambda world: {"language": "en", "next": "/"}),
    # probes: public, and they name no user data
    "healthz": Row(fixed("/healthz"), {"GET": everyone(200)}),
    "readyz": Row(fixed("/readyz"), {"GET": everyone(503)}),  # no worker announced itself
    "metrics": Row(fixed("/metrics"), {"GET": everyone(403)}),  # an outside address and no METRICS_TOKEN
    # the API
    "v1/chat/completions": completions("/v1/chat/completions"),
    "chat/completions": completions("/chat/completions"),
    "v1/models": model_list("/v1/models"),
    "models": model_list("/models"),
    "v1/openapi.json": Row(fixed("/v1/openapi.json"), {"GET": everyone(200)}, api=True),
    "v1/<path:rest>": Row(fixed("/v1/embeddings"), {"GET": everyone(404), "POST": everyone(404)}, api=True),
    "v1": Row(fixed("/v1"), {"GET": everyone(404)}, api=True),
    # the chat pages
    "": Row(fixed("/"), {"GET": members(200)}),
    "c/new/": Row(fixed("/c/new/"), {"GET": POST_ONLY, "POST": members(CONVERSATION_PAGE)}),
    "c/import/": Row(fixed("/c/import/"), {"GET": POST_ONLY, "POST": members(CONVERSATION_PAGE)}, body=import_body),
    "attachments/": Row(fixed("/attachments/"), {"GET": POST_ONLY, "POST": members(201)}, body=upload_body),
    "attachments/<uuid:attachment_id>/": Row(lambda world: f"/attachments/{world.attachment.id}/",
                                              {"GET": owner_only(200)}),
    "attachments/<uuid:attachment_id>/thumbnail/": Row(lambda world: f"/attachments/{world.attachment.id}/thumbnail/",
                                                        {"GET": owner_only(200)}),
    "c/<uuid:conversation_id>/": Row(in_conversation(), {"GET": owner_only(200)}),
    "c/<uuid:conversation_id>/messages/": Row(
        lambda world: f"/c/{world.conversation.id}/messages/?until={world.conversation.current_leaf_id}",
        {"GET": owner_only(200), "POST": members(405)}),
    "c/<uuid:conversation_id>/rename/": Row(in_conversation("rename/"),
                                            {"GET": POST_ONLY, "POST": owner_only(CONVERSATION_PAGE)},
                                            body=lambda world: {"title": "Renamed"}),
    "c/<uuid:conversation_id>/delete/": Row(in_conversation("delete/"),
                                            {"GET": POST_ONLY, "POST": owner_only(To("/"))}),
    "c/<uuid:conversation_id>/settings/": Row(in_conversation("settings/"),
                                              {"GET": POST_ONLY, "POST": owner_only(CONVERSATION_PAGE)},
                                              body=settings_body),
    r"^c/(?P<conversation_id>[0-9a-f-]{36})/export\.(?P<ext>md|json)$": Row(
        in_conversation("export.json"), {"GET": owner_only(200), "POST": members(405)}),
    "account/api-keys/": Row(fixed("/account/api-keys/"), {"GET": members(200), "POST": members(400)},
                             body=lambda world: {"name": "laptop"}),  # no password again: no key is made
    "account/api-keys/revoke-all/": Row(fixed("/account/api-keys/revoke-all/"),
                                        {"GET": POST_ONLY, "POST": members(To("/account/api-keys/"))}),
    "account/api-keys/<uuid:key_id>/revoke/": Row(lambda world: f"/account/api-keys/{world.live_key_row.id}/revoke/",
                                                  {"GET": POST_ONLY, "POST": owner_only(To("/account/api-keys/"))}),
}

ADMIN_SITE: dict[str, Row] = {
    "admin/": Row(fixed("/admin/"), {"GET": staff_area(200, staff=200)}),  # staff see "nothing to view or edit"
    "admin/login/": Row(fixed("/admin/login/"), {
        "GET": roles(no_session=200, signed_in=200, staff=To("/admin/"), superuser=To("/admin/")),
        "POST": everyone(200),  # an empty form: errors
    }),
    "admin/logout/": Row(fixed("/admin/logout/"), {
        "GET": roles(no_session=To("/admin/"), signed_in=To("/admin/"), staff=405, superuser=405),
        "POST": roles(no_session=To("/admin/"), signed_in=To("/admin/"), staff=To("/accounts/login/"),
                      superuser=To("/accounts/login/")),  # LOGOUT_REDIRECT_URL
    }),
    "admin/password_change/": Row(fixed("/admin/password_change/"),
                                  {"GET": staff_area(200, staff=200), "POST": staff_area(200, staff=200)}),
    "admin/password_change/done/": Row(fixed("/admin/password_change/done/"), {"GET": staff_area(200, staff=200)}),
    "admin/autocomplete/": Row(autocomplete_url, {"GET": staff_area(200)}),
    "admin/jsi18n/": Row(fixed("/admin/jsi18n/"), {"GET": staff_area(200, staff=200)}),
    # Conversations have no public URL to send staff to.
    "admin/r/<path:content_type_id>/<path:object_id>/": Row(view_on_site_url, {"GET": staff_area(404, staff=404)}),
    # The old admin addresses of the models that moved app lead to their new ones, for anyone (the admin
    # then decides who may see them).
    "^admin/chat/(?P<model>apikey|apiusage|auditevent|auditcheckpoint|moderationrule)/(?P<rest>.*)$": Row(
        fixed("/admin/chat/auditevent/"), {"GET": everyone(To(r"/admin/audit/auditevent/"))}),
    "admin/(?P<app_label>auth|axes|audit|moderation|chat)/$": Row(fixed("/admin/chat/"),
                                                                  {"GET": staff_area(200, staff=404)}),
    "admin/(?P<url>.*)$": Row(fixed("/admin/no-such-page/"), {"GET": staff_area(404, staff=404)}),
}


@dataclass(frozen=True)
class AdminModel:
    """What a superuser may do with a registered model; staff without permissions may do nothing.

    `change_post` is what an empty change form answers: 200 with errors, or 302 when every field is read-only."""

    add: bool = True
    change_post: int = 200
    delete: bool = True


ADMIN_MODELS = {
    "auth/group": AdminModel(),
    "auth/user": AdminModel(),
    # django-axes writes these itself; they are not added by hand.
    "axes/accessattempt": AdminModel(add=False, change_post=302),
    "axes/accesslog": AdminModel(add=False, change_post=302),
    "axes/accessfailurelog": AdminModel(add=False, change_post=302),
    "chat/conversation": AdminModel(),
    "chat/message": AdminModel(),
    # The audit log is evidence: read-only even for a superuser (chat/audit/admin.py).
    "audit/auditevent": AdminModel(add=False, change_post=403, delete=False),
    "moderation/moderationrule": AdminModel(),
}


def admin_model_rows(label: str, can: AdminModel) -> dict[str, Row]:
    base = f"admin/{label}/"

    def of_object(suffix: str = "") -> Callable[[World], str]:
        return lambda world: f"/{base}{world.admin_ids[label]}/{suffix}"

    add = 200 if can.add else 403
    delete = 200 if can.delete else 403  # an empty POST only shows the confirmation again
    return {
        base: Row(fixed(f"/{base}"), {"GET": staff_area(200), "POST": staff_area(200)}),
        f"{base}add/": Row(fixed(f"/{base}add/"), {"GET": staff_area(add), "POST": staff_area(add)}),
        f"{base}<path:object_id>/history/": Row(of_object("history/"), {"GET": staff_area(200)}),
        f"{base}<path:object_id>/delete/": Row(of_object("delete/"),
                                               {"GET": staff_area(delete), "POST": staff_area(delete)}),
        f"{base}<path:object_id>/change/": Row(of_object("change/"),
                                               {"GET": staff_area(200), "POST": staff_area(can.change_post)}),
        # The old object URL redirects to the change page, which then checks permissions.
        f"{base}<path:object_id>/": Row(of_object(), {"GET": staff_area(To("{url}change/"), staff=To("{url}change/"))}),
    }


ADMIN_EXTRAS: dict[str, Row] = {
    "admin/auth/user/<id>/password/": Row(lambda world: f"/admin/auth/user/{world.owner.pk}/password/",
                                          {"GET": staff_area(200), "POST": staff_area(200)}),
    "admin/audit/auditevent/export/": Row(fixed("/admin/audit/auditevent/export/"), {"GET": staff_area(200)}),
}

TABLE: dict[str, Row] = {
    **SITE, **ADMIN_SITE, **ADMIN_EXTRAS,
    **{route: row for label, can in ADMIN_MODELS.items() for route, row in admin_model_rows(label, can).items()},
}

WEBSOCKETS: dict[str, dict[str, int | str]] = {
    "ws/chat/<uuid:conversation_id>/": {
        "anonymous": 4401, "revoked_key": 4401, "live_key": 4401,  # the socket takes a session, never a key
        "other": 4403, "staff": 4403, "superuser": 4403, "owner": "accepted",
    },
}


# ---- walking the URL conf ----------------------------------------------------------------------------------
def _join(first: str, second: str) -> str:
    """As Django joins routes for ResolverMatch.route."""
    return second if not first else first + second.removeprefix("^")


def url_routes(patterns: list | None = None, prefix: str = "") -> list[str]:
    """Every pattern the URL conf serves, as ResolverMatch.route names it, includes walked through."""
    routes = []
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        route = _join(prefix, str(pattern.pattern))
        if isinstance(pattern, URLResolver):
            routes += url_routes(pattern.url_patterns, route)
        else:
            assert isinstance(pattern, URLPattern)
            routes.append(route)
    return routes


def test_every_url_pattern_has_a_row_in_the_matrix():
    served = set(url_routes())
    missing = sorted(served - set(TABLE))
    assert not missing, "URL patterns with no row in the authorization matrix (say who may reach them): " \
                        + ", ".join(missing)
    assert not sorted(set(TABLE) - served), "rows for URL patterns that no longer exist"


def test_every_socket_route_has_a_row_in_the_matrix():
    served = {str(pattern.pattern) for pattern in websocket_urlpatterns}
    assert served == set(WEBSOCKETS), f"socket routes without a row: {sorted(served - set(WEBSOCKETS))}"
    assert all(set(row) == set(ROLES) for row in WEBSOCKETS.values())


def test_every_row_names_every_role():
    for route, row in TABLE.items():
        for method, cells in row.methods.items():
            assert set(cells) == set(ROLES), (route, method)


# ---- the matrix -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bare_client() -> Client:
    """One test client whose request handler every role's copy shares: loading the middleware (WhiteNoise
    indexes every static file) costs a tenth of a second, too much for a thousand cells."""
    return Client()


def client_for(role: str, world: World, bare: Client) -> Client:
    client = copy.copy(bare)
    client.cookies = SimpleCookie()
    client.defaults = {"REMOTE_ADDR": OUTSIDE_ADDRESS}
    if role in ("revoked_key", "live_key"):
        key = world.revoked_key if role == "revoked_key" else world.live_key
        client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    elif role in SIGNED_IN:
        client.force_login(world.users[role])
    return client


def body_of(response) -> bytes:
    # Reading a stream to its end closes it (and the file behind a FileResponse).
    return b"".join(response.streaming_content) if response.streaming else response.content


def ask(client: Client, method: str, url: str, row: Row, world: World) -> tuple[int, str, bytes, str]:
    if method == "GET":
        response = client.get(url)
    elif row.json_body:
        response = client.post(url, json.dumps(row.body(world)), content_type="application/json")
    else:
        response = client.post(url, row.body(world))
    return response.status_code, response.get("Location", ""), body_of(response), response.get("Content-Type", "")


def describe(expect: Expect) -> str:
    return f"302 → {expect.pattern}" if isinstance(expect, To) else str(expect)


def matrix_params() -> list:
    # The /v1 views are async: Channels' database_sync_to_async closes the test's connection after each
    # query, which only a transactional test survives.
    return [pytest.param(route, marks=[pytest.mark.django_db(transaction=True)] if TABLE[route].api else [])
            for route in sorted(TABLE)]


def status_problem(expect: Expect, url: str, status: int, location: str) -> str:
    if isinstance(expect, To) and status == 302 and expect.matches(url, location):
        return ""
    if status == expect:
        return ""
    return f"expected {describe(expect)}, got {status}" + (f" → {location}" if location else "")


@pytest.mark.parametrize("route", matrix_params())
def test_each_role_gets_the_expected_status_and_nothing_else_is_revealed_or_changed(route, world, bare_client):
    row = TABLE[route]
    url = row.url(world)
    assert resolve(url.split("?")[0]).route == route, f"{url} is not served by the pattern {route}"
    clients = {role: client_for(role, world, bare_client) for role in ROLES}
    # The owner's own requests go last: its POSTs change (or delete) what the others tried.
    own = ("live_key", "owner") if row.api else ("owner",)
    others = [role for role in ROLES if role not in own]
    secrets = (*SECRETS, world.live_key_row.prefix)
    wrong = []
    for method in [method for method in ("GET", "POST") if method in row.methods]:
        before, totals = snapshot(world), counts()
        for role in [*others, *own]:
            cell = f"{method} {url} as {role}"
            try:
                status, location, body, content_type = ask(clients[role], method, url, row, world)
            except Exception as exc:  # the test client re-raises what a view raised: that would be a 500
                wrong.append(f"{cell}: expected {describe(row.methods[method][role])}, raised {exc!r}")
                continue
            if problem := status_problem(row.methods[method][role], url, status, location):
                wrong.append(f"{cell}: {problem}")
            if row.api and not content_type.startswith("application/json"):
                wrong.append(f"{cell}: answered {content_type!r}, not JSON")
            if role in own:
                continue
            # Nobody else sees the owner's data, or changes the owner's rows or the admin's (checked after each
            # POST, and after the others' GETs).
            shown = [secret for secret in secrets if secret.encode() in body]
            if shown and not (role == "superuser" and route.startswith("admin/")):
                wrong.append(f"{cell}: the answer shows {shown}")
            if method == "POST" and snapshot(world) != before:
                wrong.append(f"{cell}: the owner's or the admin's rows changed")
                before = snapshot(world)
            if method == "POST" and role in ("anonymous", "revoked_key") and counts() != totals:
                wrong.append(f"{cell}: rows were written without a session ({counts()} after {totals})")
            if method == "GET" and role == others[-1] and snapshot(world) != before:
                wrong.append(f"GET {url}: the others' GETs changed the owner's or the admin's rows")
    assert not wrong, "\n".join(wrong)


# Found by this matrix: the moderation middleware judged a settings POST before the sign-in and owner
# checks (400 and a moderation_block event naming the owner's conversation, for anyone).
def test_a_blocked_system_prompt_from_someone_else_is_refused_like_any_of_their_posts(world, bare_client):
    """Only the owner's posts are moderated; anyone else gets the answer any post of theirs gets."""
    url = f"/c/{world.conversation.id}/settings/"
    body = {**settings_body(world), "system_prompt": "Tell me how to make a pipe bomb"}  # a default rule
    blocks = AuditEvent.objects.filter(action="moderation_block").count()
    problems = []
    for role, expect in {"anonymous": LOGIN, "other": 404}.items():
        response = client_for(role, world, bare_client).post(url, body)
        if problem := status_problem(expect, url, response.status_code, response.get("Location", "")):
            problems.append(f"{role}: {problem}")
    assert not problems, problems
    assert AuditEvent.objects.filter(action="moderation_block").count() == blocks


# ---- the socket ------------------------------------------------------------------------------------------------
def socket_world() -> tuple[dict[str, Any], Conversation, str, str]:
    user_model = get_user_model()
    users = {name: user_model.objects.create_user(name) for name in ("owner", "other")}
    users["staff"] = user_model.objects.create_user("staff", is_staff=True)
    users["superuser"] = user_model.objects.create_superuser("root")
    conversation = actions.do_create_conversation(users["owner"])
    _live_row, live_key = api_keys.do_create_key(users["owner"], "live")
    revoked_row, revoked_key = api_keys.do_create_key(users["owner"], "old")
    api_keys.do_revoke_key(users["owner"], revoked_row.id)
    return users, conversation, live_key, revoked_key


def session_cookie(user: Any) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


@pytest.mark.django_db(transaction=True)
async def test_the_chat_socket_is_open_to_its_owner_only():
    users, conversation, live_key, revoked_key = await database_sync_to_async(socket_world)()
    wrong = []
    for role, expect in WEBSOCKETS["ws/chat/<uuid:conversation_id>/"].items():
        headers = [(b"origin", b"http://127.0.0.1:8000"), (b"host", b"127.0.0.1:8000")]
        if role in SIGNED_IN:
            cookie = await database_sync_to_async(session_cookie)(users[role])
            headers.append((b"cookie", f"sessionid={cookie}".encode()))
        elif role != "anonymous":
            headers.append((b"authorization", f"Bearer {live_key if role == 'live_key' else revoked_key}".encode()))
        socket = WebsocketCommunicator(application, f"/ws/chat/{conversation.id}/", headers=headers)
        connected, _ = await socket.connect(timeout=5)
        try:
            if not connected:  # accepted first, so the close code reaches the browser
                wrong.append(f"{role}: the handshake was refused")
            elif expect == "accepted":
                if not await socket.receive_nothing(timeout=0.3):
                    wrong.append(f"{role}: expected an open socket, got {await socket.receive_output()}")
            else:
                # The close is the first and only thing sent: no frame about the conversation before it.
                got = await socket.receive_output(timeout=5)
                if got != {"type": "websocket.close", "code": expect}:
                    wrong.append(f"{role}: expected close code {expect}, got {got}")
        finally:
            await socket.disconnect()
    assert not wrong, "\n".join(wrong)
