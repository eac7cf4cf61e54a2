"""Results: output and error files merged into one JSONL, in the input file's order."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from rich.console import Console


def _natural(custom_id: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", custom_id)]


def parse_jsonl(data: bytes) -> list[tuple[dict[str, Any], bytes]]:
    out = []
    for raw in data.splitlines():
        if raw.strip():
            out.append((json.loads(raw), raw))
    return out


def download(client: Any, file_id: str | None) -> bytes:
    if not file_id:
        return b""
    content: bytes = client.files.content(file_id).read()
    return content


def input_lines(client: Any, batch: Any) -> list[tuple[dict[str, Any], bytes]] | None:
    """The batch's input requests, or None when the input file cannot be downloaded."""
    import openai

    try:
        return parse_jsonl(download(client, batch.input_file_id))
    except (openai.NotFoundError, openai.PermissionDeniedError, openai.BadRequestError):
        return None
    except ValueError:  # not JSON lines: cannot be used to order anything
        return None


def merged_results(client: Any, batch: Any) -> tuple[list[bytes], str]:
    """Output and error lines together, in the input file's order when it can be read."""
    lines = parse_jsonl(download(client, batch.output_file_id))
    lines += parse_jsonl(download(client, batch.error_file_id))
    requests = input_lines(client, batch)
    if requests is not None:
        order = {req.get("custom_id"): i for i, (req, _raw) in enumerate(requests)}
        end = len(order)
        lines.sort(
            key=lambda x: (order.get(x[0].get("custom_id"), end), str(x[0].get("custom_id")))
        )
        how = "input order"
    else:
        lines.sort(key=lambda x: _natural(str(x[0].get("custom_id", ""))))
        how = "custom_id order (the input file could not be downloaded)"
    return [raw for _line, raw in lines], how


def write_results(client: Any, batch: Any, output: Path | None, err: Console) -> int:
    lines, how = merged_results(client, batch)
    data = b"".join(raw + b"\n" for raw in lines)
    if output is None or str(output) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        output.write_bytes(data)
        err.print(f"wrote {len(lines)} results to {output} ({how})", highlight=False)
    return len(lines)
