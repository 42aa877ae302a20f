"""A request's structured-output constraint, as vLLM's OpenAI server reads it: `response_format`
(json_object, json_schema; text = none), vLLM's `structured_outputs` (json, regex, choice,
grammar, json_object) and its older `guided_json` / `guided_regex` / `guided_choice` /
`guided_grammar` fields. At most one constraint per request; InvalidArgument otherwise."""
from __future__ import annotations

import json
from typing import Any

from flying_core.errors import InvalidArgument
from flying_core.types import StructuredSpec

GUIDED = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
          "guided_grammar": "grammar"}
_KINDS = {"json": "json_schema", "regex": "regex", "choice": "choice", "grammar": "grammar"}


def _schema(value: Any, where: str) -> str:
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            raise InvalidArgument(f"{where}: not valid JSON") from None
        return value
    if isinstance(value, dict):
        return json.dumps(value)
    raise InvalidArgument(f"{where}: expected a JSON schema object")


def _from_response_format(rf: dict) -> StructuredSpec | None:
    kind = rf.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return StructuredSpec("json_object")
    if kind == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict) or "schema" not in js:
            raise InvalidArgument("response_format: type 'json_schema' needs "
                                  "json_schema.schema")
        return StructuredSpec("json_schema", _schema(js["schema"], "response_format"))
    raise InvalidArgument(f"response_format type {kind!r} is not supported "
                          "(text, json_object, json_schema)")


def _from_structured(so: dict, where: str) -> StructuredSpec | None:
    set_ = {k: v for k, v in so.items() if v not in (None, False)}
    if set_.pop("json_object", None):
        if set_.keys() & _KINDS.keys():
            raise InvalidArgument(f"{where}: give one constraint")
        return StructuredSpec("json_object")
    unknown = set_.keys() - _KINDS.keys()
    if unknown:
        raise InvalidArgument(f"{where}: {', '.join(sorted(unknown))} not supported "
                              f"({', '.join(['json_object', *_KINDS])})")
    if len(set_) != 1:
        raise InvalidArgument(f"{where}: give exactly one of json, regex, choice, grammar")
    (key, value), = set_.items()
    if key == "json":
        return StructuredSpec("json_schema", _schema(value, f"{where}.json"))
    if key == "choice":
        if not isinstance(value, list) or not value or not all(
                isinstance(c, str) for c in value):
            raise InvalidArgument(f"{where}.choice: expected a non-empty list of strings")
        return StructuredSpec("choice", json.dumps(value))
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{where}.{key}: expected a non-empty string")
    return StructuredSpec(_KINDS[key], value)


def structured_spec(response_format: dict | None, structured_outputs: dict | None,
                    extra: dict[str, Any] | None) -> StructuredSpec | None:
    """The constraint, and the guided_* fields popped from `extra` (the body's undeclared
    fields), so they are not reported as unknown."""
    guided = {GUIDED[k]: extra.pop(k) for k in list(extra or {}) if k in GUIDED}
    specs = [s for s in (
        _from_response_format(response_format) if response_format else None,
        _from_structured(structured_outputs, "structured_outputs") if structured_outputs
        else None,
        _from_structured(guided, "guided_*") if any(v is not None for v in guided.values())
        else None) if s is not None]
    if len(specs) > 1:
        raise InvalidArgument("give one structured-output constraint (response_format, "
                              "structured_outputs or guided_*)")
    return specs[0] if specs else None
