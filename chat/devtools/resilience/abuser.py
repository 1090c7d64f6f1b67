"""One signed-in user attacking the site's shared resources at once (issue 16, items 1–4 and 8), for the
resilience suite's "abusive user" scenario: the payloads, the attack loops, what the site answered each,
and a memory guard that keeps an unhardened site from taking this machine down with it.

Every attack is a closed loop (its next request goes once the last one is answered), so the abuser
works as fast as the site answers it: cheap refusals mean many of them, expensive work fewer.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import multiprocessing
import os
import queue
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets

# ---- payloads (built in memory; sizes in the docstrings are what the server sees) -----------------------


def tiny_png_of_huge_size(side: int = 6000) -> bytes:
    """A 1-bit PNG of side × side pixels: ~5 KB on the wire for 6000, ~108 MB once decoded as RGB."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("1", (side, side)).save(out, "PNG", optimize=True)
    return out.getvalue()


def solid_png(width: int = 8000, height: int = 5000) -> bytes:
    """One colour over width × height pixels (40 MP by default, the upload cap): ~120 KB, ~0.5 GB while processed."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 90)).save(out, "PNG", compress_level=9)
    return out.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image_history(model: str, png: bytes, images: int, per_message: int = 4) -> dict[str, Any]:
    """A /v1 request whose history holds `images` copies of `png`, `per_message` to a user turn (the per-message
    cap), each turn answered, so the whole branch of earlier questions carries images."""
    url = data_url(png)
    messages: list[dict[str, Any]] = []
    for turn in range(0, images, per_message):
        parts = [{"type": "image_url", "image_url": {"url": url}} for _ in range(min(per_message, images - turn))]
        messages += [{"role": "user", "content": [{"type": "text", "text": f"What is in picture {turn}?"}, *parts]},
                     {"role": "assistant", "content": "A picture."}]
    messages[-1:] = []  # end on the last question
    return {"model": model, "max_tokens": 8, "messages": messages}


def empty_objects_body(model: str, size: int = 63 * 1024 * 1024) -> bytes:
    """A /v1 body of about `size` bytes whose messages are empty objects: cheap to send, costly to parse."""
    head, tail = f'{{"model": "{model}", "messages": ['.encode(), b"{}]}"
    return head + b"{}," * ((size - len(head) - len(tail)) // 3) + tail


def code_answer(index: int, chars: int = 200_000) -> str:
    """An answer of exactly `chars` characters of fenced Python (what Pygments inflates most)."""
    block, lines = [f"```python\n# answer {index}\n"], 0
    size = len(block[0])
    closing = "```\n"
    while True:
        line = f"def f_{index}_{lines}(x, y={lines}):\n    return [x * y + {lines} for _ in range(10)]\n"
        if lines and lines % 40 == 0:
            line = "```\n\n```python\n" + line
        if size + len(line) + len(closing) > chars:
            break
        block.append(line)
        size += len(line)
        lines += 1
    block.append(closing)
    text = "".join(block)
    return text + "#" * (chars - len(text))


def code_import(answers: int, chars: int = 200_000, model: str = "deepseek-chat") -> bytes:
    """A conversation export (the import's format) of `answers` question/answer pairs, each answer `chars` long."""
    messages = []
    for index in range(answers):
        messages += [{"role": "user", "content": f"Write code {index}"},
                     {"role": "assistant", "content": code_answer(index, chars), "status": "done"}]
    return json.dumps({"format": "deepseek-web.conversation", "version": 1, "title": "Lots of code",
                       "model": model, "messages": messages}).encode()


# ---- what the site answered -------------------------------------------------------------------------------
@dataclass
class Tally:
    """Per attack: how many requests went out, and what came back (an HTTP status, a socket close code, an
    error frame's code), so the report says whether each was refused."""

    sent: Counter = field(default_factory=Counter)
    answered: dict[str, Counter] = field(default_factory=dict)

    def went(self, attack: str) -> None:
        self.sent[attack] += 1

    def got(self, attack: str, what: str | int) -> None:
        self.answered.setdefault(attack, Counter())[str(what)] += 1

    def summary(self) -> dict[str, dict[str, int]]:
        return {attack: dict(sorted(codes.items())) for attack, codes in sorted(self.answered.items())}

    def server_errors(self) -> dict[str, int]:
        """Answers that were the server failing (a 5xx, a socket closed as an internal error): never a refusal."""
        return {f"{attack} {code}": n for attack, codes in self.answered.items() for code, n in codes.items()
                if re.fullmatch(r"(http |close )?(5\d\d|1011)", code)}


def _http(response: httpx.Response) -> str:
    return f"http {response.status_code}"


# ---- the attacks ------------------------------------------------------------------------------------------
@dataclass
class Sizes:
    """How hard the abuser pushes; bounded so an unhardened site costs this machine at most what the
    memory guard allows (a 6000² image is ~108 MB decoded: 48 of them, ~5 GB, trip a 4 GB guard)."""

    vision_images: int = 48  # item 1: tiny PNGs of huge declared size in one request's history
    import_answers: int = 20  # item 2: 200,000-character answers per imported conversation (5 MB file cap)
    api_images: int = 16  # item 3: 40 MP PNGs in one /v1 request
    upload_loops: int = 2  # item 3: uploads of a 40 MP PNG in flight at once
    body_bytes: int = 63 * 1024 * 1024  # item 4
    sockets: int = 300  # item 8: sockets of one session
    resume_burst: int = 20  # item 2: resume frames sent before reading the answers
    only: tuple[str, ...] = ()  # some of ATTACKS alone (to find which one costs the others most); () = all


ATTACKS = ("1 vision history", "2 import", "2 resume flood", "3 api images", "3 uploads", "4 huge body", "8 sockets")


@dataclass(frozen=True)
class Target:
    """Who the abuser is and where the site listens: all it needs (no database, no Django)."""

    ports: list[int]
    cookie: str  # the session's
    key: str  # an API key of the same user
    conversation_id: str  # one of the user's conversations, for the sockets
    vision_model: str
    chat_model: str


class Abuser:
    """One user's attacks, each in its own loop until `stop` is set; runs in the abuser's own process
    (AbuserProcess). `answered` says which attacks have had their first answer (or refusal): once all have,
    the site is under the whole load."""

    def __init__(self, target: Target, sizes: Sizes, stop: Any, answered: dict[str, Any], timeout: float = 120):
        self.ports, self.cookie, self.key = target.ports, target.cookie, target.key
        self.conversation_id, self.vision_model, self.chat_model = (target.conversation_id, target.vision_model,
                                                                    target.chat_model)
        self.sizes, self.stop, self.answered, self.timeout = sizes, stop, answered, timeout
        self.tally = Tally()
        self.imported: list[str] = []  # conversation ids from successful imports
        self.sockets: list[Any] = []
        self.crashes: list[str] = []  # attacks that raised (the suite's fault, reported)
        self._answers: dict[str, list[str]] = {}  # an imported conversation's answer ids
        # A made-up CSRF secret, sent as the cookie and the header (Django accepts an unmasked secret).
        self.csrf = "abuser" + "0" * 26
        self._tiny = tiny_png_of_huge_size()
        self._solid = solid_png()

    def _base(self, index: int = 0) -> str:
        return f"http://127.0.0.1:{self.ports[index % len(self.ports)]}"

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=self.timeout, headers={
            "Cookie": f"{self.cookie}; csrftoken={self.csrf}", "X-CSRFToken": self.csrf})

    # -- the loop every attack runs in --
    async def _loop(self, attack: str, once: Callable[[httpx.AsyncClient, int], Awaitable[None]]) -> None:
        first = self.answered[attack]
        round_ = 0
        async with self._client() as client:
            while not self.stop.is_set():
                self.tally.went(attack)
                try:
                    await once(client, round_)
                except (httpx.HTTPError, OSError) as exc:  # refused by closing the connection, or timed out
                    self.tally.got(attack, type(exc).__name__)
                first.set()
                round_ += 1

    async def _vision_history(self, client: httpx.AsyncClient, round_: int) -> None:
        body = image_history(self.vision_model, self._tiny, self.sizes.vision_images)
        response = await client.post(self._base(round_) + "/v1/chat/completions", json=body,
                                     headers={"Authorization": f"Bearer {self.key}"})
        self.tally.got("1 vision history", _http(response))

    async def _api_images(self, client: httpx.AsyncClient, round_: int) -> None:
        body = image_history(self.vision_model, self._solid, self.sizes.api_images)
        response = await client.post(self._base(round_ + 1) + "/v1/chat/completions", json=body,
                                     headers={"Authorization": f"Bearer {self.key}"})
        self.tally.got("3 api images", _http(response))

    async def _upload(self, client: httpx.AsyncClient, round_: int) -> None:
        response = await client.post(self._base(round_) + "/attachments/",
                                     files={"file": ("solid.png", self._solid, "image/png")})
        self.tally.got("3 uploads", _http(response))

    async def _huge_body(self, client: httpx.AsyncClient, round_: int) -> None:
        response = await client.post(self._base(round_) + "/v1/chat/completions", content=self._body,
                                     headers={"Authorization": f"Bearer {self.key}",
                                              "Content-Type": "application/json"})
        self.tally.got("4 huge body", _http(response))

    async def _import_and_view(self, client: httpx.AsyncClient, round_: int) -> None:
        """Import a conversation of huge code answers, then view the newest imported page (every round), so
        an import limit leaves the views going on what was let in."""
        response = await client.post(self._base(round_) + "/c/import/",
                                     files={"file": ("code.json", self._import, "application/json")})
        self.tally.got("2 import", _http(response))
        found = re.search(r"/c/([0-9a-f-]{36})/", response.headers.get("location", ""))
        if response.status_code == 302 and found:
            self.imported.append(found.group(1))
        if self.imported:
            page = await client.get(self._base(round_ + 1) + f"/c/{self.imported[-1]}/")
            self.tally.got("2 page view", _http(page))

    async def _answers_of(self, conversation_id: str) -> list[str]:
        """The answers' ids of an imported conversation, from its JSON export (once)."""
        if conversation_id not in self._answers:
            async with self._client() as client:
                export = await client.get(self._base() + f"/c/{conversation_id}/export.json")
            export.raise_for_status()
            self._answers[conversation_id] = [m["id"] for m in export.json()["messages"] if m["role"] == "assistant"]
        return self._answers[conversation_id]

    async def _resume_flood(self) -> None:
        """`resume` frames for the imported huge answers, `resume_burst` at a time, on a socket of the imported
        conversation (reconnecting when the site closes it), reading every answer."""
        attack = "2 resume flood"
        first = self.answered[attack]
        await self._until(self.answered["2 import"])
        port = self.ports[0]
        while not self.stop.is_set():
            if not self.imported:  # every import refused: nothing of this size to resume
                self.tally.got(attack, "nothing imported to resume")
                first.set()
                return
            conversation_id = self.imported[-1]
            self.tally.went(attack)
            try:
                ids = await self._answers_of(conversation_id)
                async with websockets.connect(
                        f"ws://127.0.0.1:{port}/ws/chat/{conversation_id}/", max_size=None, open_timeout=10,
                        ping_interval=None,
                        additional_headers={"Cookie": self.cookie, "Origin": f"http://127.0.0.1:{port}"}) as ws:
                    while not self.stop.is_set():
                        for n in range(self.sizes.resume_burst):
                            await ws.send(json.dumps({"type": "resume", "message_id": ids[n % len(ids)],
                                                      "after_seq": 0}))
                        for _ in range(self.sizes.resume_burst):
                            frame = json.loads(await asyncio.wait_for(ws.recv(), self.timeout))
                            self.tally.got(attack, f"{frame['type']} {frame.get('code', '')}".strip())
                            if frame["type"] == "message":  # a finished answer: its done frame follows
                                await asyncio.wait_for(ws.recv(), self.timeout)
                        first.set()
            except websockets.ConnectionClosed as closed:
                self.tally.got(attack, f"close {closed.rcvd.code if closed.rcvd else 'none'}")
            except (OSError, TimeoutError, websockets.WebSocketException, httpx.HTTPError) as exc:
                self.tally.got(attack, type(exc).__name__)
            first.set()

    async def _socket_flood(self) -> None:
        """Open `sockets` sockets of the one session, and hold those the site keeps until `stop`. Whether it
        kept one is a state, not a wait: an unknown frame is answered by an open socket, and a refused one is
        closed (or never opened)."""
        attack = "8 sockets"
        first = self.answered[attack]
        await self._until(self.answered["2 resume flood"])  # its socket first, or the cap would keep it out

        async def one(index: int) -> None:
            port = self.ports[index % len(self.ports)]
            try:
                ws = await websockets.connect(
                    f"ws://127.0.0.1:{port}/ws/chat/{self.conversation_id}/", open_timeout=30, ping_interval=None,
                    additional_headers={"Cookie": self.cookie, "Origin": f"http://127.0.0.1:{port}"})
            except websockets.InvalidStatus as refused:
                self.tally.got(attack, f"http {refused.response.status_code}")
                return
            except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                self.tally.got(attack, type(exc).__name__)
                return
            try:
                await ws.send(json.dumps({"type": "probe"}))
                frame = json.loads(await asyncio.wait_for(ws.recv(), self.timeout))
                self.tally.got(attack, f"kept ({frame.get('code', frame['type'])})")
                self.sockets.append(ws)
            except websockets.ConnectionClosed as closed:
                self.tally.got(attack, f"close {closed.rcvd.code if closed.rcvd else 'none'}")
            except (OSError, TimeoutError) as exc:
                self.tally.got(attack, type(exc).__name__)
                await ws.close()

        batch = 50
        for start in range(0, self.sizes.sockets, batch):
            if self.stop.is_set():
                break
            self.tally.sent[attack] += min(batch, self.sizes.sockets - start)
            await asyncio.gather(*(one(i) for i in range(start, min(start + batch, self.sizes.sockets))))
        first.set()

    # -- running them all --
    async def _until(self, event: Any) -> None:
        """Wait for another attack's state (or `stop`): a thread's event, polled."""
        while not event.is_set() and not self.stop.is_set():
            await asyncio.sleep(0.05)

    async def main(self) -> None:
        self._body = await asyncio.to_thread(empty_objects_body, self.chat_model, self.sizes.body_bytes)
        self._import = await asyncio.to_thread(code_import, self.sizes.import_answers)
        attacks = {"1 vision history": [lambda: self._loop("1 vision history", self._vision_history)],
                   "2 import": [lambda: self._loop("2 import", self._import_and_view)],
                   "2 resume flood": [self._resume_flood], "3 api images": [lambda: self._loop("3 api images",
                                                                                                self._api_images)],
                   "3 uploads": [lambda: self._loop("3 uploads", self._upload)] * self.sizes.upload_loops,
                   "4 huge body": [lambda: self._loop("4 huge body", self._huge_body)],
                   "8 sockets": [self._socket_flood]}
        tasks = []
        for name, starts in attacks.items():
            if self.sizes.only and name not in self.sizes.only or not starts:
                self.answered[name].set()  # not one of this run's attacks
            else:
                tasks += [asyncio.create_task(start()) for start in starts]
        await asyncio.to_thread(self.stop.wait)  # until AbuserProcess.halt
        for task in tasks:  # requests in flight are dropped: the attack is over
            task.cancel()
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, Exception):
                self.crashes.append(repr(result)[:300])
        await asyncio.gather(*(ws.close() for ws in self.sockets), return_exceptions=True)

    def report(self) -> dict[str, Any]:
        return {"sent": dict(sorted(self.tally.sent.items())), "got": self.tally.summary(),
                "server_errors": self.tally.server_errors(), "imports_kept": len(self.imported),
                "sockets_kept": len(self.sockets), "crashes": self.crashes}


