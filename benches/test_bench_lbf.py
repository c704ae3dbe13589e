"""pytest-benchmark suite of LBF file I/O on a 64 MiB file (two float16 4096×4096 tensors): save,
load + first tensor, verify. Run with `make bench` or `pytest benches --benchmark-enable
--benchmark-only`; with `--benchmark-disable` (the default in pyproject) each runs once as a plain
test. Every test checks what it times. The 1 GiB comparison against safetensors, gguf-py and the raw
disk is `benches/bench_lbf.py`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import lowbit

ROWS = COLS = 4096
TENSORS: dict[str, npt.NDArray[np.float16]] = {
    f"blk.{i}.ffn_down.weight": np.random.default_rng(i)
    .integers(0, 2**16, size=(ROWS, COLS), dtype=np.uint16)
    .view(np.float16)
    for i in range(2)
}
FIRST = next(iter(TENSORS))
MB = sum(t.nbytes for t in TENSORS.values()) / 1e6


def _same_bits(a: Any, b: npt.NDArray[np.float16]) -> bool:
    """Bitwise equality (the tensors hold NaN patterns, so == would not do)."""
    return isinstance(a, np.ndarray) and a.dtype == b.dtype and np.array_equal(a.view(np.uint16), b.view(np.uint16))


@pytest.fixture(scope="module")
def lbf_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lbf") / "model.lbf"
    lowbit.save(path, TENSORS, {"bench": True})
    return path


def test_save(benchmark: Any, tmp_path: Path) -> None:
    benchmark.extra_info["MB"] = MB
    path = tmp_path / "saved.lbf"
    benchmark(lowbit.save, path, TENSORS)
    with lowbit.load(path) as f:
        assert list(f) == list(TENSORS)
        for name, t in TENSORS.items():
            assert _same_bits(f[name], t)
        f.verify()


def _load_first(path: Path) -> tuple[npt.NDArray[Any], int]:
    with lowbit.load(path) as f:
        a = f[FIRST]
        assert isinstance(a, np.ndarray)
        return a, int(a.reshape(-1).view(np.uint8)[0])


def test_load_first_tensor(benchmark: Any, lbf_path: Path) -> None:
    benchmark.extra_info["MB"] = TENSORS[FIRST].nbytes / 1e6
    a, first_byte = benchmark(_load_first, lbf_path)
    assert _same_bits(a, TENSORS[FIRST])
    assert first_byte == int(TENSORS[FIRST].reshape(-1).view(np.uint8)[0])
    assert not a.flags.writeable  # a view of the map, not a copy


def _verify(path: Path) -> int:
    with lowbit.load(path) as f:
        f.verify()
        return len(f)


def test_verify(benchmark: Any, lbf_path: Path) -> None:
    benchmark.extra_info["MB"] = MB
    assert benchmark(_verify, lbf_path) == len(TENSORS)


def test_verify_catches_corruption(tmp_path: Path) -> None:
    """What test_verify times is a real check: one flipped bit in the data fails it."""
    path = tmp_path / "bad.lbf"
    lowbit.save(path, TENSORS)
    with lowbit.load(path) as f:
        offset = f.info(FIRST).parts[0].offset + 12345
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([b ^ 0x10]))
    with pytest.raises(lowbit.ChecksumError), lowbit.load(path) as f:
        f.verify()
