"""The vendors' words for a batch that fails validation: OpenAI's and Azure's codes and messages.

A batch remembers which API created it (`/v1/...` is OpenAI, `/openai/...` is Azure)
and is failed in that vendor's words. OpenAI's codes and messages are the ones
recorded against the live API in public test suites; Azure's are the codes and the
definitions of its batch troubleshooting page. docs/compatibility.md gives the source
of each; where a vendor's wording is not known, both use the other's.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from overnight.models import BatchError


class Dialect(StrEnum):
    OPENAI = "openai"
    AZURE = "azure"


# kind -> (OpenAI code, message), (Azure code, message); messages are str.format templates.
_WORDS: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "missing_field": (
        ("missing_required_parameter", "Missing required parameter: '{param}'."),
        ("invalid_request", "Missing required parameter: '{param}'."),
    ),
    "invalid_json": (
        ("invalid_json_line", "This line is not parseable as valid JSON."),
        (
            "invalid_json_line",
            "This line wasn't able to be parsed as valid json. Please ensure no typos, proper "
            "opening and closing brackets, and quotes as per JSON standard.",
        ),
    ),
    "url_mismatch": (
        ("invalid_url", "The URL provided for this request does not match the batch endpoint."),
        (
            "url_mismatch",
            "The URL specified in the input file doesn't match the expected endpoint URL "
            "{endpoint!r}.",
        ),
    ),
    "model_not_found": (
        ("model_not_found", "The provided model {model!r} is not supported by the Batch API."),
        (
            "model_not_found",
            "The model deployment name {model!r} specified in the model property of the input "
            "file wasn't found.",
        ),
    ),
    "model_mismatch": (
        (
            "model_mismatch",
            "The model {model!r} of this request does not match the model {first!r} of line "
            "{first_line}; a batch file holds requests for one model.",
        ),
        (
            "model_mismatch",
            "The model deployment name {model!r} specified in the model property of this "
            "request doesn't match the rest of the file ({first!r} on line {first_line}).",
        ),
    ),
    "duplicate_custom_id": (
        (
            "duplicate_custom_id",
            "The custom ID for this request is a duplicate of the custom ID in another "
            "request (line {first_line}).",
        ),
        (
            "duplicate_custom_id",
            "The custom ID for this request is a duplicate of the custom ID in another "
            "request (line {first_line}).",
        ),
    ),
    "empty_file": (
        (
            "empty_file",
            "The input file is empty. Please ensure that the batch contains at least one request.",
        ),
        (
            "empty_file",
            "The input file is empty. Please ensure that the batch contains at least one request.",
        ),
    ),
    "too_many_tasks": (
        (
            "too_many_tasks",
            "The number of requests in the input file exceeds the maximum allowed value of "
            "{limit:,}.",
        ),
        (
            "too_many_tasks",
            "The number of requests in the input file exceeds the maximum allowed value of "
            "{limit:,}. Please ensure your total requests are under {limit:,} and resubmit the "
            "job.",
        ),
    ),
    "streaming": (
        ("streaming_unsupported", "{label}: Streaming is not supported in the Batch API."),
        ("streaming_unsupported", "{label}: Streaming is not supported in the Batch API."),
    ),
    "file_not_found": (
        (
            "invalid_request",
            "Cannot find file {file_id}, or organization {project} does not have access to it.",
        ),
        (
            "invalid_request",
            "Cannot find file {file_id}, or organization {project} does not have access to it.",
        ),
    ),
}


def line_error(
    dialect: str,
    kind: str,
    line: int | None,
    param: str | None = None,
    **values: Any,
) -> BatchError:
    """A coded error in the words of the vendor whose API created the batch."""
    openai, azure = _WORDS[kind]
    code, template = azure if dialect == Dialect.AZURE else openai
    return BatchError(code, template.format(param=param, **values), param, line)


def invalid(message: str, line: int | None, param: str | None) -> BatchError:
    """A line whose shape is wrong: `invalid_request` in both vendors' words."""
    return BatchError("invalid_request", message, param, line)