ABUSER_NICENESS = 10


def _abuse(target: Target, sizes: Sizes, stop: Any, answered: dict[str, Any], reports: Any) -> None:
    # On a machine of few cores the attacking client's own work (its requests, building and parsing megabytes)
    # would take CPU from the site like a second tenant: run it behind the site's processes, so what the
    # users see is mostly what the site spends on the attack (its CPU seconds are reported beside).
    os.nice(ABUSER_NICENESS)
    abuser = Abuser(target, sizes, stop, answered)
    try:
        asyncio.run(abuser.main())
    except Exception as exc:  # reported, not raised: the parent reads the report
        abuser.crashes.append(repr(exc)[:300])
    finally:
        reports.put({**abuser.report(), "cpu_s": round(time.process_time(), 1)})


class AbuserProcess:
    """The abuser in a process of its own: its work (building, sending and reading megabytes, parsing) takes
    no turn from the event loop (or the GIL) of the clients being measured, so what they see is the site's
    doing. Everything it shares with the scenario is a multiprocessing event or its final report."""

    def __init__(self, target: Target, sizes: Sizes) -> None:
        context = multiprocessing.get_context("spawn")  # nothing of this process (its Django, its loops) goes along
        self.stop = context.Event()
        self.answered = {attack: context.Event() for attack in ATTACKS}
        self._reports = context.Queue()
        self._process = context.Process(target=_abuse, name="abuser", daemon=True,
                                        args=(target, sizes, self.stop, self.answered, self._reports))

    def start(self) -> None:
        self._process.start()

    def unanswered(self, timeout: float) -> list[str]:
        """Wait (bounded) until every attack has been answered once, or the abuser ended; those that were not."""
        deadline = time.monotonic() + timeout
        for event in self.answered.values():
            while not event.wait(min(0.5, max(0.0, deadline - time.monotonic()))):
                if time.monotonic() >= deadline or not self._process.is_alive() or self.stop.is_set():
                    break
        return [attack for attack, event in self.answered.items() if not event.is_set()]

    def halt(self, timeout: float) -> dict[str, Any] | None:
        """End every attack (the held sockets closed); its report, or None when it did not end in `timeout`."""
        self.stop.set()
        try:
            report = self._reports.get(timeout=timeout)
        except queue.Empty:
            report = None
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        return report


