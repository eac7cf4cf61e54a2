"""GBNF grammars for `response_format`: any JSON object, or JSON valid against a schema."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any


def json_object_grammar() -> str:
    """GBNF for any JSON object (response_format json_object)."""
    from llama_cpp.llama_grammar import JSON_GBNF

    return str(JSON_GBNF)


def json_schema_grammar(schema: dict[str, Any]) -> str:
    """GBNF whose every sentence is JSON valid against `schema`.

    Only local references ("#/...") are accepted: the embedded engine never
    fetches a URL found in a request, whatever the converter would allow.
    Raises ValueError for schemas the converter cannot express.
    """
    _check_refs(schema)
    return _schema_grammar(json.dumps(schema))


@lru_cache(maxsize=256)
def _schema_grammar(schema_json: str) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return str(json_schema_to_gbnf(schema_json))
    except (AssertionError, KeyError, TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"cannot turn the JSON schema into a grammar: {exc}") from exc


def _check_refs(node: Any) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if ref is not None and not (isinstance(ref, str) and ref.startswith("#")):
            raise ValueError(
                f"only local $ref values ('#/...') are supported, not {ref!r}: "
                "the embedded engine never fetches schemas"
            )
        for value in node.values():
            _check_refs(value)
    elif isinstance(node, list):
        for value in node:
            _check_refs(value)
