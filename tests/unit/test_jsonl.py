import orjson
import pytest

from overnight.jsonl import (
    Line,
    normalize_endpoint,
    parse_line,
    request_id,
    result_line,
    split_lines,
)

CHAT = "/v1/chat/completions"


def line(**over: object) -> bytes:
    doc: dict[str, object] = {
        "custom_id": "a",
        "method": "POST",
        "url": CHAT,
        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    }
    doc.update(over)
    return orjson.dumps({k: v for k, v in doc.items() if v is not ...})


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("/v1/chat/completions", CHAT),
        ("/chat/completions", CHAT),
        ("chat/completions", CHAT),
        ("/v1/embeddings", "/v1/embeddings"),
        ("/responses", "/v1/responses"),
        ("/v1/images/generations", "/v1/images/generations"),
        ("/moderations", "/v1/moderations"),
        ("/v1/images/variations", None),
        ("", None),
    ],
)
def test_normalize_endpoint(spelling: str, canonical: str | None) -> None:
    assert normalize_endpoint(spelling) == canonical


def test_valid_line_keeps_the_body_compact() -> None:
    parsed = parse_line(3, line(), CHAT)
    assert isinstance(parsed, Line)
    assert (parsed.number, parsed.custom_id, parsed.model) == (3, "a", "m")
    assert orjson.loads(parsed.body) == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
    }


def test_bom_and_crlf_are_accepted() -> None:
    assert isinstance(parse_line(1, b"\xef\xbb\xbf" + line() + b"\r", CHAT), Line)


def test_blank_lines_are_skipped() -> None:
    assert parse_line(2, b"   \r", CHAT) is None


@pytest.mark.parametrize(
    ("raw", "code", "param"),
    [
        (b"{not json", "invalid_json_line", None),
        (b"[1, 2]", "invalid_json_line", None),
        (b'{"a": NaN}', "invalid_json_line", None),
        (b"\xff\xfe", "invalid_json_line", None),
        (b"[" * 5000 + b"]" * 5000, "invalid_json_line", None),
        (line(custom_id=...), "missing_required_parameter", "custom_id"),
        (line(custom_id=""), "invalid_request", "custom_id"),
        (line(custom_id=7), "invalid_request", "custom_id"),
        (line(custom_id="x" * 513), "invalid_request", "custom_id"),
        (line(method="GET"), "invalid_request", "method"),
        (line(method=...), "missing_required_parameter", "method"),
        (line(url=None), "missing_required_parameter", "url"),
        (line(url=7), "invalid_request", "url"),
        (line(url="/v1/embeddings"), "invalid_url", "url"),
        (line(body="text"), "invalid_request", "body"),
        (line(body=...), "missing_required_parameter", "body"),
        (line(body={"messages": [{"role": "user"}]}), "invalid_request", "body.model"),
        (line(body={"model": "m"}), "invalid_request", "body.messages"),
        (line(body={"model": "m", "messages": []}), "invalid_request", "body.messages"),
        (line(body={"model": "m", "messages": "hi"}), "invalid_request", "body.messages"),
        (
            line(body={"model": "m", "messages": [{"role": "user"}], "stream": True}),
            "streaming_unsupported",
            "body.stream",
        ),
    ],
)
def test_invalid_lines_get_codes(raw: bytes, code: str, param: str | None) -> None:
    errors = parse_line(5, raw, CHAT)
    assert isinstance(errors, list) and len(errors) == 1, errors
    err = errors[0]
    assert (err.code, err.param, err.line) == (code, param, 5)


def test_every_missing_field_of_a_line_is_reported_in_field_order() -> None:
    errors = parse_line(2, line(custom_id=..., body={"stream": True}), CHAT)
    assert isinstance(errors, list)
    assert [(e.code, e.param) for e in errors] == [
        ("missing_required_parameter", "custom_id"),
        ("invalid_request", "body.model"),
        ("invalid_request", "body.messages"),
        ("streaming_unsupported", "body.stream"),
    ]
    assert errors[0].message == "Missing required parameter: 'custom_id'."
    assert errors[1].message == "Model parameter is required."
    assert errors[2].message == "Messages parameter is required."
    assert errors[3].message == "Chat Completions: Streaming is not supported in the Batch API."


