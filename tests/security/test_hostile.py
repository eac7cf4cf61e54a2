"""A corpus of hostile inputs, each with the answer it must get.

Every case states the HTTP status and the `error.code` of the OpenAI envelope it must
get (code None: a success answer). Cases that upload a batch file also state how the
batch must end (status, first `errors.data` code). Around every case a canary batch of
another project runs; after the case, the server must still answer /healthz and an
authenticated call, and the canary must complete with every request answered.
The server log is checked for unhandled errors and leaked secrets at the end.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from .helpers import BLACKHOLE_MODEL, ENV_KEYS, UPSTREAM_SECRET, Secure, chat_line, jsonl

CANARY_LINES = 3
BOUNDARY = "hostileBoundary42"


@dataclass
class Ctx:
    secure: Secure
    good_file: str  # mallory's valid batch input
    notes_file: str  # mallory's user_data file
    completed: str  # mallory's batches in each terminal state
    failed: str
    cancelled: str
    canary_file: str

    @property
    def m(self) -> httpx.Client:
        return self.secure.client("mallory")

    def batches(self, body: bytes | str, content_type: str = "application/json") -> httpx.Response:
        return self.m.post("/v1/batches", content=body, headers={"content-type": content_type})

    def create(self, **fields: Any) -> httpx.Response:
        body = {
            "input_file_id": self.good_file,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        }
        body.update(fields)
        return self.m.post("/v1/batches", json=body)

    def multipart(
        self, parts: list[tuple[str, bytes]], *, close: bool = True, boundary: str = BOUNDARY
    ) -> httpx.Response:
        """Hand-built multipart: each part is (its header lines, its body)."""
        b = boundary.encode()
        body = b"".join(
            b"--" + b + b"\r\n" + h.encode("latin-1") + b"\r\n\r\n" + d + b"\r\n" for h, d in parts
        )
        if close:
            body += b"--" + b + b"--\r\n"
        ctype = f"multipart/form-data; boundary={boundary}"
        return self.m.post("/v1/files", content=body, headers={"content-type": ctype})

    def upload_as(
        self, filename: str, content: bytes = b"", purpose: str = "batch"
    ) -> httpx.Response:
        content = content or jsonl([chat_line("u1")])
        return self.multipart(
            [
                ('Content-Disposition: form-data; name="purpose"', purpose.encode()),
                (f'Content-Disposition: form-data; name="file"; filename="{filename}"', content),
            ]
        )

    def batch_of(self, content: bytes) -> httpx.Response:
        """Upload `content` as a batch file (must be accepted) and create a batch from it."""
        r = self.m.post(
            "/v1/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", content)}
        )
        assert r.status_code == 200, r.text
        return self.create(input_file_id=r.json()["id"])


Send = Callable[[Ctx], httpx.Response]
Check = Callable[[Ctx, httpx.Response], None]


@dataclass(frozen=True)
class Case:
    id: str
    send: Send
    status: int
    code: str | None
    batch: tuple[str, str | None] | None = None  # how a created batch must end
    check: Check | None = None


def file_part(name: str = "in.jsonl") -> tuple[str, bytes]:
    return (
        f'Content-Disposition: form-data; name="file"; filename="{name}"',
        jsonl([chat_line("x")]),
    )


PURPOSE = ('Content-Disposition: form-data; name="purpose"', b"batch")


def line(**overrides: Any) -> dict[str, Any]:
    doc = chat_line("c1")
    doc.update(overrides)
    return doc


def raw_line(text: str) -> bytes:
    return text.encode() + b"\n"


def _filename_is(expected: str) -> Check:
    def check(ctx: Ctx, r: httpx.Response) -> None:
        assert r.json()["filename"] == expected
        # The bytes are where overnight keeps them (under the data dir, by id), nowhere else.
        if "OVERNIGHT_STORAGE_URL" not in ctx.secure.store:
            stored = list((ctx.secure.data_dir / "files").rglob(r.json()["id"]))
            assert len(stored) == 1, stored
        assert not Path("/tmp/evil-overnight.jsonl").exists()
        content = ctx.m.get(f"/v1/files/{r.json()['id']}/content")
        assert content.status_code == 200
        assert not {"/", "\\", "\x00"} & set(content.headers["content-disposition"])

    return check


def _custom_id_survives(expected: str) -> Check:
    def check(ctx: Ctx, r: httpx.Response) -> None:
        b = ctx.secure.batch("mallory", r.json()["id"])
        out = ctx.m.get(f"/v1/files/{b['output_file_id']}/content").text
        assert [json.loads(x)["custom_id"] for x in out.splitlines()] == [expected]

    return check


def _metadata_is(expected: dict[str, str]) -> Check:
    def check(ctx: Ctx, r: httpx.Response) -> None:
        assert ctx.secure.batch("mallory", r.json()["id"])["metadata"] == expected

    return check


def _file_status_error(ctx: Ctx, r: httpx.Response) -> None:
    assert r.json()["status"] == "error" and r.json()["status_details"]


def _still_completed(ctx: Ctx, r: httpx.Response) -> None:
    assert r.headers.get("x-should-retry") == "false"  # the SDK would retry a 409 otherwise
    assert ctx.secure.batch("mallory", ctx.completed)["status"] == "completed"


def _flood(ctx: Ctx) -> httpx.Response:
    """Fill the project's open-batch quota (3 here) with batches that cannot finish."""
    flood = ctx.secure.client("flood")
    r = flood.post(
        "/v1/files",
        data={"purpose": "batch"},
        files={"file": ("f.jsonl", jsonl([chat_line("f", model=BLACKHOLE_MODEL)]))},
    )
    body = {
        "input_file_id": r.json()["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    opened = []
    for _ in range(3):
        created = flood.post("/v1/batches", json=body)
        assert created.status_code == 200, created.text
        opened.append(created.json()["id"])
    refused = flood.post("/v1/batches", json=body)
    for batch_id in opened:
        assert flood.post(f"/v1/batches/{batch_id}/cancel").status_code == 200
    for batch_id in opened:
        assert ctx.secure.wait("flood", batch_id)["status"] == "cancelled"
    return refused


def _chunks(total: int, piece: int = 64 * 1024) -> Any:
    yield b'{"metadata": {"k": "'
    for _ in range(total // piece):
        yield b"a" * piece
    yield b'"}}'


def _chunked_upload(total: int) -> Send:
    def send(ctx: Ctx) -> httpx.Response:
        def body() -> Any:
            yield (
                f"--{BOUNDARY}\r\n"
                'Content-Disposition: form-data; name="purpose"\r\n\r\n'
                f"batch\r\n--{BOUNDARY}\r\n"
                'Content-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n'
            ).encode()
            for _ in range(total // (64 * 1024)):
                yield b"x" * (64 * 1024)
            yield f"\r\n--{BOUNDARY}--\r\n".encode()

        ctype = f"multipart/form-data; boundary={BOUNDARY}"
        return ctx.m.post("/v1/files", content=body(), headers={"content-type": ctype})

    return send


def _auth(headers: dict[str, str], path: str = "/v1/files") -> Send:
    return lambda ctx: httpx.get(ctx.secure.url + path, headers=headers, timeout=20.0)


def _get(path: str) -> Send:
    return lambda ctx: ctx.m.get(path)


def _req(method: str, path: str, **kw: Any) -> Send:
    return lambda ctx: ctx.m.request(method, path, **kw)


DEEP = "[" * 100_000 + "]" * 100_000
NOT_FOUND, BAD, AUTH = None, "invalid_request", "invalid_api_key"  # OpenAI 404s: code null
VALUE = "invalid_value"
MISSING = "missing_required_parameter"

CASES: list[Case] = [
    # --- credentials ------------------------------------------------------------------
    Case("auth-none", _auth({}), 401, AUTH),
    Case("auth-empty-bearer", _auth({"authorization": "Bearer"}), 401, AUTH),
    Case("auth-basic", _auth({"authorization": "Basic bWFsbG9yeTpwdw=="}), 401, AUTH),
    Case("auth-wrong-bearer", _auth({"authorization": "Bearer sk-guess"}), 401, AUTH),
    Case(
        "auth-wrong-azure", _auth({"api-key": "sk-guess"}, "/openai/files?api-version=x"), 401, AUTH
    ),
    Case("auth-8kb-key", _auth({"authorization": "Bearer " + "k" * 8000}), 401, AUTH),
    Case(
        "auth-latin1-key",
        lambda ctx: httpx.get(
            ctx.secure.url + "/v1/files", headers=[(b"authorization", b"Bearer \xff\xfe\xfd")]
        ),
        401,
        AUTH,
    ),
    Case("auth-sql-key", _auth({"authorization": "Bearer ' OR '1'='1' --"}), 401, AUTH),
    Case(
        "auth-key-of-another-scheme",
        _auth({"authorization": f"Token {ENV_KEYS['alpha']}"}),
        401,
        AUTH,
    ),
    # --- ids with path, SQL and odd characters --------------------------------------
    Case("id-path-traversal", _get("/v1/files/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd"), 404, NOT_FOUND),
    Case("id-dotdot-content", _get("/v1/files/../../etc/passwd/content"), 404, NOT_FOUND),
    Case("id-backslashes", _get("/v1/files/..%5C..%5Cwindows%5Cwin.ini"), 404, NOT_FOUND),
    Case("id-sql-quote", _get("/v1/files/file-'%20OR%20'1'%3D'1"), 404, NOT_FOUND),
    Case("id-sql-batch", _get("/v1/batches/batch_x;DROP%20TABLE%20batches;--"), 404, NOT_FOUND),
    Case("id-nul", _get("/v1/files/file-%00"), 404, NOT_FOUND),
    Case("id-invalid-utf8", _get("/v1/files/%FF%FE%FD"), 404, NOT_FOUND),
    Case("id-1000-chars", _get("/v1/batches/" + "b" * 1000), 400, VALUE),
    Case("id-1000-chars-batch", _get("/v1/batches/batch_" + "b" * 1000), 404, NOT_FOUND),
    Case("id-wildcard-delete", _req("DELETE", "/v1/files/%25"), 404, NOT_FOUND),
    Case("id-nul-cancel", _req("POST", "/v1/batches/batch_%00/cancel"), 404, NOT_FOUND),
    Case("id-like-pattern-content", _get("/v1/files/file-%25%25/content"), 404, NOT_FOUND),
    Case("unknown-route", _get("/v1/admin/keys"), 404, NOT_FOUND),
    Case("wrong-method", _req("PUT", "/v1/files"), 405, "method_not_allowed"),
    Case("cancel-by-get", _get("/v1/batches/batch_x/cancel"), 405, "method_not_allowed"),
    # --- list parameters ------------------------------------------------------------
    Case("limit-negative", _get("/v1/files?limit=-1"), 400, BAD),
    Case("limit-zero", _get("/v1/batches?limit=0"), 400, BAD),
    Case("limit-huge", _get("/v1/files?limit=100000000000000000000000000"), 400, BAD),
    Case("limit-float", _get("/v1/files?limit=1e3"), 400, BAD),
    Case("limit-nan", _get("/v1/batches?limit=NaN"), 400, BAD),
    Case("limit-over-max", _get("/v1/batches?limit=101"), 400, BAD),
    Case("order-injection", _get("/v1/files?order=desc;DROP%20TABLE%20files"), 400, BAD),
    Case("after-sql", _get("/v1/files?after=%27%20OR%201%3D1%20--"), 200, None),
    Case("after-nul", _get("/v1/batches?after=batch_%00"), 200, None),
    Case("after-too-long", _get("/v1/files?after=" + "f" * 300), 400, BAD),
    Case("purpose-nul", _get("/v1/files?purpose=%00"), 200, None),
    Case("purpose-5kb", _get("/v1/files?purpose=" + "p" * 5000), 400, BAD),
    # --- create batch: the JSON body ------------------------------------------------
    Case("json-not-json", lambda c: c.batches("{not json"), 400, BAD),
    Case("json-invalid-utf8", lambda c: c.batches(b'{"input_file_id": "\xff\xfe"}'), 400, BAD),
    Case("json-array", lambda c: c.batches("[]"), 400, BAD),
    Case("json-null", lambda c: c.batches("null"), 400, BAD),
    Case("json-empty-body", lambda c: c.batches(""), 400, MISSING),
    Case("json-deeply-nested", lambda c: c.batches('{"metadata": ' + DEEP + "}"), 400, BAD),
    Case(
        "json-nan",
        lambda c: c.batches(
            '{"input_file_id": NaN, "endpoint": "/v1/chat/completions", "completion_window": "24h"}'
        ),
        400,
        BAD,
    ),
    Case(
        "json-infinity",
        lambda c: c.batches(
            '{"input_file_id": "' + c.good_file + '", "endpoint": "/v1/chat/completions", '
            '"completion_window": "24h", "output_expires_after": '
            '{"anchor": "created_at", "seconds": Infinity}}'
        ),
        400,
        BAD,
    ),
    Case(
        "json-duplicate-keys",
        lambda c: c.batches(
            '{"input_file_id": "' + c.good_file + '", "endpoint": "/v1/chat/completions", '
            '"completion_window": "24h", "completion_window": "48h"}'
        ),
        400,
        VALUE,
    ),
    Case(
        "json-2mb-body",
        lambda c: c.batches(b'{"x": "' + b"a" * 2_000_000 + b'"}'),
        413,
        "request_too_large",
    ),
    Case(
        "json-3mb-chunked",
        lambda c: c.m.post(
            "/v1/batches", content=_chunks(3_000_000), headers={"content-type": "application/json"}
        ),
        413,
        "request_too_large",
    ),
    Case(
        "json-text-plain",
        lambda c: c.batches(json.dumps({"input_file_id": c.good_file}), "text/plain"),
        400,
        BAD,
    ),
    Case(
        "json-lone-surrogate-id",
        lambda c: c.batches(
            '{"input_file_id": "\\ud800", "endpoint": "/v1/chat/completions", '
            '"completion_window": "24h"}'
        ),
        400,
        BAD,
    ),
    Case(
        "json-lone-surrogate-metadata",
        lambda c: c.batches(
            '{"input_file_id": "' + c.good_file + '", "endpoint": "/v1/chat/completions", '
            '"completion_window": "24h", "metadata": {"\\udfff": "v"}}'
        ),
        400,
        BAD,
    ),
    Case(
        "metadata-17-pairs",
        lambda c: c.create(metadata={f"k{i}": "v" for i in range(17)}),
        400,
        BAD,
    ),
    Case("metadata-long-key", lambda c: c.create(metadata={"k" * 65: "v"}), 400, BAD),
    Case("metadata-long-value", lambda c: c.create(metadata={"k": "v" * 513}), 400, BAD),
    Case("metadata-nested", lambda c: c.create(metadata={"k": {"nested": ["x"]}}), 400, BAD),
    Case(
        "metadata-nul-and-markup",
        lambda c: c.create(metadata={"k": "a\x00<script>"}),
        200,
        None,
        ("completed", None),
        _metadata_is({"k": "a\x00<script>"}),
    ),
    Case(
        "input-file-sql",
        lambda c: c.create(input_file_id="file-' OR 1=1; --"),
        400,
        VALUE,
    ),
    Case(
        "input-file-path",
        lambda c: c.create(input_file_id="../../data/overnight.db"),
        400,
        VALUE,
    ),
    Case(
        "input-file-unknown",
        lambda c: c.create(input_file_id="file-doesnotexist"),
        200,
        None,
        ("failed", "invalid_request"),  # OpenAI: created, then "Cannot find file ..."
    ),
    Case("input-file-10kb", lambda c: c.create(input_file_id="f" * 10_000), 400, BAD),
    Case("input-file-number", lambda c: c.create(input_file_id=7), 400, BAD),
    Case("input-file-not-batch", lambda c: c.create(input_file_id=c.notes_file), 400, BAD),
    Case(
        "endpoint-url",
        lambda c: c.create(endpoint="http://169.254.169.254/latest/meta-data"),
        400,
        VALUE,
    ),
    Case("endpoint-traversal", lambda c: c.create(endpoint="/v1/../../admin"), 400, VALUE),
    Case("window-nul", lambda c: c.create(completion_window="24h\x00"), 400, VALUE),
    Case(
        "expiry-negative",
        lambda c: c.create(output_expires_after={"anchor": "created_at", "seconds": -1}),
        400,
        BAD,
    ),
    Case(
        "unknown-fields",
        lambda c: c.create(**{f"x{i}": i for i in range(500)}),
        200,
        None,
        ("completed", None),
    ),
    # --- cancel ---------------------------------------------------------------------
    Case(
        "cancel-completed",
        lambda c: c.m.post(f"/v1/batches/{c.completed}/cancel"),
        409,
        None,
        None,
        _still_completed,
    ),
    Case(
        "cancel-failed",
        lambda c: c.m.post(f"/v1/batches/{c.failed}/cancel"),
        409,
        None,
    ),
    Case(
        "cancel-cancelled-again", lambda c: c.m.post(f"/v1/batches/{c.cancelled}/cancel"), 200, None
    ),
    Case(
        "cancel-with-garbage-body",
        lambda c: c.m.post(
            f"/v1/batches/{c.cancelled}/cancel",
            content=b"\x00\xff{[",
            headers={"content-type": "application/json"},
        ),
        200,
        None,
    ),
    Case("open-batch-quota", _flood, 429, "too_many_open_batches"),
    # --- uploads: multipart ---------------------------------------------------------
    Case(
        "mp-no-boundary",
        lambda c: c.m.post(
            "/v1/files", content=b"x", headers={"content-type": "multipart/form-data"}
        ),
        400,
        BAD,
    ),
    Case(
        "mp-boundary-300",
        lambda c: c.multipart([PURPOSE, file_part()], boundary="b" * 300),
        400,
        BAD,
    ),
    Case(
        "mp-garbage",
        lambda c: c.m.post(
            "/v1/files",
            content=b"\x00\x01garbage" * 100,
            headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
        ),
        400,
        BAD,
    ),
    Case(
        "mp-empty-body",
        lambda c: c.m.post(
            "/v1/files",
            content=b"",
            headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
        ),
        400,
        BAD,
    ),
    Case("mp-truncated", lambda c: c.multipart([PURPOSE, file_part()], close=False), 400, BAD),
    Case("mp-no-file", lambda c: c.multipart([PURPOSE]), 400, BAD),
    Case("mp-no-purpose", lambda c: c.multipart([file_part()]), 400, MISSING),
    Case(
        "mp-two-files",
        lambda c: c.multipart([PURPOSE, file_part(), file_part("b.jsonl")]),
        400,
        BAD,
    ),
    Case(
        "mp-huge-part-header",
        lambda c: c.multipart(
            [
                PURPOSE,
                (
                    'Content-Disposition: form-data; name="file"; filename="' + "a" * 100_000 + '"',
                    b"{}\n",
                ),
            ]
        ),
        400,
        BAD,
    ),
    Case(
        "mp-40-fields",
        lambda c: c.multipart(
            [
                PURPOSE,
                *[(f'Content-Disposition: form-data; name="f{i}"', b"v") for i in range(40)],
                file_part(),
            ]
        ),
        400,
        BAD,
    ),
    Case(
        "mp-purpose-5kb",
        lambda c: c.multipart(
            [('Content-Disposition: form-data; name="purpose"', b"b" * 5000), file_part()]
        ),
        400,
        BAD,
    ),
    Case(
        "mp-purpose-invalid-utf8",
        lambda c: c.multipart(
            [('Content-Disposition: form-data; name="purpose"', b"\xff\xfe"), file_part()]
        ),
        400,
        BAD,
    ),
    Case("mp-purpose-reserved", lambda c: c.upload_as("a.jsonl", purpose="batch_output"), 400, BAD),
    Case("mp-json-instead", lambda c: c.m.post("/v1/files", json={"purpose": "batch"}), 400, BAD),
    Case(
        "mp-wrong-subtype",
        lambda c: c.m.post(
            "/v1/files",
            content=b"x",
            headers={"content-type": f"multipart/mixed; boundary={BOUNDARY}"},
        ),
        400,
        BAD,
    ),
    Case(
        "mp-expiry-negative",
        lambda c: c.multipart(
            [
                PURPOSE,
                file_part(),
                ('Content-Disposition: form-data; name="expires_after[anchor]"', b"created_at"),
                ('Content-Disposition: form-data; name="expires_after[seconds]"', b"-1"),
            ]
        ),
        400,
        BAD,
    ),
    Case(
        "mp-expiry-1e99",
        lambda c: c.multipart(
            [
                PURPOSE,
                file_part(),
                ('Content-Disposition: form-data; name="expires_after[anchor]"', b"created_at"),
                ('Content-Disposition: form-data; name="expires_after[seconds]"', b"1e99"),
            ]
        ),
        400,
        BAD,
    ),
    Case(
        "upload-over-limit",
        lambda c: c.upload_as("big.jsonl", b"x" * (1024 * 1024 + 1)),
        413,
        "file_too_large",
    ),
    Case("upload-over-limit-chunked", _chunked_upload(3 * 1024 * 1024), 413, "file_too_large"),
    Case(
        "upload-over-batch-limit",
        lambda c: c.upload_as("b.jsonl", b"x" * (600 * 1024)),
        413,
        "file_too_large",
    ),
    Case(
        "filename-traversal",
        lambda c: c.upload_as("../../../../tmp/evil-overnight.jsonl"),
        200,
        None,
        None,
        _filename_is("evil-overnight.jsonl"),
    ),
    Case(
        "filename-windows-traversal",
        lambda c: c.upload_as("..\\..\\evil-overnight.jsonl"),
        200,
        None,
        None,
        _filename_is("evil-overnight.jsonl"),
    ),
    Case(
        "filename-control-chars",
        lambda c: c.upload_as("a\x00b\x1b[31mc.jsonl"),
        200,
        None,
        None,
        _filename_is("ab[31mc.jsonl"),
    ),
    Case(
        "filename-2000-chars",
        lambda c: c.upload_as("n" * 2000 + ".jsonl"),
        200,
        None,
        None,
        lambda c, r: None if len(r.json()["filename"]) <= 255 else pytest.fail("long name"),
    ),
    Case(
        "file-invalid-utf8",
        lambda c: c.upload_as("bad.jsonl", b"\xff\xfe\xfa\n"),
        200,
        None,
        None,
        _file_status_error,
    ),
    # --- batch files: each line checked when the batch validates --------------------
    Case(
        "line-invalid-utf8",
        lambda c: c.batch_of(b'{"custom_id": "\xff"}\n'),
        200,
        None,
        ("failed", "invalid_json_line"),
    ),
    Case(
        "line-raw-nul",
        lambda c: c.batch_of(b'{"custom_id": "a\x00b"}\n'),
        200,
        None,
        ("failed", "invalid_json_line"),
    ),
    Case(
        "line-nan",
        lambda c: c.batch_of(raw_line(json.dumps(line())[:-1] + ', "x": NaN}')),
        200,
        None,
        ("failed", "invalid_json_line"),
    ),
    Case(
        "line-infinity",
        lambda c: c.batch_of(
            raw_line(
                '{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": '
                '{"model": "m", "temperature": -Infinity}}'
            )
        ),
        200,
        None,
        ("failed", "invalid_json_line"),
    ),
    Case(
        "line-deeply-nested",
        lambda c: c.batch_of(
            raw_line(
                '{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": '
                '{"model": "m", "x": ' + "[" * 5000 + "]" * 5000 + "}}"
            )
        ),
        200,
        None,
        ("failed", "invalid_json_line"),
    ),
    Case(
        "line-lone-surrogate",
        lambda c: c.batch_of(
            raw_line(
                '{"custom_id": "\\ud800", "method": "POST", "url": "/v1/chat/completions", '
                '"body": {"model": "m"}}'
            )
        ),
        200,
        None,
        ("failed", "invalid_json_line"),
    ),
    Case(
        "line-not-object",
        lambda c: c.batch_of(b'"just a string"\n[1, 2]\n'),
        200,
        None,
        ("failed", "invalid_json_line"),
    ),
    Case(
        "line-too-long",
        lambda c: c.batch_of(jsonl([line(pad="p" * 70_000)])),
        200,
        None,
        ("failed", "invalid_request"),
    ),
    Case(
        "line-endless",
        lambda c: c.batch_of(b"x" * 200_000),
        200,
        None,
        ("failed", "invalid_request"),
    ),
    Case(
        "custom-id-nul-escape",
        lambda c: c.batch_of(jsonl([line(custom_id="a\x00b")])),
        200,
        None,
        ("failed", "invalid_request"),
    ),
    Case(
        "custom-id-600",
        lambda c: c.batch_of(jsonl([line(custom_id="c" * 600)])),
        200,
        None,
        ("failed", "invalid_request"),
    ),
    Case(
        "custom-id-sql-and-path",
        lambda c: c.batch_of(
            jsonl([line(custom_id="'; DROP TABLE requests; -- ../../etc/passwd %s %n")])
        ),
        200,
        None,
        ("completed", None),
        _custom_id_survives("'; DROP TABLE requests; -- ../../etc/passwd %s %n"),
    ),
    Case(
        "custom-id-duplicate",
        lambda c: c.batch_of(jsonl([line(), line()])),
        200,
        None,
        ("failed", "duplicate_custom_id"),
    ),
    Case(
        "line-duplicate-keys",
        lambda c: c.batch_of(
            raw_line(
                '{"custom_id": "first", "custom_id": "last", "method": "POST", "url": '
                '"/v1/chat/completions", "body": {"model": "m", "messages": '
                '[{"role": "user", "content": "hi"}]}}'
            )
        ),
        200,
        None,
        ("completed", None),
        _custom_id_survives("last"),
    ),
    Case(
        "url-other-host",
        lambda c: c.batch_of(jsonl([line(url="http://169.254.169.254/v1/chat/completions")])),
        200,
        None,
        ("failed", "invalid_url"),
    ),
    Case(
        "method-get",
        lambda c: c.batch_of(jsonl([line(method="GET")])),
        200,
        None,
        ("failed", "invalid_request"),
    ),
    Case(
        "body-array",
        lambda c: c.batch_of(jsonl([line(body=[1, 2])])),
        200,
        None,
        ("failed", "invalid_request"),
    ),
    Case(
        "model-300-chars",
        lambda c: c.batch_of(jsonl([line(body={"model": "m" * 300})])),
        200,
        None,
        ("failed", "invalid_request"),
    ),
    Case(
        "model-nul",
        lambda c: c.batch_of(jsonl([line(body={"model": "m\x00"})])),
        200,
        None,
        ("failed", "invalid_request"),
    ),
    Case(
        "model-mixed",
        lambda c: c.batch_of(jsonl([chat_line("a", model="m1"), chat_line("b", model="m2")])),
        200,
        None,
        ("failed", "model_mismatch"),
    ),
    Case(
        "too-many-lines",
        lambda c: c.batch_of(jsonl([chat_line(f"r{i}") for i in range(51)])),
        200,
        None,
        ("failed", "too_many_tasks"),
    ),
    Case(
        "only-blank-lines",
        lambda c: c.batch_of(b"\xef\xbb\xbf" + b"\n\r\n   \n\t\n" * 1000),
        200,
        None,
        ("failed", "empty_file"),
    ),
]


@pytest.fixture(scope="module")
def ctx(secure: Secure) -> Ctx:
    good = secure.upload("mallory", jsonl([chat_line("g1")]))["id"]
    notes = secure.upload("mallory", b"notes\n", name="notes.jsonl", purpose="user_data")["id"]
    completed = secure.wait("mallory", secure.create_batch("mallory", good).json()["id"])
    assert completed["status"] == "completed", completed
    bad = secure.upload("mallory", b"not json\n")["id"]
    failed = secure.wait("mallory", secure.create_batch("mallory", bad).json()["id"])
    assert failed["status"] == "failed", failed
    hole = secure.upload("mallory", jsonl([chat_line("h", model=BLACKHOLE_MODEL)]))["id"]
    cancel_me = secure.create_batch("mallory", hole).json()["id"]
    assert secure.client("mallory").post(f"/v1/batches/{cancel_me}/cancel").status_code == 200
    assert secure.wait("mallory", cancel_me)["status"] == "cancelled"
    canary = secure.upload(
        "canary", jsonl([chat_line(f"k{i}", f"canary {i}") for i in range(CANARY_LINES)])
    )["id"]
    return Ctx(secure, good, notes, completed["id"], failed["id"], cancel_me, canary)


def _check_envelope(r: httpx.Response, status: int, code: str | None) -> None:
    assert r.status_code == status, r.text[:500]
    assert r.headers.get("x-request-id")
    if status < 400:
        return
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["message"] and error["type"]
    assert error["code"] == code, error


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 50
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(ctx: Ctx, case: Case) -> None:
    secure = ctx.secure
    canary = secure.create_batch("canary", ctx.canary_file)
    assert canary.status_code == 200, canary.text

    r = case.send(ctx)
    _check_envelope(r, case.status, case.code)
    if case.batch is not None:
        final = secure.wait("mallory", r.json()["id"])
        errors = (final["errors"] or {}).get("data") or [{}]
        assert (final["status"], errors[0].get("code")) == case.batch, final
    if case.check is not None:
        case.check(ctx, r)

    # The server still serves, and the batch that ran alongside finished whole.
    secure.healthy()
    done = secure.wait("canary", canary.json()["id"])
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": CANARY_LINES, "completed": CANARY_LINES, "failed": 0}
    out = secure.client("canary").get(f"/v1/files/{done['output_file_id']}/content").text
    assert len(out.splitlines()) == CANARY_LINES


def test_log_has_no_unhandled_errors_or_secrets(ctx: Ctx, server_log: Path) -> None:
    """Runs after the corpus (same module, file order): nothing reached the 500 handler."""
    text = server_log.read_text(errors="replace")
    assert "unhandled error" not in text and "Traceback" not in text, text[-5000:]
    for secret in (UPSTREAM_SECRET, *ENV_KEYS.values(), *ctx.secure.keys.values()):
        assert secret not in text
    assert "canary 0" not in text  # prompts are not logged either


def test_endless_request_head_is_cut_off(ctx: Ctx) -> None:
    """A header that never ends is refused at 64 KiB, not buffered (one case outside the
    table: the HTTP layer answers it, before any route, so there is no envelope)."""
    port = int(ctx.secure.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /v1/files HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        sent = 0
        try:
            while sent < 16 * 1024 * 1024:
                s.sendall(b"a" * 65536)
                sent += 65536
        except OSError:
            pass  # the server closed the connection: what should happen
        assert sent < 16 * 1024 * 1024, "the server kept reading an endless header"
        try:
            answer = s.recv(100)
        except OSError:
            answer = b""
    assert answer == b"" or answer.startswith(b"HTTP/1.1 4")
    ctx.secure.healthy()