# ---- the memory guard ------------------------------------------------------------------------------------
def tree_rss(pid: int) -> int:
    """Resident bytes of a process and its children (0 once it is gone)."""
    import psutil  # a dependency of accelerate's, not the site's (as in chat/devtools/stack_bench.py)

    try:
        process = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])
    except psutil.Error:
        return 0


class MemoryGuard:
    """Watches processes' resident memory from its own thread (so a busy event loop cannot delay it) and
    SIGKILLs the process group of any that passes `limit` bytes: an unhardened site must not take this
    machine down. Records each process's peak."""

    def __init__(self, processes: dict[str, int], limit: int, every: float = 0.05,
                 on_kill: Callable[[], object] = lambda: None) -> None:
        self.processes, self.limit, self.every, self.on_kill = processes, limit, every, on_kill
        self.peaks: dict[str, int] = dict.fromkeys(processes, 0)
        self.killed: dict[str, int] = {}  # name → the resident bytes it had
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="memory-guard", daemon=True)

    def __enter__(self) -> MemoryGuard:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._thread.join(5)

    def _watch(self) -> None:
        while not self._stopping.wait(self.every):
            for name, pid in self.processes.items():
                if name in self.killed:
                    continue
                rss = tree_rss(pid)
                self.peaks[name] = max(self.peaks[name], rss)
                if rss > self.limit:
                    self.killed[name] = rss
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
                    self.on_kill()


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process and its children have used so far (0 once it is gone)."""
    import psutil

    try:
        process = psutil.Process(pid)
        return sum(sum(p.cpu_times()[:2]) for p in [process, *process.children(recursive=True)])
    except psutil.Error:
        return 0.0


def mb(value: int) -> int:
    return round(value / 2**20)
