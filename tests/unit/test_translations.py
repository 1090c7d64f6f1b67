"""Simplified Chinese: every UI string has a translation, and the compiled catalogue is current."""
from pathlib import Path

import polib
from django.utils import translation

from chat.core.ui_strings import ui_strings

FOLDER = Path(__file__).resolve().parents[2] / "locale" / "zh_Hans" / "LC_MESSAGES"


def test_every_string_in_the_catalogue_is_translated():
    catalogue = polib.pofile(str(FOLDER / "django.po"))
    untranslated = [e.msgid for e in catalogue
                    if not (e.msgstr or all(e.msgstr_plural.values()) and e.msgstr_plural) or "fuzzy" in e.flags]
    assert untranslated == []
    assert catalogue.percent_translated() == 100


def test_the_compiled_catalogue_matches_its_source():
    def pairs(entries):
        return {(e.msgid, e.msgstr or str(sorted(e.msgstr_plural.items()))) for e in entries if e.msgid}

    source = pairs(e for e in polib.pofile(str(FOLDER / "django.po")) if not e.obsolete)
    compiled = pairs(polib.mofile(str(FOLDER / "django.mo")))
    assert source == compiled, "run: python locale/translate_zh_hans.py"


def test_the_scripts_words_come_translated():
    with translation.override("zh-hans"):
        words = ui_strings()
    english = ui_strings()
    untranslated = [key for key, text in words.items() if text == english[key] and key != "top_p"]
    assert untranslated == []