def test_azure_batches_get_azure_codes() -> None:
    errors = parse_line(1, line(url="/embeddings", custom_id=...), CHAT, "azure")
    assert isinstance(errors, list)
    assert [(e.code, e.param) for e in errors] == [
        ("invalid_request", "custom_id"),
        ("url_mismatch", "url"),
    ]


@pytest.mark.parametrize(
    ("endpoint", "body", "params"),
    [
        ("/v1/completions", {"model": "m"}, ["body.prompt"]),
        ("/v1/embeddings", {"model": "m"}, ["body.input"]),
        ("/v1/responses", {"model": "m"}, ["body.input"]),
        ("/v1/moderations", {}, ["body.input"]),
        ("/v1/images/generations", {}, ["body.prompt"]),
        ("/v1/images/edits", {"prompt": "p"}, ["body.image"]),
        ("/v1/completions", {}, ["body.model", "body.prompt"]),
        ("/v1/completions", {"model": "m", "prompt": "p", "stream": True}, ["body.stream"]),
    ],
)
def test_each_endpoint_checks_its_required_fields(
    endpoint: str, body: dict[str, object], params: list[str]
) -> None:
    raw = orjson.dumps({"custom_id": "a", "method": "POST", "url": endpoint, "body": body})
    errors = parse_line(1, raw, endpoint)
    assert isinstance(errors, list)
    assert [e.param for e in errors] == params


def test_endpoints_that_default_their_model_route_by_that_default() -> None:
    raw = orjson.dumps(
        {"custom_id": "a", "method": "POST", "url": "/v1/moderations", "body": {"input": "x"}}
    )
    parsed = parse_line(1, raw, "/v1/moderations")
    assert isinstance(parsed, Line) and parsed.model == "omni-moderation-latest"
    assert orjson.loads(parsed.body) == {"input": "x"}  # sent upstream as written


async def test_split_lines_across_chunks() -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        for c in (b"ab", b"c\nde", b"f\n\ng", b"h"):
            yield c

    got = [x async for x in split_lines(chunks(), 100)]
    assert got == [(1, b"abc"), (2, b"def"), (3, b""), (4, b"gh")]


def test_result_lines_are_single_line_json() -> None:
    ok = result_line("batch_req_1", "a", 200, "req_9", b'{"x":1}', None)
    assert orjson.loads(ok) == {
        "id": "batch_req_1",
        "custom_id": "a",
        "response": {"status_code": 200, "request_id": "req_9", "body": {"x": 1}},
        "error": None,
    }
    failed = result_line(
        "batch_req_2", "b", None, None, None, {"code": "batch_expired", "message": "m"}
    )
    assert orjson.loads(failed)["response"] is None
    assert ok.endswith(b"\n") and ok.count(b"\n") == 1


def test_a_line_the_model_refused_has_both_response_and_error() -> None:
    error = {"code": "invalid_request_error", "message": "no"}
    line = orjson.loads(result_line("batch_req_3", "c", 400, "req_1", b'{"error":{}}', error))
    assert line["response"]["status_code"] == 400
    assert line["error"] == error


def test_request_ids_are_stable_and_distinct() -> None:
    assert request_id("batch_x", 1) == request_id("batch_x", 1)
    assert request_id("batch_x", 1) != request_id("batch_x", 2)
    assert request_id("batch_x", 1).startswith("batch_req_")


def test_prefix_key_groups_shared_leading_messages() -> None:
    from overnight.jsonl import prefix_key

    sys_a = {"role": "system", "content": "You are A."}
    sys_b = {"role": "system", "content": "You are B."}
    a1 = prefix_key({"messages": [sys_a, {"role": "user", "content": "1"}]})
    a2 = prefix_key({"messages": [sys_a, {"role": "user", "content": "2"}]})
    b1 = prefix_key({"messages": [sys_b, {"role": "user", "content": "1"}]})
    assert a1 == a2 != b1
    assert prefix_key({"input": [1, 2]}) == prefix_key({"input": [1, 3]})
    assert prefix_key({"prompt": "p" * 300 + "x"}) == prefix_key({"prompt": "p" * 300 + "y"})
    assert prefix_key({"input": "embed me"}) == b""
