"""The carried Q4_1 SmolLM2 file is widened once to Q8_0, cached, and used by default."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from overnight.backends.llamacpp import default_model_path
from overnight.backends.llamacpp import weights as model_cache

GGML_TYPE_Q8_0 = 8


def _tensor_types(path: Path) -> set[int]:
    """The ggml types of a GGUF file's tensors, read from its header (GGUF v3)."""
    with path.open("rb") as fh:
        magic, _version, n_tensors, n_kv = struct.unpack("<4sIQQ", fh.read(24))
        assert magic == b"GGUF"

        def string() -> bytes:
            (n,) = struct.unpack("<Q", fh.read(8))
            return fh.read(n)

        sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

        def skip(kind: int) -> None:
            if kind == 8:
                string()
            elif kind == 9:
                inner, count = struct.unpack("<IQ", fh.read(12))
                for _ in range(count):
                    skip(inner)
            else:
                fh.read(sizes[kind])

        for _ in range(n_kv):
            string()
            (kind,) = struct.unpack("<I", fh.read(4))
            skip(kind)
        types = set()
        for _ in range(n_tensors):
            string()
            (n_dims,) = struct.unpack("<I", fh.read(4))
            fh.read(8 * n_dims)
            (ggml_type,) = struct.unpack("<I", fh.read(4))
            fh.read(8)
            types.add(ggml_type)
        return types


def test_widened_once_then_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = Path(model_cache.batched_weights(default_model_path()))
    assert first.parent == tmp_path / "overnight" / "models"
    assert first.name.endswith(".q8_0.gguf") and first.stat().st_size > 100_000_000
    assert GGML_TYPE_Q8_0 in _tensor_types(first)
    assert not list(first.parent.glob("*.partial"))
    stamp = first.stat().st_mtime_ns
    again = Path(model_cache.batched_weights(default_model_path()))
    assert again == first and again.stat().st_mtime_ns == stamp  # not written twice


def test_unwritable_cache_falls_back_to_the_carried_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache directory would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    source = default_model_path()
    assert model_cache.batched_weights(source) == source
    assert os.path.isfile(source)
