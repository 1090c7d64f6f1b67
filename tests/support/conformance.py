"""Validates API bodies and stream chunks against OpenAI's published schemas (DESIGN.md).

The schemas are OpenAPI 3.x with `nullable: true`; JSON Schema reads that as "may also be null",
so it is rewritten into `anyOf [..., null]` before validating with a 2020-12 validator.
"""
from __future__ import annotations

from functools import cache
from typing import Any

import jsonschema_rs

from chat.api.openapi import openai_schemas


def _with_nulls(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_with_nulls(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {k: _with_nulls(v) for k, v in schema.items()}
    if schema.pop("nullable", False):
        return {"anyOf": [schema, {"type": "null"}]}
    return schema


@cache
def validator(name: str) -> jsonschema_rs.Draft202012Validator:
    components = {"schemas": {k: _with_nulls(v) for k, v in openai_schemas().items()}}
    return jsonschema_rs.Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": components})


def assert_conforms(name: str, instance: Any) -> None:
    errors = list(validator(name).iter_errors(instance))
    assert not errors, f"{name}: " + "; ".join(f"{list(e.instance_path)}: {e.message[:200]}" for e in errors[:5])
