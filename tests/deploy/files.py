"""Reading the deployment files the way their tools do: the Dockerfile's instructions,
.dockerignore's rules, compose's ${VAR} interpolation, and the environment variables
overnight itself reads (the reference the typo checks compare against)."""

from __future__ import annotations

import ast
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "overnight"

# Variables overnight reads that are not its own: the AWS SDK's (botocore reads them
# for the S3 store, docs/deploy.md) and the cache of the embedded model's weights.
FOREIGN_ENV = frozenset(
    {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_CA_BUNDLE",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "XDG_CACHE_HOME",
    }
)
# What the Python interpreter itself reads (the image sets them).
PYTHON_ENV = frozenset({"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"})

_OVERNIGHT_NAME = re.compile(r"^OVERNIGHT_[A-Z0-9_]+$")


def overnight_env_names(package: Path = PACKAGE) -> frozenset[str]:
    """Every OVERNIGHT_* name that appears as a whole string constant in the package:
    the keys settings.load() looks up (it is the one reader of the environment)."""
    names: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and _OVERNIGHT_NAME.match(node.value)
            ):
                names.add(node.value)
    return frozenset(names)


def unknown_env(names: set[str] | list[str], known: frozenset[str]) -> list[str]:
    """The names overnight would silently ignore: the typos."""
    return sorted(n for n in set(names) if n not in known and n not in FOREIGN_ENV)


def tool(name: str) -> str:
    """The path of a command-line tool from the test extra (installed beside this
    interpreter) or the machine; skipped with the reason where it is absent, except in
    CI, where a missing validator would hide that nothing was validated."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found:
        return found
    reason = f"{name} is not installed (pip install -e '.[test]' brings the validators)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


# ---- Dockerfile


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY...
    args: str
    line: int


def dockerfile_instructions(text: str) -> list[Instruction]:
    """The instructions, continuation lines joined and comments dropped."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        joined = " ".join(p for p in pending if p)
        keyword, _, args = joined.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        pending = []
    return out


def dockerfile_stages(text: str) -> dict[str, list[Instruction]]:
    """Instructions by stage name (`FROM image AS name`), in file order."""
    stages: dict[str, list[Instruction]] = {}
    current: list[Instruction] | None = None
    for ins in dockerfile_instructions(text):
        if ins.keyword == "FROM":
            words = ins.args.split()
            name = words[-1] if len(words) >= 3 and words[-2].upper() == "AS" else ""
            current = stages.setdefault(name or f"stage{len(stages)}", [])
        if current is not None:
            current.append(ins)
    return stages


# ---- .dockerignore


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes, pattern) in file order; as Docker does, the last match decides."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((not negate, _glob_regex(pattern)))
    return rules


def in_build_context(relpath: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker sends this file: a rule matching the path or any folder above it."""
    parts = relpath.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for excludes, pattern in rules:
        if any(pattern.match(p) for p in prefixes):
            excluded = excludes
    return not excluded


# ---- compose's interpolation

_VARIABLE = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: {raw!r} is not NAME=value"
            values[key.strip()] = value.strip()
    return values


def referenced_variables(text: str) -> set[str]:
    """Every variable a compose file interpolates ($$ is a literal dollar)."""
    return {m["braced"] or m["bare"] for m in _VARIABLE.finditer(text) if m.group(0) != "$$"}


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, $$ rules."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m["braced"] or m["bare"]
        op, arg = m["op"] or "", m["arg"] or ""
        value = env.get(name)
        if op in (":-", "-"):
            return value if value or (op == "-" and value is not None) else arg
        if op in (":?", "?"):
            if not value and not (op == "?" and value is not None):
                raise ValueError(f"${{{name}}} is required: {arg}")
            return value or ""
        if op in (":+", "+"):
            return arg if value else ""
        return value or ""

    return _VARIABLE.sub(one, text)
