"""Failed requests grouped by error code and model: what went wrong, how often, one example.

The model is the name the user wrote in the request body (never the route that served
it, such as the catch-all `'*'`), so a summary reads in the user's own terms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

SAMPLE_CHARS = 500


@dataclass(slots=True)
class FailureGroup:
    code: str
    model: str | None
    count: int
    message: str

    def to_api(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "count": self.count,
            "message": self.message,
            "model": self.model,
        }


def _code_message(error: str | None) -> tuple[str, str]:
    try:
        detail = orjson.loads(error) if error else None
    except orjson.JSONDecodeError:
        detail = None
    if not isinstance(detail, dict):
        return "unknown_error", "The request failed without a recorded reason."
    code, message = detail.get("code"), detail.get("message")
    return (
        code if isinstance(code, str) and code else "unknown_error",
        message if isinstance(message, str) else "",
    )


def _model(body: bytes) -> str | None:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    model = parsed.get("model") if isinstance(parsed, dict) else None
    return model if isinstance(model, str) else None


class FailureSummary:
    def __init__(self) -> None:
        self._groups: dict[tuple[str, str | None], FailureGroup] = {}

    def add(self, error: str | None, body: bytes) -> None:
        code, message = _code_message(error)
        model = _model(body)
        group = self._groups.get((code, model))
        if group is None:
            self._groups[(code, model)] = FailureGroup(code, model, 1, message[:SAMPLE_CHARS])
        else:
            group.count += 1

    def groups(self) -> list[FailureGroup]:
        """Most frequent first; ties in code order, so the answer is stable."""
        return sorted(self._groups.values(), key=lambda g: (-g.count, g.code, g.model or ""))
