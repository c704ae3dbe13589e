"""pytest-benchmark of the quantized matmul without and with 0.5% sparse outliers (binding and
outlier validation included): GEMV (n = 1) and GEMM (n = 64) of a 1024×4096 matrix per type. Run
with `make bench` or `pytest benches --benchmark-enable --benchmark-only`; with
`--benchmark-disable` (the default in pyproject) each runs once as a plain test. Each test checks
what it times against float64 numpy on the dense equivalent (dequantized weight plus outliers).
The overhead ratio on DRAM-streaming weights and at n = 512 comes from `benches/outliers.rs`
(criterion), the kernel without the binding."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import lowbit

ROWS, COLS = 1024, 4096
TYPES = ["q4_0", "q4_k", "int4-g128", "int3-g128", "q8_0"]
FRACTION = 0.005
TOLERANCE = 0.02  # relative RMS error vs float64, allowed for int8-quantized activations
_R = np.random.default_rng(0)
W = _R.standard_normal((ROWS, COLS), np.float32) * np.float32(0.02)
X = {n: _R.standard_normal((n, COLS), np.float32) for n in (1, 64)}


def _outliers() -> tuple[
    npt.NDArray[np.bool_], npt.NDArray[np.uint64], npt.NDArray[np.uint32], npt.NDArray[np.float16]
]:
    """0.5% of the positions: 4 hot columns in half the rows, the rest uniform; values ±0.1–0.5."""
    r = np.random.default_rng(1)
    mask = r.random((ROWS, COLS)) < FRACTION - 4 / COLS
    mask[:, r.choice(COLS, 8, replace=False)] |= r.random((ROWS, 8)) < 0.5
    vals = (r.uniform(0.1, 0.5, int(mask.sum())) * r.choice([-1, 1], int(mask.sum()))).astype(np.float16)
    row_ptr = np.concatenate([[0], np.cumsum(mask.sum(axis=1))]).astype(np.uint64)
    return mask, row_ptr, np.nonzero(mask)[1].astype(np.uint32), vals


MASK, ROW_PTR, OCOLS, VALS = _outliers()


@pytest.fixture(scope="module", params=TYPES)
def qt(request: pytest.FixtureRequest) -> lowbit.QTensor:
    return lowbit.quantize(W, request.param)


@pytest.mark.parametrize("with_outliers", [False, True], ids=["dense", "outliers"])
@pytest.mark.parametrize("n", [1, 64])
def test_matmul(benchmark: Any, qt: lowbit.QTensor, n: int, with_outliers: bool) -> None:
    o = (ROW_PTR, OCOLS, VALS) if with_outliers else None
    benchmark.extra_info["weight MB"] = qt.nbytes / 1e6
    benchmark.extra_info["outliers"] = int(MASK.sum()) if with_outliers else 0
    y = benchmark(lambda: lowbit.matmul(X[n], qt, outliers=o))
    dense = qt.dequantize().astype(np.float64)
    if with_outliers:
        dense[np.nonzero(MASK)] += VALS.astype(np.float64)
    ref = X[n].astype(np.float64) @ dense.T
    assert y.shape == ref.shape and y.dtype == np.float32
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < TOLERANCE
