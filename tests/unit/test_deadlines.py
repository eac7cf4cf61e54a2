"""Shares of a lane's batches: deadlines first, a floor for everyone, priorities for the rest."""

from __future__ import annotations

import pytest

from overnight.engine.deadlines import FLOOR, Demand, Stride, weights

NOW = 1_000_000.0


def test_batches_that_finish_in_time_share_equally() -> None:
    shares = weights([Demand(1, 100, NOW + 86400), Demand(2, 100, NOW + 86400)], 10.0, NOW)
    assert shares == {1: pytest.approx(5.0), 2: pytest.approx(5.0)}


def test_a_batch_at_risk_gets_what_it_needs_and_the_other_keeps_its_floor() -> None:
    # 450 requests in 10 s need 50/s at 0.9 of the time left; an equal share is 40/s.
    urgent, relaxed = Demand(1, 450, NOW + 10), Demand(2, 5000, NOW + 86400)
    shares = weights([relaxed, urgent], 80.0, NOW)
    assert shares[1] == pytest.approx(50.0 + (80 - 50 - 8) / 2)
    assert shares[2] >= FLOOR * 40
    assert sum(shares.values()) == pytest.approx(80.0)


def test_earliest_deadline_first_when_not_all_can_be_saved() -> None:
    a, b = Demand(1, 900, NOW + 10), Demand(2, 900, NOW + 20)
    shares = weights([b, a], 60.0, NOW)
    # a needs 100/s, more than there is: it gets all but the floors; b keeps its floor.
    assert shares[1] == pytest.approx(60 - 2 * FLOOR * 30 + FLOOR * 30)
    assert shares[2] == pytest.approx(FLOOR * 30)


def test_priority_weighs_what_deadlines_leave() -> None:
    shares = weights([Demand(1, 10, NOW + 86400, 1), Demand(2, 10, NOW + 86400, 0)], 30.0, NOW)
    floor = FLOOR * 15  # equal for both; priority weighs the rest
    assert shares[1] - floor == pytest.approx(2 * (shares[2] - floor))
    assert weights([Demand(1, 10, NOW, 2), Demand(2, 10, NOW, 0)], 0.0, NOW) == {1: 4.0, 2: 1.0}


def test_stride_gives_claims_in_proportion_and_a_newcomer_starts_level() -> None:
    stride = Stride()
    got = {1: 0, 2: 0}
    shares = {1: 3.0, 2: 1.0}
    for _ in range(400):
        seq = stride.pick(shares)
        got[seq] += 8
        stride.charge(seq, 8, shares[seq])
    assert got[1] / got[2] == pytest.approx(3.0, rel=0.05)
    # A batch joining late is not owed the past: it gets its share from now on.
    three = {1: 1.0, 2: 1.0, 3: 1.0}
    picks = []
    for _ in range(30):
        seq = stride.pick(three)
        picks.append(seq)
        stride.charge(seq, 8, three[seq])
    assert 8 <= picks.count(3) <= 12
    with pytest.raises(ValueError):
        stride.pick({})


def test_with_deadlines_off_a_batch_at_risk_gets_only_its_plain_share() -> None:
    # The operator's switch (OVERNIGHT_DEADLINE_SCHEDULING=off): the same two batches as
    # above share equally, and priorities still weigh.
    urgent, relaxed = Demand(1, 450, NOW + 10), Demand(2, 5000, NOW + 86400)
    shares = weights([relaxed, urgent], 80.0, NOW, deadlines=False)
    assert shares == {1: pytest.approx(40.0), 2: pytest.approx(40.0)}
    high = Demand(1, 450, NOW + 10, priority=1)
    shares = weights([relaxed, high], 80.0, NOW, deadlines=False)
    assert shares[1] - FLOOR * 40 == pytest.approx(2 * (shares[2] - FLOOR * 40))
