"""Settings helpers: defaults when unset, typed values when set, a loud error when malformed."""
import os
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from chat.core.env import env_bool, env_float, env_int, env_json, env_list, env_str


def test_it_uses_the_default_when_unset(monkeypatch):
    monkeypatch.delenv("X_SETTING", raising=False)
    assert env_int("X_SETTING", 7) == 7
    assert env_bool("X_SETTING", True) is True
    assert env_str("X_SETTING", "d") == "d"
    assert env_list("X_SETTING", ["a"]) == ["a"]
    assert env_json("X_SETTING", {"k": 1}) == {"k": 1}


def test_it_reads_typed_values(monkeypatch):
    monkeypatch.setenv("X_SETTING", " 42 ")
    assert env_int("X_SETTING", 0) == 42
    assert env_float("X_SETTING", 0.0) == 42.0
    monkeypatch.setenv("X_SETTING", "Yes")
    assert env_bool("X_SETTING", False) is True
    monkeypatch.setenv("X_SETTING", "a, b,,c")
    assert env_list("X_SETTING", []) == ["a", "b", "c"]


@pytest.mark.parametrize(
    "reader, value",
    [
        (lambda: env_int("X_SETTING", 1), "twelve"),
        (lambda: env_int("X_SETTING", 1, minimum=1), "0"),
        (lambda: env_bool("X_SETTING", False), "maybe"),
        (lambda: env_float("X_SETTING", 1.0), "fast"),
        (lambda: env_json("X_SETTING", []), "[1, 2"),
    ],
)
def test_it_fails_loudly_on_a_bad_value(monkeypatch, reader, value):
    monkeypatch.setenv("X_SETTING", value)
    with pytest.raises(ImproperlyConfigured, match="X_SETTING"):
        reader()


def test_debug_is_off_unless_asked():
    from django.conf import settings

    assert settings.DEBUG is False


def test_the_dev_secret_key_lives_outside_git():
    from django.conf import settings

    key_file = settings.DATA_DIR / "secret_key"
    assert key_file.exists() and key_file.read_text().strip() == settings.SECRET_KEY
    ignored = (settings.BASE_DIR / ".gitignore").read_text().split()
    assert "var/" in ignored
    assert settings.DATA_DIR == Path(os.environ.get("DATA_DIR", settings.BASE_DIR / "var")).resolve()
