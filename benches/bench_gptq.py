"""GPTQ wall time on one 4096×4096 layer: `lowbit.algos.gptq.gptq_quantize` (int4, group 128,
asymmetric, block 128, damp 0.01) and, when `torch` imports, the same algorithm written
straightforwardly in torch (CPU, float32: the paper's Cholesky inverse, lazy batches, rank-1
updates inside a batch), timed in the same process; the table gives medians and the ratio.

* Layer: seeded W ~ N(0, 0.02²) f32; H = XᵀX (float32) of 2048 tokens X = Z·A, Z with 1/16 of its
  columns ten times larger, A a random mixing (every input column correlated with every other).
* lowbit's time includes everything `gptq_quantize` does: the float64 Cholesky, the column loop,
  the QTensor and its exact grid check, and the two error figures (GPTQ's and RTN's).
  The torch version computes neither an error figure nor a QTensor.
* Both results are checked: relative proxy output error below RTN's, and the two within 5 %.
* Threads: numpy's BLAS and torch use what OMP_NUM_THREADS / OPENBLAS_NUM_THREADS allow (printed).

    OMP_NUM_THREADS=1 PYTHONPATH=python /work/hf-venv/bin/python benches/bench_gptq.py [--repeats 3]
    pytest benches/bench_gptq.py --benchmark-enable        (pytest-benchmark, one round each)
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

import lowbit
from lowbit.algos.gptq import gptq_quantize, output_error

N, TOKENS, BITS, GROUP, BLOCK, DAMP = 4096, 2048, 4, 128, 128, 0.01
F32 = npt.NDArray[np.float32]


@lru_cache(maxsize=1)
def make_layer(n: int = N, tokens: int = TOKENS) -> tuple[F32, F32]:
    """W (n, n) and H (n, n), float32 (see the module doc); cached, read only."""
    r = np.random.default_rng(0)
    scale = np.ones(n, np.float32)
    scale[r.choice(n, n // 16, replace=False)] = 10.0
    z = r.standard_normal((tokens, n), dtype=np.float32) * scale
    x = z @ (r.standard_normal((n, n), dtype=np.float32) / np.float32(np.sqrt(n)))
    w = r.standard_normal((n, n), dtype=np.float32) * np.float32(0.02)
    return w, x.T @ x


def run_lowbit(w: F32, h: F32) -> F32:
    """Ŵ from `gptq_quantize` (input order; no act-order here, so stored order)."""
    res = gptq_quantize(w, h, f"int{BITS}", group_size=GROUP, block_size=BLOCK, damp=DAMP)
    return res.qtensor.dequantize()


def run_torch(w: F32, h: F32) -> F32:
    """The paper's algorithm, straightforwardly in torch (float32, CPU). Groups are taken at the
    batch start, which is the group start since GROUP == BLOCK."""
    torch: Any = importlib.import_module("torch")
    wt, ht = torch.from_numpy(w).clone(), torch.from_numpy(h).clone()
    cols = wt.shape[1]
    dead = torch.diag(ht) == 0
    ht[dead, dead] = 1.0
    wt[:, dead] = 0.0
    ht += DAMP * torch.mean(torch.diag(ht)) * torch.eye(cols)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(ht)), upper=True)
    maxq = 2**BITS - 1
    q_all = torch.zeros_like(wt)
    for i1 in range(0, cols, BLOCK):
        i2 = min(i1 + BLOCK, cols)
        w1 = wt[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        lo = torch.clamp(w1.min(dim=1).values, max=0.0)
        hi = torch.clamp(w1.max(dim=1).values, min=0.0)
        scale = (hi - lo) / maxq
        scale[scale == 0] = 1.0
        zero = torch.round(-lo / scale)
        for i in range(i2 - i1):
            col = w1[:, i]
            q = (torch.clamp(torch.round(col / scale) + zero, 0, maxq) - zero) * scale
            err = (col - q) / hinv[i1 + i, i1 + i]
            w1[:, i:] -= err[:, None] * hinv[i1 + i, i1 + i : i2][None, :]
            err1[:, i] = err
            q_all[:, i1 + i] = q
        wt[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    out: F32 = q_all.numpy()
    return out


def _timed(fn: Callable[[F32, F32], F32], w: F32, h: F32) -> tuple[float, F32]:
    t0 = time.perf_counter()
    out = fn(w, h)
    return time.perf_counter() - t0, out


def _check(w: F32, h: F32, w_hat: F32, rtn_err: float) -> float:
    err = output_error(w, w_hat, h)
    if not 0 < err < rtn_err:
        raise AssertionError(f"GPTQ error {err:.4g} is not below RTN's {rtn_err:.4g}")
    return err


def _threads() -> str:
    env = ", ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS") if k in os.environ)
    return f"{os.cpu_count()} CPUs; {env or 'no thread variables set'}"


def test_lowbit(benchmark: Any) -> None:
    w, h = make_layer()
    w_hat = benchmark.pedantic(run_lowbit, args=(w, h), rounds=1, iterations=1)
    rtn = lowbit.quantize(w, f"int{BITS}", group_size=GROUP).dequantize()
    _check(w, h, w_hat, output_error(w, rtn, h))


def test_torch(benchmark: Any) -> None:
    import pytest  # here, so that the __main__ table runs where pytest is not installed

    torch = pytest.importorskip("torch")
    benchmark.extra_info["torch threads"] = torch.get_num_threads()
    w, h = make_layer()
    w_hat = benchmark.pedantic(run_torch, args=(w, h), rounds=1, iterations=1)
    rtn = lowbit.quantize(w, f"int{BITS}", group_size=GROUP).dequantize()
    _check(w, h, w_hat, output_error(w, rtn, h))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=N, help="rows = cols of the layer (default 4096)")
    args = ap.parse_args()
    w, h = make_layer(args.size)
    rtn_err = output_error(w, lowbit.quantize(w, f"int{BITS}", group_size=GROUP).dequantize(), h)
    impls: dict[str, Callable[[F32, F32], F32]] = {"lowbit": run_lowbit}
    try:
        torch: Any = importlib.import_module("torch")
        impls["torch"] = run_torch
        torch_note = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    except ImportError:
        torch_note = "torch not importable: skipped"
    times: dict[str, list[float]] = {k: [] for k in impls}
    errors: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, fn in impls.items():  # alternate, so machine load affects both alike
            s, w_hat = _timed(fn, w, h)
            times[name].append(s)
            errors[name] = _check(w, h, w_hat, rtn_err)
    if "torch" in errors and abs(errors["torch"] / errors["lowbit"] - 1) > 0.05:
        raise AssertionError(f"lowbit and torch GPTQ errors differ: {errors}")
    print(f"GPTQ int{BITS}-g{GROUP}, {args.size}×{args.size}, H from {TOKENS} tokens; {_threads()}; {torch_note}")
    print(f"RTN relative proxy error {rtn_err:.4g}")
    print(f"{'impl':8} {'median s':>9} {'min s':>8} {'error':>10}")
    for name, ts in times.items():
        print(f"{name:8} {statistics.median(ts):9.2f} {min(ts):8.2f} {errors[name]:10.4g}")
    if "torch" in times:
        print(
            f"lowbit / torch median time: {statistics.median(times['lowbit']) / statistics.median(times['torch']):.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
