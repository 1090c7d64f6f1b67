"""A `/v1/chat/completions` body, checked field by field into a CompletionRequest.

Shape errors (not JSON, not an object, a message without a role) answer 400; a value out of range
or not supported answers 422 and names the parameter. Unknown fields are ignored, as OpenAI and
DeepSeek do; fields we cannot honour (n > 1, tools, logprobs, JSON mode) are refused, not ignored.
"""
from __future__ import annotations

import json
import json.scanner
import math
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from chat.api import image_parts
from chat.conversations import image_budget
from chat.core.api_errors import ApiError
from chat.core.errors import ChatError
from chat.core.served_models import get_model
from chat.images.validation import ValidatedImage
from inference.registry import ModelSpec, UnknownModel

ROLES = ("system", "user", "assistant", "developer")  # "developer" is OpenAI's newer name for system
MAX_MESSAGES = 2000
MAX_STOP = 16  # DeepSeek's limit (OpenAI allows 4)
MAX_STOP_CHARS = 200
MAX_USER_CHARS = 256
# Objects and lists a body may hold and still be parsed by json's C parser (a few ms of it at most): 2,000
# messages of a few parts each are far below; bodies past it take the slower road that lets sockets run.
FAST_PARSE_CONTAINERS = 50_000


@dataclass
class ApiMessage:
    role: str  # system | user | assistant
    content: str
    images: list[ValidatedImage] = field(default_factory=list)  # set by read_images, not stored yet
    image_parts: Any = None  # the raw parts, read (and fetched) only once the request is admitted
    image_count: int = 0  # image parts among them, counted without reading one
    raw_images: list[bytes] = field(default_factory=list)  # their bytes, once read_image_headers read them


@dataclass
class CompletionRequest:
    spec: ModelSpec
    messages: list[ApiMessage]
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    user: str = ""
    image_headers_read: bool = False  # read_image_headers has run (and the budget held)
    declared_pixels: int = 0  # the pixels its images' headers declare, together (the per-minute budget charges them)

    def has_images(self) -> bool:
        return any(m.image_count for m in self.messages)


def _decode_json(raw: bytes) -> Any:
    """json.loads, except for a body with more objects and lists than any real request has: json's C parser
    holds the GIL for the whole parse, on a pool thread too (8 MB of `[]` kept every socket of the process
    waiting 0.5 s), while its pure-Python scanner lets the event loop run between steps."""
    if raw.count(b"{") + raw.count(b"[") <= FAST_PARSE_CONTAINERS:
        return json.loads(raw)
    decoder = json.JSONDecoder()
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    return decoder.decode(raw.decode(json.detect_encoding(raw)))


def parse_body(raw: bytes) -> dict[str, Any]:
    """The body as JSON: call it on a pool thread (chat/api/views.py), never on the event loop."""
    try:
        body = _decode_json(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "The request body is not valid JSON.", "invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", "invalid_request")
    return body


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _bad(param: str, message: str) -> ApiError:
    return ApiError(422, message, "invalid_parameter", param)


def _text(value: Any, where: str) -> str:
    if "\x00" in value:
        raise ApiError(400, f"{where} contains a NUL character.", "invalid_content", where)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, f"{where} is not valid Unicode.", "invalid_content", where) from None
    if len(value) > settings.MAX_PROMPT_CHARS:
        raise ApiError(400, f"{where} is {len(value)} characters long; the limit is {settings.MAX_PROMPT_CHARS}.",
                       "prompt_too_long", where)
    return value


def _text_parts(parts: list[Any], where: str) -> str:
    texts = []
    for index, part in enumerate(parts):
        if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
            raise ApiError(400, f"{where}[{index}] must be a text part.", "invalid_content", where)
        texts.append(part["text"])
    return "\n".join(texts)


def _message(raw: Any, index: int) -> ApiMessage:
    where = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise ApiError(400, f"{where} must be an object with a role and content.", "invalid_request", "messages")
    role = raw.get("role")
    if role == "tool" or raw.get("tool_calls"):
        raise _bad("messages", f"{where}: tool calls are not supported.")
    if role not in ROLES:
        raise ApiError(400, f"{where}.role must be one of system, user, assistant.", "invalid_request", "messages")
    role = "system" if role == "developer" else role
    content = raw.get("content")
    if isinstance(content, str):
        message = ApiMessage(role, content)
    elif isinstance(content, list) and role == "user":
        # Text now; image parts are decoded (or fetched) after the request is admitted.
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        message = ApiMessage(role, "\n".join(t for t in texts if isinstance(t, str)), image_parts=content,
                             image_count=sum(isinstance(p, dict) and p.get("type") == "image_url" for p in content))
    elif isinstance(content, list):
        message = ApiMessage(role, _text_parts(content, f"{where}.content"))
    else:
        raise ApiError(400, f"{where}.content must be a string or a list of parts.", "invalid_request", "messages")
    _text(message.content, f"{where}.content")
    if role == "user" and not message.content.strip() and not message.image_parts:
        raise ApiError(400, f"{where}.content is empty.", "empty_message", "messages")
    return message


def _model(body: dict[str, Any]) -> ModelSpec:
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "model is required: the name of one of the models at GET /v1/models.",
                       "invalid_request", "model")
    try:
        return get_model(name)
    except UnknownModel:
        raise ApiError(400, f"The model {name[:100]!r} does not exist; GET /v1/models lists those served here.",
                       "model_not_found", "model") from None


