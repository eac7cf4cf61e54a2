"""Projects never see each other: another project's ids answer exactly as ids that do not exist.

Every route, in the OpenAI family (/v1, Bearer) and both Azure families (/openai with
api-version, /openai/v1; api-key header), for an intruder whose key comes from
OVERNIGHT_API_KEYS (beta) and one whose key is in the database (gamma).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from .helpers import AZURE_VERSION, BLACKHOLE_MODEL, Secure, chat_line, jsonl

Auth = Callable[[str], dict[str, str]]
FAMILIES: dict[str, tuple[str, Auth, dict[str, str]]] = {
    "openai": ("/v1", lambda key: {"authorization": f"Bearer {key}"}, {}),
    "azure": ("/openai", lambda key: {"api-key": key}, {"api-version": AZURE_VERSION}),
    "azure-v1": ("/openai/v1", lambda key: {"api-key": key}, {"api-version": "preview"}),
}
INPUT = jsonl([chat_line("a1", "alpha's private prompt"), chat_line("a2", "another secret")])


@pytest.fixture(scope="module")
def alpha(secure: Secure) -> Iterator[dict[str, Any]]:
    """alpha's objects: an input file, a finished batch with its output, and an open batch."""
    f = secure.upload("alpha", INPUT)
    done = secure.create_batch("alpha", f["id"]).json()
    done = secure.wait("alpha", done["id"])
    assert done["status"] == "completed", done
    hole = secure.upload("alpha", jsonl([chat_line("h1", model=BLACKHOLE_MODEL)]))
    open_batch = secure.create_batch("alpha", hole["id"]).json()
    secure.wait("alpha", open_batch["id"], until=frozenset({"in_progress"}))
    yield {
        "file": f["id"],
        "output": done["output_file_id"],
        "batch": done["id"],
        "open_batch": open_batch["id"],
        "hole_file": hole["id"],
    }
    secure.client("alpha").post(f"/v1/batches/{open_batch['id']}/cancel")
    secure.wait("alpha", open_batch["id"])


def _absent(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def _same_answer(
    theirs: httpx.Response, missing: httpx.Response, their_id: str, missing_id: str
) -> None:
    """Status, headers that matter and envelope are identical, up to the id echoed back."""
    assert theirs.status_code == missing.status_code, (theirs.text, missing.text)
    assert theirs.headers["content-type"] == missing.headers["content-type"]
    a = theirs.text.replace(their_id, "<ID>")
    b = missing.text.replace(missing_id, "<ID>")
    assert a == b


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("intruder", ["beta", "gamma"])
def test_other_projects_ids_are_not_found(
    secure: Secure, alpha: dict[str, Any], family: str, intruder: str
) -> None:
    prefix, auth, params = FAMILIES[family]
    client = httpx.Client(
        base_url=secure.url + prefix,
        headers=auth(secure.keys[intruder]),
        params=params,
        timeout=20.0,
    )
    with client:
        # Single objects: retrieve, content, delete (files); retrieve, cancel (batches).
        routes = [
            ("GET", "/files/{}", [alpha["file"], alpha["output"]], "file-"),
            ("GET", "/files/{}/content", [alpha["file"], alpha["output"]], "file-"),
            ("DELETE", "/files/{}", [alpha["file"], alpha["output"]], "file-"),
            ("GET", "/batches/{}", [alpha["batch"], alpha["open_batch"]], "batch_"),
            ("POST", "/batches/{}/cancel", [alpha["batch"], alpha["open_batch"]], "batch_"),
        ]
        for method, template, ids, id_prefix in routes:
            for their_id in ids:
                missing_id = _absent(id_prefix)
                theirs = client.request(method, template.format(their_id))
                missing = client.request(method, template.format(missing_id))
                assert theirs.status_code == 404, (method, template, theirs.text)
                assert theirs.json()["error"]["code"] is None  # as OpenAI's 404s
                _same_answer(theirs, missing, their_id, missing_id)

        # As input_file_id: the same fate as a file that does not exist (as on OpenAI, the
        # batch is created and fails validation with "Cannot find file ...").
        missing_id = _absent("file-")
        body = {"endpoint": "/v1/chat/completions", "completion_window": "24h"}
        theirs = client.post("/batches", json={**body, "input_file_id": alpha["file"]})
        missing = client.post("/batches", json={**body, "input_file_id": missing_id})
        assert theirs.status_code == missing.status_code == 200, theirs.text
        ended = [secure.wait(intruder, r.json()["id"])["errors"]["data"] for r in (theirs, missing)]
        assert ended[0][0]["code"] == "invalid_request"
        assert str(ended[0]).replace(alpha["file"], "<ID>") == str(ended[1]).replace(
            missing_id, "<ID>"
        )

        # Lists: none of alpha's ids, and alpha's ids as cursors act as unknown cursors.
        alpha_ids = set(alpha.values())
        for path in ("/files", "/files?purpose=batch", "/files?purpose=batch_output", "/batches"):
            listed = client.get(path)
            assert listed.status_code == 200, listed.text
            assert not alpha_ids & {item["id"] for item in listed.json()["data"]}
        for path, their_id, id_prefix in (
            ("/files", alpha["file"], "file-"),
            ("/batches", alpha["batch"], "batch_"),
        ):
            missing_id = _absent(id_prefix)
            theirs = client.get(path, params={"after": their_id})
            missing = client.get(path, params={"after": missing_id})
            assert theirs.json()["data"] == [] and theirs.json()["has_more"] is False
            _same_answer(theirs, missing, their_id, missing_id)

    # alpha's objects are untouched, and alpha itself reaches them through the same family.
    prefix, auth, params = FAMILIES[family]
    with httpx.Client(
        base_url=secure.url + prefix, headers=auth(secure.keys["alpha"]), params=params
    ) as owner:
        assert owner.get(f"/files/{alpha['file']}").status_code == 200
        assert owner.get(f"/files/{alpha['file']}/content").content == INPUT
        assert owner.get(f"/files/{alpha['output']}").status_code == 200
        assert owner.get(f"/batches/{alpha['batch']}").json()["status"] == "completed"
        assert owner.get(f"/batches/{alpha['open_batch']}").json()["status"] == "in_progress"
        listed = owner.get("/files", params={"purpose": "batch"}).json()["data"]
        assert alpha["file"] in {item["id"] for item in listed}


def test_projects_outputs_carry_no_other_projects_data(
    secure: Secure, alpha: dict[str, Any]
) -> None:
    """beta's results hold only beta's prompts, though alpha's batch ran on the same engine."""
    f = secure.upload("beta", jsonl([chat_line("b1", "beta's own question")]))
    b = secure.wait("beta", secure.create_batch("beta", f["id"]).json()["id"])
    assert b["status"] == "completed", b
    out = secure.client("beta").get(f"/v1/files/{b['output_file_id']}/content").text
    assert "beta's own question" in out
    assert "alpha's private prompt" not in out and "another secret" not in out
    assert alpha["batch"] not in out
