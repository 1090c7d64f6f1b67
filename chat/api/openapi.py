"""The OpenAPI document of /v1: our request schema (the subset we honour) and OpenAI's published
response schemas (chat/openai_chat_schemas.json, a copy of shared/conformance), which every body
and chunk we send must validate against."""
from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from chat.api.requests import MAX_MESSAGES, MAX_STOP, MAX_STOP_CHARS, MAX_USER_CHARS
from chat.core.served_models import all_models

SCHEMAS_FILE = Path(__file__).with_name("openai_chat_schemas.json")
ERROR_STATUSES = {
    "400": "The body is malformed, a message is refused by moderation, or it does not fit the context.",
    "401": "No API key, or one that is unknown or revoked.",
    "402": "The user's tokens for today are spent.",
    "413": "The body is larger than the server accepts.",
    "422": "A parameter is out of range or not supported (named in error.param).",
    "429": "Too many requests this minute, or too many at once.",
    "500": "The server or the model failed.",
    "503": "No worker serves this model right now.",
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}


@lru_cache(maxsize=1)
def openai_schemas() -> dict[str, Any]:
    return json.loads(SCHEMAS_FILE.read_text())["components"]["schemas"]


def _text_parts() -> dict[str, Any]:
    return {"type": "array", "items": {"type": "object", "required": ["type", "text"], "properties": {
        "type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}}}}


def _message(role: str, content: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["role", "content"], "properties": {
        "role": {"type": "string", "enum": [role]}, "content": content, "name": {"type": "string"}}}


def request_schema() -> dict[str, Any]:
    specs = list(all_models().values())
    image_part = {"type": "object", "required": ["type", "image_url"], "properties": {
        "type": {"type": "string", "enum": ["image_url"]},
        "image_url": {"type": "object", "required": ["url"], "properties": {
            "url": {"type": "string", "description": "A base64 data: URL (http(s) only if the operator allows)."},
            "detail": {"type": "string", "enum": ["auto", "low", "high"]}}}}}
    user_parts = {"type": "array", "items": {"oneOf": [_text_parts()["items"], image_part]}}
    return {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            "model": {"type": "string", "enum": [spec.name for spec in specs]},
            "messages": {"type": "array", "minItems": 1, "maxItems": MAX_MESSAGES, "items": {"oneOf": [
                _message("system", {"oneOf": [{"type": "string"}, _text_parts()]}),
                _message("user", {"oneOf": [{"type": "string"}, user_parts]}),
                _message("assistant", {"oneOf": [{"type": "string"}, _text_parts()]}),
            ]}},
            "stream": {"type": "boolean", "nullable": True},
            "stream_options": {"type": "object", "nullable": True, "description": "Only with stream: true.",
                               "properties": {"include_usage": {"type": "boolean"}}},
            "max_tokens": {"type": "integer", "minimum": 1, "nullable": True,
                           "description": "Capped at the model's own limit (the answer then ends with "
                                          "finish_reason length)."},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2, "nullable": True},
            "top_p": {"type": "number", "minimum": 0, "maximum": 1, "nullable": True},
            "stop": {"nullable": True, "oneOf": [
                {"type": "string", "maxLength": MAX_STOP_CHARS},
                {"type": "array", "maxItems": MAX_STOP, "items": {"type": "string", "maxLength": MAX_STOP_CHARS}}]},
            "seed": {"type": "integer", "nullable": True, "minimum": -(2**63), "maximum": 2**63 - 1},
            "user": {"type": "string", "maxLength": MAX_USER_CHARS},
            "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2, "nullable": True,
                                  "description": "Accepted and ignored."},
            "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2, "nullable": True,
                                 "description": "Accepted and ignored."},
        },
    }


def _errors(*statuses: str) -> dict[str, Any]:
    out = {}
    for status in statuses:
        out[status] = {"description": ERROR_STATUSES[status],
                       "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
        if status in ("402", "429", "503"):
            out[status]["headers"] = copy.deepcopy(RETRY_AFTER)
    return out


def openapi_document(base_url: str) -> dict[str, Any]:
    schemas = {**openai_schemas(), "DeepSeekWebChatCompletionRequest": request_schema()}
    return {
        # 3.0: OpenAI's schemas use `nullable`, which 3.0 defines.
        "openapi": "3.0.3",
        "info": {"title": "deepseek-web API", "version": "1",
                 "description": "OpenAI/DeepSeek-compatible chat completions served by this site's own models."},
        "servers": [{"url": base_url}],
        "security": [{"bearerAuth": []}],
        "paths": {
            "/chat/completions": {"post": {
                "operationId": "createChatCompletion",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/DeepSeekWebChatCompletionRequest"}}}},
                "responses": {
                    "200": {"description": "A completion (JSON), or with stream: true server-sent events of "
                                           "chat.completion.chunk objects ending with `data: [DONE]`.",
                            "content": {
                                "application/json": {"schema": {
                                    "$ref": "#/components/schemas/CreateChatCompletionResponse"}},
                                # Each SSE event's data: a chunk as JSON, or the final [DONE].
                                "text/event-stream": {"schema": {
                                    "type": "object", "required": ["data"], "properties": {"data": {"oneOf": [
                                        {"type": "string", "enum": ["[DONE]"]},
                                        {"type": "string", "contentMediaType": "application/json",
                                         "contentSchema": {
                                             "$ref": "#/components/schemas/CreateChatCompletionStreamResponse"}},
                                    ]}}}}}},
                    **_errors("400", "401", "402", "413", "422", "429", "500", "503"),
                },
            }},
            "/models": {"get": {
                "operationId": "listModels",
                "responses": {
                    "200": {"description": "The models served here.", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/ListModelsResponse"}}}},
                    **_errors("401"),
                },
            }},
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }
