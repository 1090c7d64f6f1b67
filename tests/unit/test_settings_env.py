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


def test_the_dev_secret_key_file_is_private_from_its_creation(tmp_path):
    """The file is created with mode 600, not chmod-ed after the key is in it: a write that fails
    (here: no file may grow, with a umask that lets everyone read) leaves no readable key file behind."""
    import subprocess
    import sys

    from django.conf import settings

    script = (
        "import os, resource, signal, sys\n"
        "from pathlib import Path\n"
        "import deepseek_web.settings as s\n"
        "s.DATA_DIR = Path(sys.argv[1])\n"
        "os.umask(0)\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))\n"
        "try:\n"
        "    s._dev_secret_key()\n"
        "except OSError:\n"
        "    print('refused')\n"
    )
    data_dir = tmp_path / "data"
    env = {**os.environ, "SECRET_KEY": "x" * 50, "DATA_DIR": str(tmp_path / "unused")}
    result = subprocess.run([sys.executable, "-c", script, str(data_dir)], cwd=settings.BASE_DIR, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "refused", result.stderr
    left = data_dir / "secret_key"
    assert not left.exists() or (left.stat().st_mode & 0o077) == 0
    # Then a normal start writes the key, readable by its owner only, and later starts read the same key.
    result = subprocess.run([sys.executable, "-c", "import os, sys\nfrom pathlib import Path\nimport deepseek_web."
                             "settings as s\ns.DATA_DIR = Path(sys.argv[1])\nos.umask(0)\nprint(s._dev_secret_key())\n"
                             "print(s._dev_secret_key())", str(data_dir)],
                            cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=60)
    first, second = result.stdout.split()
    assert first == second == left.read_text().strip() and len(first) >= 50
    assert (left.stat().st_mode & 0o777) == 0o600
