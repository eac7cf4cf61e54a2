"""The result sink on a real SQLite ledger: one result the store refuses blocks no other."""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from overnight.engine.results import ResultSink
from overnight.jsonl import Line
from overnight.models import Batch, BatchStatus, RequestState, Usage, new_batch_id, now
from overnight.store import open_store
from overnight.store.base import Outcome


async def test_a_result_the_store_cannot_hold_becomes_a_failed_line(tmp_path: Path) -> None:
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    try:
        t = now()
        seq = await store.batches.add(
            Batch(
                id=new_batch_id(),
                project="p",
                endpoint="/v1/chat/completions",
                input_file_id="file-x",
                completion_window="24h",
                status=BatchStatus.IN_PROGRESS,
                created_at=t,
                expires_at=t + 86400,
                model="m",
                total=5,
            )
        )
        await store.ledger.add_lines(seq, [Line(i + 1, f"r{i}", "m", b"{}") for i in range(5)])
        claimed = await store.ledger.claim(seq, "me", 5, time.time() + 60)
        sink = ResultSink(store.ledger, "me", interval=10.0, flush_max=512)
        for req in claimed:
            # 2^64 does not fit a 64-bit column: SQLite refuses the whole transaction.
            tokens = 2**64 if req.line == 3 else 7
            sink.add(Outcome(req.id, seq, True, 200, b"{}", None, None, 1, Usage(tokens)))
        await sink.flush()
        counts, usage = await store.ledger.counts(seq)
        assert (counts.completed, counts.failed, counts.open) == (4, 1, 0)
        assert usage.input_tokens == 4 * 7
        rows = {r.line: r async for r in store.ledger.results(seq)}
        assert rows[3].state == RequestState.FAILED
        assert orjson.loads(rows[3].error)["code"] == "invalid_upstream_response"
        assert all(rows[n].state == RequestState.DONE for n in (1, 2, 4, 5))
    finally:
        await store.close()


async def test_results_wait_while_the_store_is_away() -> None:
    """A store that fails every write is not bad data: nothing is turned into a failure."""

    class Away:
        async def record(self, owner: str, outcomes: object) -> None:
            raise ConnectionResetError("the database went away")

    sink = ResultSink(Away(), "me", interval=10.0, flush_max=512)  # type: ignore[arg-type]
    outcome = Outcome(1, 1, True, 200, b"{}", None, None, 1, Usage())
    sink.add(outcome)
    sink._stopping = True  # one round, then give up (as at shutdown)
    await sink.flush()
    assert sink._buffer == [outcome]  # kept, to be recorded when the store is back
