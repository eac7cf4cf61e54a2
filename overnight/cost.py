"""What a batch costs: a per-model price table from the config, applied to its usage.

    [prices."gpt-4o-mini"]
    input_per_million = 0.15         # currency units per million input tokens
    output_per_million = 0.60
    cached_input_per_million = 0.075 # optional; defaults to input_per_million
    batch_discount = 0.5             # fraction taken off (OpenAI's Batch API: 50 %)
    currency = "USD"                 # optional

`[prices."*"]` prices every model that has no entry of its own. A batch whose model has
no price shows `"estimated_cost": null`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from overnight.config_tables import named_tables
from overnight.errors import ConfigError
from overnight.models import Batch, Usage

ANY_MODEL = "*"


@dataclass(frozen=True, slots=True)
class Price:
    model: str
    input_per_million: float
    output_per_million: float
    cached_input_per_million: float | None = None
    batch_discount: float = 0.0
    currency: str = "USD"

    def cost(self, usage: Usage) -> float:
        cached = min(usage.cached_tokens, usage.input_tokens)
        cached_rate = (
            self.input_per_million
            if self.cached_input_per_million is None
            else self.cached_input_per_million
        )
        full = (
            (usage.input_tokens - cached) * self.input_per_million
            + cached * cached_rate
            + usage.output_tokens * self.output_per_million
        ) / 1_000_000
        return full * (1.0 - self.batch_discount)


def price_for(prices: tuple[Price, ...], model: str | None) -> Price | None:
    if model is None:
        return None
    fallback = None
    for price in prices:
        if price.model == model:
            return price
        if price.model == ANY_MODEL:
            fallback = price
    return fallback


def estimate(prices: tuple[Price, ...], model: str | None, usage: Usage) -> dict[str, Any] | None:
    """The wire shape of a cost: {"currency": "USD", "amount": 0.0123}, or None if unpriced."""
    price = price_for(prices, model)
    if price is None:
        return None
    return {"currency": price.currency, "amount": round(price.cost(usage), 6)}


def annotate(batch: Batch, prices: tuple[Price, ...]) -> Batch:
    """Fill `batch.estimated_cost` from its usage so far (the final cost once terminal)."""
    batch.estimated_cost = estimate(prices, batch.model, batch.usage)
    return batch


_KNOWN = {
    "input_per_million",
    "output_per_million",
    "cached_input_per_million",
    "batch_discount",
    "currency",
}


def prices_from_toml(doc: dict[str, Any]) -> tuple[Price, ...]:
    out = []
    what = 'a table of model names, e.g. [prices."gpt-4o"]'
    for model, spec, where in named_tables(doc, "prices", _KNOWN, what):
        for key in ("input_per_million", "output_per_million"):
            if key not in spec:
                raise ConfigError(f"{where} needs {key} (price per million tokens)")
        numbers = {}
        for key in ("input_per_million", "output_per_million", "cached_input_per_million"):
            if key in spec:
                numbers[key] = _non_negative(where, key, spec[key])
        discount = _non_negative(where, "batch_discount", spec.get("batch_discount", 0.0))
        if discount > 1:
            raise ConfigError(f"{where} batch_discount is a fraction between 0 and 1 (0.5 = 50 %)")
        currency = spec.get("currency", "USD")
        if not isinstance(currency, str) or not currency:
            raise ConfigError(f"{where} currency must be a string such as 'USD'")
        out.append(Price(model=model, batch_discount=discount, currency=currency, **numbers))
    return tuple(out)


def _non_negative(where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{where} {key} must be a non-negative number, got {value!r}")
    return float(value)
