"""Float-weight matmul at the calibration forward pass's shapes: `lowbit.matmul(x, W)` with an f32
weight (the engine's kernel: 4 × 4 f32 dot blocks over the SIMD vocabulary) against numpy's BLAS
`x @ W.T` (the anchor) in the same process, one after the other (per shape: lowbit, then BLAS),
medians of `--repeats` after `--warmup` untimed calls of each (the first calls of a process ran up
to 1.6× slower).

Shapes: the demo model's q/k/v/gate/up inputs (576 columns) and down_proj (1536 columns) with n = 4096
tokens (8 calibration sequences of 512). Threads: rayon's pool (RAYON_NUM_THREADS) and the BLAS's
(OMP_NUM_THREADS / OPENBLAS_NUM_THREADS), both as the environment sets them.

    PYTHONPATH=python python benches/bench_f32_matmul.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
from functools import partial

import numpy as np

import lowbit
from bench_matmul import timings

SHAPES = ((576, 576), (1536, 576), (576, 1536))  # (rows, cols) of W


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096, help="activation rows (default 4096)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=5, help="untimed calls of each library first (default 5)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"lowbit {lowbit.__version__}, isa {lowbit.isa()}; n = {args.n}; medians of {args.repeats}")
    print("| W rows × cols | lowbit GFLOPS | numpy BLAS GFLOPS | lowbit / BLAS |")
    print("|---|--:|--:|--:|")
    for rows, cols in SHAPES:
        w = (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)
        x = rng.standard_normal((args.n, cols)).astype(np.float32)
        ref = x.astype(np.float64) @ w.T.astype(np.float64)
        assert np.abs(lowbit.matmul(x, w) - ref).max() <= 1e-4 * np.abs(ref).max()
        # One library at a time (OpenBLAS's idle threads spin for a while after each call and
        # took a core from lowbit's next call when the two alternated with two threads).
        times = {
            "lowbit": timings(partial(lowbit.matmul, x, w), args.repeats, args.warmup),
            "blas": timings(partial(np.matmul, x, w.T), args.repeats, args.warmup),
        }
        flop = 2.0 * rows * cols * args.n
        ours, blas = (flop / statistics.median(times[k]) / 1e9 for k in ("lowbit", "blas"))
        print(f"| {rows} × {cols} | {ours:.1f} | {blas:.1f} | {ours / blas:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
