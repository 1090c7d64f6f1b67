"""Simplified Chinese: locale/zh_Hans/LC_MESSAGES/django.po is the source translators edit.

Every string the code and templates mark for translation is in it and translated, it compiles with
GNU gettext's format checks, and the committed django.mo is what compiling it gives.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import polib
import pytest
from django.utils import translation

from chat.core.ui_strings import ui_strings

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / "locale" / "zh_Hans" / "LC_MESSAGES"
# The README's command; makemessages skips dot-folders (.venv, .git) by itself.
MAKEMESSAGES = ["makemessages", "-l", "zh_Hans", "--ignore=var", "--ignore=tests"]
HOW_TO_FIX = (
    "run `python manage.py makemessages -l zh_Hans --ignore=var --ignore=tests`, translate the new "
    "entries in locale/zh_Hans/LC_MESSAGES/django.po, then `python manage.py compilemessages`"
)


def _gettext_tool(name: str) -> str:
    """A GNU gettext command (`make test` installs it): fail where it could be installed, skip only where it cannot."""
    path = shutil.which(name)
    if path:
        return path
    if shutil.which("apt-get"):
        pytest.fail(f"{name} is missing: `make test` installs it (or apt-get install --no-install-recommends gettext)")
    pytest.skip(f"{name} comes from GNU gettext, and this machine has no apt-get")


def _key(entry: polib.POEntry | polib.MOEntry) -> tuple[str | None, str, str]:
    return entry.msgctxt, entry.msgid, entry.msgid_plural


def _pairs(entries) -> set[tuple]:
    return {(_key(e), e.msgstr or str(sorted(e.msgstr_plural.items()))) for e in entries if e.msgid}


def test_every_string_in_the_catalogue_is_translated():
    catalogue = polib.pofile(str(FOLDER / "django.po"))
    untranslated = [e.msgid for e in catalogue
                    if not (e.msgstr or all(e.msgstr_plural.values()) and e.msgstr_plural) or "fuzzy" in e.flags]
    assert untranslated == [], HOW_TO_FIX
    assert catalogue.percent_translated() == 100


def test_the_compiled_catalogue_matches_its_source():
    catalogue = polib.pofile(str(FOLDER / "django.po"))
    compiled = polib.mofile(str(FOLDER / "django.mo"))
    source = _pairs(e for e in catalogue if not e.obsolete)
    assert source == _pairs(compiled), "run: python manage.py compilemessages"
    # ngettext reads the number of forms from the compiled header.
    assert compiled.metadata.get("Plural-Forms") == catalogue.metadata["Plural-Forms"] == "nplurals=1; plural=0;"


def test_the_catalogue_compiles_with_its_format_checks(tmp_path):
    """What `compilemessages` runs (msgfmt --check-format): a translation's %(name)s must be the English one's."""
    compiled = tmp_path / "django.mo"
    result = subprocess.run(
        [_gettext_tool("msgfmt"), "--check-format", "-o", str(compiled), str(FOLDER / "django.po")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert _pairs(polib.mofile(str(compiled))) == _pairs(polib.mofile(str(FOLDER / "django.mo"))), (
        "run: python manage.py compilemessages"
    )


@pytest.fixture(scope="module")
def marked(tmp_path_factory) -> polib.POFile:
    """The template `makemessages` extracts now, from a copy of the tree (it writes beside the sources)."""
    _gettext_tool("xgettext")
    tree = tmp_path_factory.mktemp("source") / "tree"

    def not_source(folder: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n in {"__pycache__", ".git", ".venv"} or n.endswith(".pyc")}
        if Path(folder) == ROOT:  # and what the command above does not read, or reads from elsewhere
            skipped |= {n for n in names if n.startswith(".") or n in {"var", "tests", "locale"}
                        or n.endswith(".egg-info")}
        return skipped

    shutil.copytree(ROOT, tree, symlinks=True, ignore=not_source)  # makemessages does not follow links either
    (tree / "locale").mkdir()  # settings.LOCALE_PATHS, where the copy's catalogue goes
    result = subprocess.run(
        [sys.executable, "manage.py", *MAKEMESSAGES, "--keep-pot"],
        cwd=tree, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return polib.pofile(str(tree / "locale" / "django.pot"))


def test_every_marked_string_is_in_the_catalogue(marked):
    """gettext/_()/ngettext/pgettext/…_lazy in Python and {% translate %}/{% blocktranslate %} in templates."""
    assert len(marked) > 100  # the extraction found the site's strings, so an empty set cannot pass
    in_catalogue = {_key(e) for e in polib.pofile(str(FOLDER / "django.po")) if not e.obsolete}
    missing = sorted({_key(e) for e in marked} - in_catalogue, key=str)
    assert missing == [], HOW_TO_FIX


def test_the_catalogue_has_no_strings_the_code_no_longer_marks(marked):
    in_source = {_key(e) for e in marked}
    stale = sorted({_key(e) for e in polib.pofile(str(FOLDER / "django.po")) if not e.obsolete} - in_source, key=str)
    assert stale == [], f"{HOW_TO_FIX} (makemessages keeps them as obsolete #~ entries)"


def test_the_scripts_words_come_translated():
    with translation.override("zh-hans"):
        words = ui_strings()
    english = ui_strings()
    untranslated = [key for key, text in words.items() if text == english[key] and key != "top_p"]
    assert untranslated == []
