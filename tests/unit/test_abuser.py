"""The resilience suite's abusive user (chat/devtools/resilience/abuser.py): its payloads have the shapes of
issue 16's attacks, the tally tells refusals from server errors, and the memory guard stops a process that
grows past its limit. (The scenario itself runs the whole stack: tests/system/test_resilience.py.)"""
from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid

from PIL import Image

from chat.conversations import exports
from chat.core.redis_server import free_port
from chat.devtools.resilience import scenarios
from chat.devtools.resilience.abuser import (
    AbuserProcess,
    MemoryGuard,
    Sizes,
    Tally,
    Target,
    code_import,
    empty_objects_body,
    image_history,
    solid_png,
    tiny_png_of_huge_size,
    tree_rss,
)


def test_it_is_a_scenario_of_the_quick_suite_too():
    assert scenarios.abusive_user in scenarios.SCENARIOS
    assert scenarios.abusive_user not in scenarios.NOT_QUICK
    assert scenarios.QUICK_ABUSE.sockets < scenarios.FULL_ABUSE.sockets


def test_its_tiny_png_declares_a_huge_size():
    raw = tiny_png_of_huge_size()
    assert len(raw) < 10_000
    assert Image.open(io.BytesIO(raw)).size == (6000, 6000)  # ~108 MB as RGB


def test_its_solid_png_is_40_megapixels_in_a_small_file():
    raw = solid_png()
    image = Image.open(io.BytesIO(raw))
    assert image.size[0] * image.size[1] == 40_000_000 and len(raw) < 300_000


def test_its_image_history_puts_every_image_in_earlier_questions_within_the_per_message_cap():
    body = image_history("deepseek-vl", b"png", images=10, per_message=4)
    users = [m for m in body["messages"] if m["role"] == "user"]
    parts = [p for m in users for p in m["content"] if p["type"] == "image_url"]
    assert len(parts) == 10 and all(len(m["content"]) - 1 <= 4 for m in users)
    assert body["messages"][-1]["role"] == "user"


def test_its_huge_body_is_json_of_empty_objects_of_the_size_asked():
    raw = empty_objects_body("deepseek-chat", 1_000_000)
    assert 999_000 < len(raw) <= 1_000_000
    assert set(map(json.dumps, json.loads(raw)["messages"])) == {"{}"}


def test_its_import_holds_answers_of_the_longest_importable_size_full_of_code():
    data = json.loads(code_import(answers=3))
    answers = [m["content"] for m in data["messages"] if m["role"] == "assistant"]
    assert data["format"] == exports.EXPORT_FORMAT and data["version"] == exports.EXPORT_VERSION
    assert [len(a) for a in answers] == [200_000] * 3 and all(a.count("```") > 100 for a in answers)
    assert len(code_import(answers=scenarios.FULL_ABUSE.import_answers)) <= exports.IMPORT_MAX_BYTES


def test_the_tally_tells_server_errors_from_refusals():
    tally = Tally()
    for code in ("http 400", "http 413", "http 429", "close 4429", "http 500", "close 1011", "http 201"):
        tally.got("attack", code)
    assert tally.server_errors() == {"attack http 500": 1, "attack close 1011": 1}
    assert tally.summary()["attack"]["http 400"] == 1


def test_the_memory_guard_kills_a_process_past_its_limit_and_only_that_one():
    grows = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(300 * 2**20); time.sleep(60)"],
                             start_new_session=True)
    stays = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        with MemoryGuard({"grows": grows.pid, "stays": stays.pid}, limit=200 * 2**20) as guard:
            grows.wait(30)
        assert list(guard.killed) == ["grows"] and guard.killed["grows"] > 200 * 2**20
        assert grows.returncode == -9 and stays.poll() is None
        assert 0 < guard.peaks["stays"] < 200 * 2**20
    finally:
        for process in (grows, stays):
            process.kill()
            process.wait(5)
    assert tree_rss(stays.pid) == 0  # gone: nothing to count


def test_the_abuser_runs_in_its_own_process_and_reports_what_it_got_when_halted():
    nobody = free_port()  # nothing listens: every attack is answered by a refused connection
    sizes = Sizes(vision_images=2, import_answers=1, api_images=1, upload_loops=1, body_bytes=10_000, sockets=2)
    abuser = AbuserProcess(Target([nobody], "sessionid=x", "sk-x", str(uuid.uuid4()), "deepseek-vl",
                                  "deepseek-chat"), sizes)
    abuser.start()
    try:
        assert abuser.unanswered(60) == []
    finally:
        report = abuser.halt(30)
    assert report is not None and report["crashes"] == [] and report["server_errors"] == {}
    assert set(report["got"]) >= {"1 vision history", "2 import", "3 api images", "4 huge body", "8 sockets"}
    assert report["got"]["2 resume flood"] == {"nothing imported to resume": 1}
    assert report["sockets_kept"] == 0 and report["imports_kept"] == 0


def test_the_abuser_can_run_some_attacks_alone():
    sizes = Sizes(import_answers=1, body_bytes=10_000, only=("4 huge body",))
    abuser = AbuserProcess(Target([free_port()], "sessionid=x", "sk-x", str(uuid.uuid4()), "deepseek-vl",
                                  "deepseek-chat"), sizes)
    abuser.start()
    try:
        assert abuser.unanswered(60) == []
    finally:
        report = abuser.halt(30)
    assert report is not None and list(report["got"]) == ["4 huge body"]
