"""Real batches on the embedded model, through the real server and the openai SDK."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from openai import OpenAI

from overnight.server_process import OvernightProcess

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.local_model

MODEL = "gpt-4o-mini-batch"  # an Azure deployment name: the embedded model serves any name


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAI]:
    with OvernightProcess(tmp_path_factory.mktemp("embedded") / "data") as server:
        yield OpenAI(base_url=f"{server.url}/v1", api_key="t", max_retries=0)


def run(client: OpenAI, endpoint: str, bodies: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    data = b"".join(
        orjson.dumps({"custom_id": f"r{i}", "method": "POST", "url": endpoint, "body": b}) + b"\n"
        for i, b in enumerate(bodies)
    )
    f = client.files.create(file=("in.jsonl", data), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint=endpoint, completion_window="24h")
    deadline = time.monotonic() + 240
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.2)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    rows: dict[str, dict[str, Any]] = {}
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            for line in client.files.content(file_id).text.splitlines():
                row = orjson.loads(line)
                rows[row["custom_id"]] = row
    assert len(rows) == len(bodies)
    return rows


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 16,
        "temperature": 0,
        "seed": 1,
        **extra,
    }


def test_chat_is_deterministic_and_counts_real_tokens(client: OpenAI) -> None:
    bodies = [chat("Name a colour."), chat("What is 2 + 2?"), chat("Say hello.")]
    first, second = (
        run(client, "/v1/chat/completions", bodies),
        run(client, "/v1/chat/completions", bodies),
    )
    for cid, row in first.items():
        body = row["response"]["body"]
        assert row["response"]["status_code"] == 200
        text = body["choices"][0]["message"]["content"]
        assert text and text == second[cid]["response"]["body"]["choices"][0]["message"]["content"]
        assert 0 < body["usage"]["completion_tokens"] <= 16
        assert body["usage"]["prompt_tokens"] > 5


def test_json_schema_output_parses(client: OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
    }
    body = chat(
        "Give a city and its country as JSON.",
        max_tokens=48,
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}},
    )
    rows = run(client, "/v1/chat/completions", [body, dict(body, seed=2)])
    for row in rows.values():
        content = row["response"]["body"]["choices"][0]["message"]["content"]
        parsed = orjson.loads(content)
        assert set(parsed) >= {"city", "country"}


def test_embeddings_batch(client: OpenAI) -> None:
    rows = run(
        client,
        "/v1/embeddings",
        [{"model": MODEL, "input": "the same text"}, {"model": MODEL, "input": "the same text"}],
    )
    vectors = [r["response"]["body"]["data"][0]["embedding"] for r in rows.values()]
    assert len(vectors[0]) > 100 and vectors[0] == vectors[1]


def test_image_parts_get_a_per_line_400(client: OpenAI) -> None:
    image = {
        "model": MODEL,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}},
                ],
            }
        ],
        "max_tokens": 8,
    }
    rows = run(client, "/v1/chat/completions", [image, chat("Say yes.")])
    assert rows["r0"]["response"]["status_code"] == 400
    assert rows["r0"]["response"]["body"]["error"]["message"]
    assert rows["r1"]["response"]["status_code"] == 200


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("/v1/moderations", {"input": "is this fine?"}),
        ("/v1/images/generations", {"model": MODEL, "prompt": "a cat"}),
    ],
)
def test_endpoints_the_embedded_model_cannot_serve_get_a_per_line_400(
    client: OpenAI, endpoint: str, body: dict[str, Any]
) -> None:
    rows = run(client, endpoint, [body])
    assert rows["r0"]["response"]["status_code"] == 400
    assert endpoint in rows["r0"]["response"]["body"]["error"]["message"]
    assert rows["r0"]["error"]["code"] == "invalid_url"


def test_the_readme_run_command_works(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "overnight", "demo"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "answers from the embedded model" in out.stdout
    assert "missing" not in out.stdout
