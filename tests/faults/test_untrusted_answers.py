"""What an upstream sends is untrusted: numbers out of range end no batch, block no other."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from overnight.models import MAX_ANSWER_TOKENS
from tests.scaleout.infra import create_database, drop_database, postgres_available
from tests.support.upstream_stub import StubConfig, StubServer

from .support import assert_each_once, client, lines, overnight, submit, wait


@pytest.fixture(params=["sqlite", "postgresql"])
def database_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    if request.param == "sqlite":
        yield {}
        return
    if not postgres_available():
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    name, url = create_database()
    try:
        yield {"OVERNIGHT_DATABASE_URL": url}
    finally:
        drop_database(name)


@pytest.mark.parametrize("claimed", [2**63 - 1, 2**31, 2**62, -5])
def test_absurd_token_counts_are_bounded_where_they_enter(
    tmp_path: Path, database_env: dict[str, str], claimed: int
) -> None:
    with (
        StubServer.in_thread(StubConfig(usage_tokens=claimed)) as bad,
        StubServer.in_thread(StubConfig()) as good,
    ):
        config = tmp_path / "config.toml"
        config.write_text(f'[models.bad]\nurl = "{bad.url}"\n[models.good]\nurl = "{good.url}"\n')
        with overnight(tmp_path / "data", database_env, ["--config", str(config)]) as server:
            c = client(server)
            bad_id = submit(c, lines(50, model="bad", tag="b"))
            good_id = submit(c, lines(50, model="good", tag="g"))
            done_bad, done_good = wait(c, bad_id), wait(c, good_id)
            assert_each_once(c, done_good, 50, tag="g")
            assert_each_once(c, done_bad, 50, tag="b")
            expected = 50 * min(max(claimed, 0), MAX_ANSWER_TOKENS)
            assert done_bad.usage.input_tokens == expected
            wire = c.batches.with_raw_response.retrieve(bad_id).http_response.json()
            assert type(wire["usage"]["input_tokens"]) is int  # never a float
            assert bad.stats()["received"] == 50  # nothing sent twice
