"""Walk a config file's `[section."name"]` tables, checking their shape and keys once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from overnight.errors import ConfigError


def named_tables(
    doc: dict[str, Any], section: str, known: set[str], what: str
) -> Iterator[tuple[str, dict[str, Any], str]]:
    """(name, table, where-for-messages) for each table of `[section]`.

    `what` finishes the message for a `[section]` that is not a table of tables.
    """
    tables = doc.get(section, {})
    if not isinstance(tables, dict):
        raise ConfigError(f"config: [{section}] must be {what}")
    for name, spec in tables.items():
        where = f"config: [{section}.{name!r}]"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where} must be a table")
        unknown = set(spec) - known
        if unknown:
            raise ConfigError(
                f"{where} has unknown keys {sorted(unknown)}; known keys are {sorted(known)}"
            )
        yield name, spec, where
