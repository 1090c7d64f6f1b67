"""Rendering a message costs a bounded amount: huge answers show as escaped plain text with a notice, and the
render cache is bounded in bytes, however many huge messages pass through it."""
from __future__ import annotations

import pytest

from chat.conversations import rendering
from chat.conversations.rendering import RenderCache, render_markdown

NOTICE = "This message is too long to format; it is shown as plain text."


def code_answer(chars: int, tag: int = 0) -> str:
    """An answer of fenced Python, the shape that Pygments inflates most."""
    block = "```python\n" + f'def f{tag}(x): return {{"a": [x, x * 2, "<b>&amp;</b>"]}}  # comment\n' * 40 + "```\n\n"
    return (block * (chars // len(block) + 1))[:chars]


def test_a_200k_answer_of_code_is_plain_escaped_text_with_a_notice():
    text = code_answer(200_000)
    html = render_markdown(text)
    assert NOTICE in html
    assert '<span class="' not in html and "<script" not in html and "<b>" not in html  # no Pygments, escaped
    assert "&lt;b&gt;&amp;amp;&lt;/b&gt;" in html
    # Escaping, not formatting: a bounded multiple of the text (Markdown and Pygments made ~9× of it).
    assert len(html) < 1.5 * len(text)


def test_an_answer_under_the_text_cap_whose_html_is_past_its_cap_is_plain_too(settings):
    settings.RENDER_MAX_HTML_CHARS = 50_000
    text = code_answer(20_000, tag=1)
    assert len(text) <= settings.RENDER_MAX_CHARS
    html = render_markdown(text)
    assert NOTICE in html and '<span class="' not in html
    assert render_markdown(text) == html  # the second view (from the cache's mark) says the same


def test_answers_under_both_caps_are_formatted():
    html = render_markdown(code_answer(5_000, tag=2))
    assert NOTICE not in html and '<div class="code-block" data-lang="python">' in html


def test_the_notice_follows_the_readers_language(settings):
    from django.utils import translation

    text = code_answer(200_000, tag=3)
    with translation.override("zh-hans"):
        render_markdown(text)
    assert NOTICE in render_markdown(text)  # an earlier reader's language is not cached for the next


def test_the_render_cache_stays_under_its_bound_in_bytes_after_many_huge_messages(monkeypatch):
    bound = 2_000_000
    cache = RenderCache(bound)
    monkeypatch.setattr(rendering, "RENDER_CACHE", cache)
    total = 0
    for tag in range(30):
        total += len(render_markdown(code_answer(20_000, tag=100 + tag)))
        assert cache.bytes <= bound
    assert total > 2 * bound  # the messages rendered were far more than the cache keeps
    assert 0 < len(cache) < 30
    # The newest stays (least recently used goes first): asking again is a hit, not a new entry.
    entries, used = len(cache), cache.bytes
    render_markdown(code_answer(20_000, tag=129))
    assert (len(cache), cache.bytes) == (entries, used)


def test_the_cache_evicts_least_recently_used_first_and_skips_an_entry_past_its_bound():
    entry = "x" * 1000
    cache = RenderCache(3 * RenderCache.cost(entry))
    for key in (b"a", b"b", b"c"):
        cache.put(key, entry)
    assert cache.get(b"a") == entry  # now the most recently used
    cache.put(b"d", entry)
    assert cache.get(b"b") is None and cache.get(b"a") == entry and cache.get(b"d") == entry
    cache.put(b"huge", "y" * 10_000)
    assert cache.get(b"huge") is None and cache.bytes <= cache.max_bytes


@pytest.mark.parametrize("chars", [0, 1])
def test_short_and_empty_answers_still_render(chars):
    assert NOTICE not in render_markdown("a" * chars)
