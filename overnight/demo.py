"""`overnight demo`: the main job end to end on the embedded defaults, as a user would run it.

Starts `overnight serve` on a temporary data dir (SQLite, local files, the
embedded model), submits a small batch through the official openai SDK
(upload, create, poll with a progress bar, download) and prints the answers.
"""

from __future__ import annotations

import tempfile
import time

import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from overnight.models import TERMINAL
from overnight.server_process import OvernightProcess

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "What is 12 times 12?",
    "Give one word that rhymes with 'night'.",
    "What gas do plants take in from the air?",
    "Translate 'good morning' into Spanish.",
    "How many days are in a leap year?",
    "What is the boiling point of water in Celsius?",
]
SYSTEM = "You are a helpful assistant. Answer in one short sentence."
DEPLOYMENT = "gpt-4o-mini-batch"  # any name: the embedded model serves them all


def demo_file() -> bytes:
    return b"".join(
        orjson.dumps(
            {
                "custom_id": f"question-{i + 1}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": DEPLOYMENT,
                    "messages": [
                        {"role": "system", "content": SYSTEM},
                        {"role": "user", "content": q},
                    ],
                    "max_tokens": 48,
                    "temperature": 0,
                    "seed": 7,
                },
            }
        )
        + b"\n"
        for i, q in enumerate(QUESTIONS)
    )


def run_demo(console: Console | None = None) -> int:
    from openai import OpenAI

    console = console or Console()
    with tempfile.TemporaryDirectory(prefix="overnight-demo-") as tmp:
        console.print(
            f"[bold]overnight demo[/]: a server on {tmp} (SQLite, local files, embedded model)"
        )
        with OvernightProcess(f"{tmp}/data", log_path=f"{tmp}/server.log") as server:
            client = OpenAI(base_url=f"{server.url}/v1", api_key="demo")
            started = time.perf_counter()
            f = client.files.create(file=("questions.jsonl", demo_file()), purpose="batch")
            batch = client.batches.create(
                input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            console.print(f"uploaded {f.id}, created {batch.id}")
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=console, transient=False) as bar:
                task = bar.add_task("validating", total=len(QUESTIONS))
                while batch.status not in TERMINAL:
                    time.sleep(0.2)
                    batch = client.batches.retrieve(batch.id)
                    counts = batch.request_counts
                    done = (counts.completed + counts.failed) if counts else 0
                    bar.update(task, description=batch.status, completed=done)
            took = time.perf_counter() - started
            if batch.status != "completed" or not batch.output_file_id:
                console.print(f"[red]batch ended {batch.status}[/]: {batch.errors}")
                console.print(server.log()[-3000:])
                return 1
            lines = client.files.content(batch.output_file_id).text.splitlines()
        answers = {}
        for raw in lines:
            row = orjson.loads(raw)
            answers[row["custom_id"]] = row["response"]["body"]["choices"][0]["message"]["content"]
        table = Table(title=f"{batch.id}: {len(lines)} answers from the embedded model")
        table.add_column("question")
        table.add_column("answer")
        for i, q in enumerate(QUESTIONS):
            table.add_row(q, answers.get(f"question-{i + 1}", "[red]missing[/]").strip())
        console.print(table)
        usage = batch.usage
        tokens = f"{usage.input_tokens} in + {usage.output_tokens} out tokens" if usage else ""
        console.print(f"done in {took:.1f} s: {tokens}")
    return 0
