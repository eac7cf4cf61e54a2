"""The metric names a Grafana dashboard's PromQL queries read, to check against a scrape."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

# PromQL's functions, aggregations and keywords: names that are not metrics.
KEYWORDS = frozenset(
    """sum avg min max count stddev stdvar topk bottomk quantile count_values group
    by without on ignoring group_left group_right bool and or unless offset
    rate irate increase delta idelta deriv predict_linear histogram_quantile
    abs ceil floor round clamp clamp_min clamp_max exp ln log2 log10 sqrt sgn
    label_replace label_join label_values vector scalar time timestamp
    avg_over_time min_over_time max_over_time sum_over_time count_over_time
    last_over_time quantile_over_time stddev_over_time absent absent_over_time
    changes resets sort sort_desc""".split()  # noqa: SIM905
)
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = re.compile(r"(?<![\w$:.])([A-Za-z_:][A-Za-z0-9_:]*)")


def metric_names(expr: str) -> set[str]:
    """Metric names in one PromQL expression (label names, functions, $vars left out)."""
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGES.sub("", text)
    text = _LABEL_LISTS.sub("", text)
    names = set()
    for match in _NAME.finditer(text):
        name = match[1]
        rest = text[match.end() :].lstrip()
        if name in KEYWORDS or rest.startswith("("):
            continue  # a function or an aggregation
        names.add(name)
    return names


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield f"panel {panel.get('title')!r} {target.get('refId')}", target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        # label_values(metric, label): the metric is the query; the label is not a metric.
        found = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query or "")
        yield f"variable {variable.get('name')!r}", str(found[1] if found else query)
