"""A JSON response rendered with orjson (fast, and strict: no NaN sneaks out)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse


class JSON(JSONResponse):
    """A JSONResponse (so the OpenAPI description knows its answers are JSON), via orjson."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
