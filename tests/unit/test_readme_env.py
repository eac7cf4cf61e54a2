"""README's configuration table names every environment variable overnight reads, and no
other: the variables are those overnight/settings.py spells out (nothing else in the
package reads the environment)."""

from __future__ import annotations

import re
from pathlib import Path

import overnight.settings

ROOT = Path(__file__).resolve().parents[2]
VARIABLE = re.compile(r"\bOVERNIGHT_[A-Z0-9_]+\b")


def settings_variables() -> set[str]:
    source = Path(overnight.settings.__file__).read_text()
    return set(re.findall(r"[\"'](OVERNIGHT_[A-Z0-9_]+)[\"']", source))


def readme_table_variables() -> set[str]:
    text = (ROOT / "README.md").read_text()
    table = text.split("## Configuration", 1)[1].split("\n\n", 2)[1]
    assert table.lstrip().startswith("| setting"), table[:200]
    return set(VARIABLE.findall(table))


def test_readme_lists_every_variable_settings_reads() -> None:
    known = settings_variables()
    assert {"OVERNIGHT_LOG_LEVEL", "OVERNIGHT_CANCEL_GRACE_SECONDS"} <= known  # the regex works
    listed = readme_table_variables()
    assert known - listed == set(), "add these to README's Configuration table"
    assert listed - known == set(), "README's table names variables settings.py never reads"
