"""What became of one attempt of one request, as the ledger records it: pure functions.

An answer (2xx or a final error status) is recorded as it came; a request that got
no answer is recorded with a coded error; a transient failure that used up its
attempts is recorded with the last answer the upstream gave, if any. Backoff between
attempts doubles with jitter, or follows the upstream's own `retry-after`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from overnight.backends.base import Response, TransientError
from overnight.backoff import jittered
from overnight.models import Usage
from overnight.store.base import Claimed, Outcome, error_json

MAX_MESSAGE = 2000


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before attempt `attempt + 1`."""
        if retry_after is not None:
            return min(self.max_delay * 5, retry_after + random.uniform(0, 0.1))
        return jittered(attempt, self.base_delay, self.max_delay)


def answer_error(response: Response) -> str:
    """`{code, message}` for a line the model answered with an error status.

    OpenAI leaves `error` null on such lines and puts the answer in `response`; clients
    that read `error` for every failed line would see nothing, so it is filled too
    (no SDK type describes these lines; see docs/compatibility.md).
    """
    detail = response.body.get("error") if isinstance(response.body, dict) else None
    code: Any = None
    message: Any = None
    if isinstance(detail, dict):
        code = detail.get("code") or detail.get("type")
        message = detail.get("message")
    elif isinstance(detail, str):
        message = detail
    if not isinstance(code, str) or not code:
        code = f"http_{response.status_code}"
    if not isinstance(message, str) or not message:
        message = f"The model answered HTTP {response.status_code}."
    return error_json(code[:100], message[:MAX_MESSAGE])


def answered(req: Claimed, batch_seq: int, response: Response) -> Outcome:
    ok = 200 <= response.status_code < 300
    return Outcome(
        req.id,
        batch_seq,
        ok,
        response.status_code,
        response.compact_body(),
        None if ok else answer_error(response),
        response.request_id or None,
        req.attempts,
        Usage.from_body(response.body) if ok else Usage(),
    )


def no_answer(req: Claimed, batch_seq: int, code: str, message: str) -> Outcome:
    return Outcome(
        req.id, batch_seq, False, None, None, error_json(code, message), None, req.attempts, Usage()
    )


def given_up(req: Claimed, batch_seq: int, exc: TransientError) -> Outcome:
    if exc.response is not None:
        return answered(req, batch_seq, exc.response)
    message = f"{exc.message} Gave up after {req.attempts} attempts."
    return no_answer(req, batch_seq, exc.code, message)
