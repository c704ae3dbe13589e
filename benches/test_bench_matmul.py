"""pytest-benchmark of the quantized matmul, lowbit and (when llama-cpp-python's libraries are found)
ggml on the same weight bytes: GEMV (n = 1) and GEMM (n = 64) of a 1024×4096 matrix per type. Run
with `make bench` or `pytest benches --benchmark-enable --benchmark-only`; with `--benchmark-disable`
(the default in pyproject) each runs once as a plain test. Every test checks what it times against
float64 numpy. The weights here are cache-resident (16 MiB of f32 source): these time kernels; the
DRAM-streaming GEMV and the n = 512 GEMM side by side with ggml are `benches/bench_matmul.py`."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import lowbit

ROWS, COLS = 1024, 4096
TYPES = ["q4_0", "q4_k", "q8_0", "q6_k", "iq4_nl", "int4-g128", "f16"]
TOLERANCE = 0.02  # relative RMS error vs float64, allowed for int8-quantized activations
_R = np.random.default_rng(0)
W = _R.standard_normal((ROWS, COLS), np.float32) * np.float32(0.02)
X = {n: _R.standard_normal((n, COLS), np.float32) for n in (1, 64)}


@pytest.fixture(scope="module", params=TYPES)
def qt(request: pytest.FixtureRequest) -> lowbit.QTensor:
    return lowbit.quantize(W, request.param)


def _check(y: npt.NDArray[np.float32], x: npt.NDArray[np.float32], qt: lowbit.QTensor) -> None:
    ref = x.astype(np.float64) @ qt.dequantize().astype(np.float64).T
    assert y.shape == ref.shape and y.dtype == np.float32
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < TOLERANCE


def _record(benchmark: Any, qt: lowbit.QTensor, n: int) -> None:
    benchmark.extra_info["weight MB"] = qt.nbytes / 1e6
    benchmark.extra_info["GFLOP"] = 2 * n * ROWS * COLS / 1e9


@pytest.mark.parametrize("n", [1, 64])
def test_lowbit(benchmark: Any, qt: lowbit.QTensor, n: int) -> None:
    _record(benchmark, qt, n)
    y = benchmark(lowbit.matmul, X[n], qt)
    _check(y, X[n], qt)


@pytest.mark.parametrize("repack", [False, True], ids=["plain", "repacked"])
@pytest.mark.parametrize("n", [1, 64])
def test_ggml(benchmark: Any, qt: lowbit.QTensor, n: int, repack: bool) -> None:
    gm = pytest.importorskip("ggml_matmul", exc_type=ImportError, reason="ggml's libraries not found")
    if qt.qtype not in gm.TYPES or (repack and qt.qtype not in gm.REPACKED):
        pytest.skip(f"ggml has no {'repacked ' if repack else ''}{qt.qtype}")
    _record(benchmark, qt, n)
    with gm.GgmlMatmul(qt.qtype, [qt.data], ROWS, COLS, n, threads=2, repack=repack) as mm:
        mm.set_x(X[n])
        benchmark(mm.run, 0)
        _check(mm.result(0), X[n], qt)
