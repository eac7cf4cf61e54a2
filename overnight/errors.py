"""One exception root for everything a client can be told.

Each error carries the fields of the OpenAI error envelope
`{"error": {"message", "type", "param", "code"}}` and the HTTP status it maps
to; `api/errors.py` turns them into responses in one place.
"""

from __future__ import annotations

from typing import Any


class OvernightError(Exception):
    """Something went wrong in overnight."""

    status_code = 500
    type = "server_error"
    code: str | None = None
    retryable = False  # a 409 the client should send again later (the SDK retries 409s)

    def __init__(
        self,
        message: str | None = None,
        *,
        param: str | None = None,
        code: str | None = None,
        status_code: int | None = None,
    ) -> None:
        self.message = message or (self.__doc__ or "").strip()
        super().__init__(self.message)
        self.param = param
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code

    def envelope(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(OvernightError):
    """The request is not valid."""

    status_code = 400
    type = "invalid_request_error"
    code = "invalid_request"


class MissingParameter(InvalidRequest):
    """A required parameter is missing."""

    code = "missing_required_parameter"


class NotFound(OvernightError):
    """No such object."""

    status_code = 404
    type = "invalid_request_error"
    code: str | None = None  # OpenAI's 404s carry no code


class Unauthorized(OvernightError):
    """Incorrect API key provided."""

    status_code = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PayloadTooLarge(OvernightError):
    """The upload is larger than the limit."""

    status_code = 413
    type = "invalid_request_error"
    code = "file_too_large"


class Conflict(OvernightError):
    """The object is not in a state that allows this."""

    status_code = 409
    type = "invalid_request_error"
    code: str | None = None  # as OpenAI's "Cannot cancel a batch with status ..."


class TooManyRequests(OvernightError):
    """Too many requests or open batches for this project."""

    status_code = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class StorageUnavailable(OvernightError):
    """File storage cannot be reached right now; try again shortly."""

    status_code = 503
    type = "server_error"
    code = "storage_unavailable"


class ConfigError(OvernightError):
    """The configuration is not valid."""


class UpstreamError(OvernightError):
    """The model did not give a usable answer.

    The root of what backends raise; the engine turns each kind into an attempt's
    outcome (retry later, fail the line), so a client meets these only in error lines.
    """

    status_code = 502
