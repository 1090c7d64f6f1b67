"""A flood of rejected keys or anonymous requests writes a bounded number of audit rows per client address."""
from __future__ import annotations

import secrets
import time

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.test import Client

from chat.audit import record as audit
from chat.audit.chain import verify_chain
from chat.audit.models import AuditEvent
from deepseek_web.asgi import application

pytestmark = pytest.mark.django_db
LIMIT = 5
FLOOD = 40


@pytest.fixture(autouse=True)
def _limit(settings, redis_url):
    settings.AUDIT_ANONYMOUS_EVENTS_PER_MINUTE = LIMIT
    # The limit counts per clock minute: start the flood early in one, so it does not span two.
    while time.time() % 60 > 45:
        time.sleep(0.5)


def an_address() -> str:
    """A fresh documentation address per test, so counts left in Redis by other runs never meet it."""
    return f"2001:db8:{secrets.randbelow(0xffff):x}:{secrets.randbelow(0xffff):x}::1"


async def bad_key_request(address: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=application, client=(address, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.post("/v1/chat/completions", json={"model": "deepseek-chat", "messages": []},
                                 headers={"Authorization": "Bearer sk-" + "0" * 40})


def rows(action: str, address: str) -> int:
    return AuditEvent.objects.filter(action=action, ip=address).count()


@pytest.mark.django_db(transaction=True)
async def test_a_flood_of_rejected_keys_writes_a_bounded_number_of_rows_and_one_suppressed_mark():
    flooder, other = an_address(), an_address()
    before = await sync_to_async(AuditEvent.objects.count)()
    for _ in range(FLOOD):
        response = await bad_key_request(flooder)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert await sync_to_async(rows)("api_key_rejected", flooder) == LIMIT
    marks = await sync_to_async(list)(AuditEvent.objects.filter(action="audit_suppressed", ip=flooder))
    assert [mark.detail for mark in marks] == [{"action": "api_key_rejected", "limit": LIMIT, "window_seconds": 60}]
    assert await sync_to_async(AuditEvent.objects.count)() == before + LIMIT + 1
    # Another client's rejected key is still recorded, and the chain is whole.
    assert (await bad_key_request(other)).status_code == 401
    assert await sync_to_async(rows)("api_key_rejected", other) == 1
    assert (await sync_to_async(verify_chain)()).ok


def test_anonymous_hits_on_audited_pages_are_limited_per_client_too():
    client, flooder = Client(), an_address()
    before = AuditEvent.objects.count()
    for _ in range(FLOOD):
        response = client.get("/c/00000000-0000-0000-0000-000000000000/", REMOTE_ADDR=flooder)
        assert response.status_code == 302  # to the login page
    assert AuditEvent.objects.count() - before == LIMIT + 1
    assert rows("http_request", flooder) == LIMIT and rows("audit_suppressed", flooder) == 1


def test_a_signed_in_users_events_are_never_suppressed(alice):
    client, address = Client(), an_address()
    client.force_login(alice)
    before = AuditEvent.objects.filter(actor=alice, action="http_request").count()
    for _ in range(LIMIT * 2):
        assert client.get("/c/00000000-0000-0000-0000-000000000000/", REMOTE_ADDR=address).status_code == 404
    assert AuditEvent.objects.filter(actor=alice, action="http_request").count() == before + LIMIT * 2
    assert rows("audit_suppressed", address) == 0


def test_the_limit_can_be_switched_off(settings):
    settings.AUDIT_ANONYMOUS_EVENTS_PER_MINUTE = 0
    address = an_address()
    for _ in range(LIMIT * 2):
        audit.record("login_failed", request={"client": [address, 1], "headers": []}, verdict="refused")
    assert rows("login_failed", address) == LIMIT * 2
