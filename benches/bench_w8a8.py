"""W8A8 through Python: `lowbit.matmul(x, W)` for one `int8-row-sym` weight multiplied three ways —
weight-only int8 (activations quantized to int8 blocks of 32 with f32 scales), W8A8 with a static
per-tensor activation step, W8A8 with dynamic per-token steps — in the same process, alternating,
medians of `--repeats`: GEMV (n = 1, cycling over distinct copies of the weight, `--gemv-mb` in
total, so they stream from DRAM) and GEMM (n = `--n`) in GFLOPS, and each W8A8 mode's ratio to the
weight-only path. Threads: rayon's pool (RAYON_NUM_THREADS).

Correctness first: each mode's result must be within 2% relative RMS of float64 numpy on the
dequantized weight.

    PYTHONPATH=python python benches/bench_w8a8.py [--rows 4096 --cols 4096 --n 512 --repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import lowbit
from lowbit import QTensor

TOLERANCE = 0.02  # relative RMS error vs float64 allowed for int8 activations


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--n", type=int, default=512, help="GEMM activation rows (default 512)")
    ap.add_argument("--gemv-mb", type=int, default=512, help="MB of distinct weight copies for GEMV (default 512)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((args.rows, args.cols)) * 0.05).astype(np.float32)
    base = lowbit.quantize(w, "int8-row-sym")
    xn = rng.standard_normal((args.n, args.cols)).astype(np.float32)
    x1 = rng.standard_normal((1, args.cols)).astype(np.float32)
    step = float(np.abs(xn).max()) / 127
    modes = {
        "int8 weight-only": base,
        "W8A8 static": base.with_act(lowbit.ActQuant("static", step)),
        "W8A8 dynamic": base.with_act(lowbit.ActQuant("dynamic")),
    }
    ref = xn[:64].astype(np.float64) @ base.dequantize().astype(np.float64).T
    for name, qt in modes.items():
        err = np.linalg.norm(lowbit.matmul(xn[:64], qt) - ref) / np.linalg.norm(ref)
        assert err < TOLERANCE, f"{name}: relative RMS error {err:.3g}"
    copies = max(1, args.gemv_mb * 2**20 // base.nbytes)
    gemv = {
        name: [
            QTensor(qt.qtype, qt.shape, qt.data.copy(), group_size=0, symmetric=True, act=qt.act) for _ in range(copies)
        ]
        for name, qt in modes.items()
    }
    times: dict[tuple[str, str], list[float]] = {(k, m): [] for k in ("gemv", "gemm") for m in modes}
    for _ in range(args.repeats):
        for name, qt in modes.items():
            t0 = time.perf_counter()
            for c in gemv[name]:
                lowbit.matmul(x1, c)
            t1 = time.perf_counter()
            lowbit.matmul(xn, qt)
            times["gemv", name].append((t1 - t0) / copies)
            times["gemm", name].append(time.perf_counter() - t1)
    print(f"lowbit {lowbit.__version__}, isa {lowbit.isa()}; W {args.rows} × {args.cols}; medians of {args.repeats}")
    print(f"| path | GEMV n=1 GFLOPS | ratio | GEMM n={args.n} GFLOPS | ratio |")
    print("|---|--:|--:|--:|--:|")
    gf = {
        (k, m): 2.0 * args.rows * args.cols * (1 if k == "gemv" else args.n) / statistics.median(t) / 1e9
        for (k, m), t in times.items()
    }
    wo = "int8 weight-only"
    for m in modes:
        print(
            f"| {m} | {gf['gemv', m]:.1f} | {gf['gemv', m] / gf['gemv', wo]:.2f} "
            f"| {gf['gemm', m]:.1f} | {gf['gemm', m] / gf['gemm', wo]:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
