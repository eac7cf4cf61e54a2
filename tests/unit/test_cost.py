"""Prices from the config, and the estimated cost of a batch from its usage."""

from __future__ import annotations

from pathlib import Path

import pytest

from overnight import settings as settings_mod
from overnight.cost import Price, annotate, estimate, prices_from_toml
from overnight.errors import ConfigError
from overnight.models import Batch, Usage


def batch(model: str | None, usage: Usage) -> Batch:
    return Batch(
        "batch_1",
        "p",
        "/v1/chat/completions",
        "file-1",
        "24h",
        "completed",
        0,
        1,
        model=model,
        usage=usage,
    )


def test_cost_with_cached_tokens_and_the_batch_discount() -> None:
    price = Price(
        "m",
        input_per_million=2.0,
        output_per_million=8.0,
        cached_input_per_million=0.5,
        batch_discount=0.5,
    )
    usage = Usage(input_tokens=1_000_000, cached_tokens=200_000, output_tokens=500_000)
    # (800k * 2 + 200k * 0.5 + 500k * 8) / 1M = 1.6 + 0.1 + 4.0 = 5.7, half off
    assert price.cost(usage) == pytest.approx(2.85)
    assert estimate((price,), "m", usage) == {"currency": "USD", "amount": 2.85}


def test_exact_model_first_then_star_then_none() -> None:
    prices = prices_from_toml(
        {
            "prices": {
                "*": {"input_per_million": 1, "output_per_million": 1},
                "big": {"input_per_million": 10, "output_per_million": 30, "currency": "EUR"},
            }
        }
    )
    usage = Usage(input_tokens=100_000, output_tokens=100_000)
    assert estimate(prices, "big", usage) == {"currency": "EUR", "amount": 4.0}
    assert estimate(prices, "small", usage) == {"currency": "USD", "amount": 0.2}
    assert estimate(prices, None, usage) is None  # model unknown until validated
    assert estimate((), "big", usage) is None


def test_the_batch_object_carries_the_estimate() -> None:
    prices = (Price("m", 1.0, 2.0),)
    b = annotate(batch("m", Usage(input_tokens=1000, output_tokens=1000)), prices)
    assert b.to_api()["estimated_cost"] == {"currency": "USD", "amount": 0.003}
    assert annotate(batch("other", Usage()), prices).to_api()["estimated_cost"] is None


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"m": {"input_per_million": 1}}, "needs output_per_million"),
        ({"m": {"input_per_million": 1, "output_per_million": -1}}, "non-negative"),
        (
            {"m": {"input_per_million": 1, "output_per_million": 1, "batch_discount": 50}},
            "fraction",
        ),
        ({"m": {"input_per_million": 1, "output_per_million": 1, "price": 3}}, "unknown keys"),
        ({"m": 3}, "must be a table"),
    ],
)
def test_bad_price_tables_say_what_to_fix(table: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        prices_from_toml({"prices": table})


def test_settings_load_prices_and_webhooks(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        '[prices."gpt-4o-mini"]\ninput_per_million = 0.15\noutput_per_million = 0.6\n'
        "batch_discount = 0.5\n"
        '[webhooks.team]\nurl = "https://example.com/hook"\nsecret_env = "HOOK"\n'
        'events = ["batch.completed"]\n'
    )
    s = settings_mod.load(config_file=config, env={"HOOK": "whsec_abc"})
    assert s.prices == (Price("gpt-4o-mini", 0.15, 0.6, batch_discount=0.5),)
    [hook] = s.webhooks
    assert (hook.project, hook.url, hook.secret, hook.events) == (
        "team",
        "https://example.com/hook",
        "whsec_abc",
        ("batch.completed",),
    )
    assert "whsec_abc" not in repr(s)  # secrets never show in logs
    with pytest.raises(ConfigError, match=r"\$HOOK, which is not set"):
        settings_mod.load(config_file=config, env={})
    config.write_text('[webhooks.team]\nurl = "https://x"\nsecret_env = "H"\nevents = ["x"]\n')
    with pytest.raises(ConfigError, match="unknown events"):
        settings_mod.load(config_file=config, env={"H": "s"})