def _unsupported(body: dict[str, Any]) -> None:
    if body.get("n") not in (None, 1):
        raise _bad("n", "Only n=1 is supported.")
    if body.get("tools") or body.get("functions"):
        raise _bad("tools", "Tool and function calling are not supported.")
    if body.get("logprobs") not in (None, False):
        raise _bad("logprobs", "logprobs are not supported.")
    response_format = body.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise _bad("response_format", "Only the text response format is supported.")
    for name in ("frequency_penalty", "presence_penalty"):  # accepted and ignored, as DeepSeek's reasoner does
        value = body.get(name)
        if value is not None and not (_is_number(value) and -2 <= value <= 2):
            raise _bad(name, f"{name} must be a number from -2 to 2.")


def _sampling(body: dict[str, Any], spec: ModelSpec, request: CompletionRequest) -> None:
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is not None:
        if not _is_int(max_tokens) or max_tokens < 1:
            raise _bad("max_tokens", "max_tokens must be a positive integer.")
        # Above the operator's cap the answer is cut there (finish_reason "length"), as DeepSeek
        # does: its own samples ask for 4096 tokens whatever the model.
        request.max_tokens = min(max_tokens, spec.max_new_tokens)
    temperature = body.get("temperature")
    if temperature is not None:
        if not (_is_number(temperature) and 0 <= temperature <= 2):
            raise _bad("temperature", "temperature must be a number from 0 to 2.")
        request.temperature = float(temperature)
    top_p = body.get("top_p")
    if top_p is not None:
        if not (_is_number(top_p) and 0 <= top_p <= 1):
            raise _bad("top_p", "top_p must be a number from 0 to 1.")
        request.top_p = float(top_p)
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _bad("stop", "stop must be a string or a list of strings.")
        if len(stops) > MAX_STOP:
            raise _bad("stop", f"stop takes at most {MAX_STOP} strings.")
        if any(len(s) > MAX_STOP_CHARS or "\x00" in s for s in stops):
            raise _bad("stop", f"Each stop string is at most {MAX_STOP_CHARS} characters, without NUL.")
        request.stop = [s for s in stops if s]
    seed = body.get("seed")
    if seed is not None:
        if not _is_int(seed) or not -(2**63) <= seed < 2**63:
            raise _bad("seed", "seed must be a 64-bit integer.")
        request.seed = seed


def parse_request(body: dict[str, Any]) -> CompletionRequest:
    """Everything but the images (see read_images), which may cost a download."""
    spec = _model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list.", "invalid_request", "messages")
    if len(messages) > MAX_MESSAGES:
        raise ApiError(400, f"At most {MAX_MESSAGES} messages per request.", "invalid_request", "messages")
    parsed = [_message(m, i) for i, m in enumerate(messages)]
    if not any(m.role == "user" for m in parsed):
        raise ApiError(400, "messages must include a user message.", "invalid_request", "messages")
    if any(m.image_parts for m in parsed) and not spec.vision:
        raise ApiError(400, f"{spec.name} cannot see images; send text only or use a vision model.",
                       "vision_unsupported", "messages")
    request = CompletionRequest(spec, parsed)
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream", "stream must be true or false.")
    request.stream = bool(stream)
    options = body.get("stream_options")
    if options is not None:
        if not request.stream:
            raise _bad("stream_options", "stream_options is only allowed when stream is true.")
        if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
            raise _bad("stream_options", "stream_options must be an object like {\"include_usage\": true}.")
        request.include_usage = bool(options.get("include_usage", False))
    _unsupported(body)
    _sampling(body, spec, request)
    user = body.get("user")
    if user is not None:
        if not isinstance(user, str) or len(user) > MAX_USER_CHARS:
            raise _bad("user", f"user must be a string of at most {MAX_USER_CHARS} characters.")
        request.user = user
    return request


def read_image_headers(request: CompletionRequest) -> None:
    """The cheap half of read_images, done before anything costly: each image part's bytes (a `data:` URL
    decoded, an http(s) one fetched when the operator allows it), the size its header declares, then the
    per-request budget (count and pixels). No pixel is decoded here: a request with thousands of images,
    or with tiny images declaring huge sizes, is refused with its 400 at no cost."""
    if request.image_headers_read:
        return
    sizes: list[tuple[int, int]] = []
    unread = 0  # image parts past the budget's count: counted, never read
    for index, message in enumerate(request.messages):
        if message.image_parts is None:
            continue
        if len(sizes) > settings.IMAGES_PER_REQUEST:
            unread += message.image_count
            continue
        try:
            parsed = image_parts.parse_content(message.image_parts)
            message.content = _text(parsed.text, f"messages[{index}].content")
            sizes += image_parts.declared_sizes(parsed.images)
        except ChatError as exc:
            raise ApiError.from_chat_error(exc, f"messages[{index}].content") from None
        message.raw_images = parsed.images
        message.image_parts = None
    try:
        # The request is its own conversation: its images are all it holds. Unread ones count with no pixels.
        image_budget.check_image_budget(sizes + [(0, 0)] * unread)
    except ChatError as exc:
        raise ApiError.from_chat_error(exc, "messages") from None
    request.declared_pixels = sum(width * height for width, height in sizes)
    request.image_headers_read = True


def read_images(request: CompletionRequest) -> None:
    """Decode and validate the request's images as uploads are, in place (their headers and the budget first,
    read_image_headers); nothing is stored. A bad image answers its own 4xx here."""
    read_image_headers(request)
    for index, message in enumerate(request.messages):
        if not message.raw_images:
            continue
        try:
            message.images = image_parts.validate_images(message.raw_images)
        except ChatError as exc:
            raise ApiError.from_chat_error(exc, f"messages[{index}].content") from None
        message.raw_images = []
