"""Production mode (DJANGO_ENV=production): deploy checks pass, HTTPS is enforced, and nothing is made up."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOST = "chat.example.com"
KEY = "k3Y-for-the-production-tests-only-0123456789-abcdefghijklmnop"
# Settings a developer's shell may carry that would change what production mode decides, and the
# test run's own DJANGO_ALLOW_ASYNC_UNSAFE (conftest sets it for Playwright; a deployment must not).
CLEARED = ("DEBUG", "SECRET_KEY", "ALLOWED_HOSTS", "STATIC_ROOT", "SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS",
           "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD", "DJANGO_ENV", "DJANGO_ALLOW_ASYNC_UNSAFE")


def production(args: list[str], data_dir: Path, **changes: str | None) -> subprocess.CompletedProcess:
    """Run `python <args>` in the project with production settings (a `None` change unsets a variable)."""
    env = {name: value for name, value in os.environ.items() if name not in CLEARED}
    env.update(DJANGO_ENV="production", DATA_DIR=str(data_dir), SECRET_KEY=KEY, ALLOWED_HOSTS=HOST)
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


# Requests through Django's test client inside a production-mode process; prints what came back.
PROBE = textwrap.dedent(f"""
    import json, django
    django.setup()
    from django.conf import settings
    from django.templatetags.static import static
    from django.test import Client

    def seen(response):
        return {{"status": response.status_code, "location": response.get("Location"),
                "hsts": response.get("Strict-Transport-Security"),
                "cache": response.get("Cache-Control"),
                "cookies": {{name: dict(morsel) for name, morsel in response.cookies.items()}}}}

    client = Client(HTTP_HOST="{HOST}")
    print(json.dumps({{
        "login_https": seen(client.get("/accounts/login/", secure=True)),
        "login_proxied": seen(client.get("/accounts/login/", HTTP_X_FORWARDED_PROTO="https")),
        "login_http": seen(client.get("/accounts/login/")),
        "healthz_http": seen(client.get("/healthz")),
        "static": static("chat/chat.css"),
        "static_https": seen(client.get(static("chat/chat.css"), secure=True)),
        "session_cookie_secure": settings.SESSION_COOKIE_SECURE,
        "csrf_cookie_secure": settings.CSRF_COOKIE_SECURE,
    }}))
""")


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """A production data folder whose static files `collectstatic` has written."""
    data_dir = tmp_path_factory.mktemp("production")
    result = production(["manage.py", "collectstatic", "--noinput"], data_dir,
                        STATIC_ROOT=str(data_dir / "static-root"))
    return data_dir, result


@pytest.fixture(scope="module")
def probe(collected):
    data_dir, _ = collected
    result = production(["-c", PROBE], data_dir, STATIC_ROOT=str(data_dir / "static-root"))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_it_passes_the_deploy_checks(tmp_path):
    result = production(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_it_fails_the_deploy_checks_when_hsts_is_off(tmp_path):
    # The check really runs with the production settings: switching a protection off is caught.
    result = production(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], tmp_path,
                        SECURE_HSTS_SECONDS="0")

    assert result.returncode != 0
    assert "security.W004" in result.stderr


def test_it_refuses_to_start_without_a_secret_key(tmp_path):
    result = production(["manage.py", "check"], tmp_path, SECRET_KEY=None)

    assert result.returncode != 0
    assert "SECRET_KEY must be set when DJANGO_ENV=production" in result.stderr
    assert not (tmp_path / "secret_key").exists()  # no key was generated in its place


def test_it_refuses_to_start_without_allowed_hosts(tmp_path):
    result = production(["manage.py", "check"], tmp_path, ALLOWED_HOSTS=None)

    assert result.returncode != 0
    assert "ALLOWED_HOSTS must be set when DJANGO_ENV=production" in result.stderr


def test_it_refuses_an_unknown_environment_name(tmp_path):
    result = production(["manage.py", "check"], tmp_path, DJANGO_ENV="prod")

    assert result.returncode != 0
    assert "DJANGO_ENV='prod' is not one of development, production" in result.stderr


def test_it_collects_hashed_and_compressed_static_files(collected):
    data_dir, result = collected

    assert result.returncode == 0, result.stderr
    root = data_dir / "static-root"
    manifest = json.loads((root / "staticfiles.json").read_text())
    hashed = manifest["paths"]["chat/chat.css"]
    assert hashed != "chat/chat.css"
    assert (root / hashed).exists() and (root / f"{hashed}.gz").exists()


def test_it_sends_hsts_and_secure_cookies_over_https(probe):
    page = probe["login_https"]

    assert page["status"] == 200
    assert page["hsts"] == "max-age=31536000; includeSubDomains"  # no preload unless asked
    assert page["cookies"]["csrftoken"]["secure"] is True
    assert probe["session_cookie_secure"] is True and probe["csrf_cookie_secure"] is True


def test_it_trusts_the_proxys_forwarded_proto(probe):
    assert probe["login_proxied"]["status"] == 200
    assert probe["login_proxied"]["hsts"]


def test_it_redirects_plain_http_to_https(probe):
    page = probe["login_http"]

    assert page["status"] == 301
    assert page["location"] == f"https://{HOST}/accounts/login/"
    assert page["hsts"] is None  # HSTS is only ever sent over HTTPS


def test_it_answers_health_probes_over_plain_http(probe):
    assert probe["healthz_http"]["status"] == 200


def test_it_serves_hashed_static_files_cached_for_ever(probe):
    assert probe["static"] != "/static/chat/chat.css"
    assert probe["static_https"]["status"] == 200
    assert "immutable" in probe["static_https"]["cache"]


def test_it_leaves_the_devtools_out_and_keeps_every_product_command(tmp_path):
    result = production(["manage.py", "help", "--commands"], tmp_path)

    assert result.returncode == 0, result.stderr
    commands = set(result.stdout.split())
    assert {"resilience", "bench_inference", "bench_stream", "bench_guardrails"}.isdisjoint(commands)
    assert {"create_api_key", "verify_audit_chain", "build_demo_models", "migrate"} <= commands


def test_outside_production_the_devtools_commands_are_there():
    result = subprocess.run([sys.executable, "manage.py", "help", "--commands"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert {"resilience", "bench_inference", "bench_stream", "bench_guardrails"} <= set(result.stdout.split())
