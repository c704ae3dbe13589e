"""lowbit against ggml, side by side in one process on the same input: quantize throughput
(ratio lowbit / ggml, medians of interleaved runs) and error (RMSE, and with an importance matrix
the importance-weighted error), on a 4096×4096 standard-normal matrix and on real weight rows.

ggml is reached through `ggml_anchor.py` (PyPI's llama-cpp-python builds it; optional), e.g.:

    /work/anchor-venv/bin/python -m pip install numpy gguf llama-cpp-python   # once, ~20 min build
    make build
    PYTHONPATH=python /path/to/that/venv/bin/python benches/bench_vs_ggml.py [--real data/...gguf]

Thread counts: ggml's `ggml_quantize_chunk` is single-threaded; lowbit runs with
RAYON_NUM_THREADS=1 (the ratio that compares kernels) and =2 (all cores of this machine), each in
its own subprocess because rayon reads the variable once.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ggml_anchor as ga
import lowbit

F32 = npt.NDArray[np.float32]
TYPES = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_nl"]


def timed(fn: Callable[[], object]) -> float:
    """Seconds of one call."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def speed(x: F32, types: list[str], repeats: int) -> dict[str, dict[str, float]]:
    """MB/s of f32 input for ggml and lowbit, measured alternately so load affects both."""
    out = {}
    mb = x.nbytes / 1e6
    for t in types:
        ga.ggml_quantize(t, x)  # warm-up
        lowbit.quantize(x, t)
        g_times, l_times = [], []
        for _ in range(repeats):
            g_times.append(timed(lambda t=t: ga.ggml_quantize(t, x)))  # type: ignore[misc]
            l_times.append(timed(lambda t=t: lowbit.quantize(x, t)))  # type: ignore[misc]
        out[t] = {"ggml": mb / statistics.median(g_times), "lowbit": mb / statistics.median(l_times)}
    return out


def weighted_rmse(y: F32, x: F32, w: F32) -> float:
    return float(np.sqrt(np.mean(((y - x) ** 2) * w) / np.mean(w)))


def errors(x: F32, types: list[str], imp: F32 | None) -> dict[str, dict[str, float]]:
    """RMSE (or importance-weighted RMSE when `imp` is given) of ggml and of lowbit."""
    rows, cols = x.shape
    w = np.ones(cols, np.float32) if imp is None else imp
    out = {}
    for t in types:
        gy = ga.ggml_dequantize(t, ga.ggml_quantize(t, x, imp), rows, cols)
        ly = lowbit.quantize(x, t, importance=imp).dequantize()
        out[t] = {"ggml": weighted_rmse(gy, x, w), "lowbit": weighted_rmse(ly, x, w)}
    return out


def real_rows(path: Path) -> F32:
    """Every ffn_down matrix (rows of 1536, a multiple of 256) of the demo model, de-gridded with
    seeded noise of 0.3 q4_1 steps (the file stores q4_1; see ARCHITECTURE.md §6)."""
    from gguf import GGUFReader
    from gguf import quants as gq

    mats = []
    for t in GGUFReader(path).tensors:
        if t.name.endswith("ffn_down.weight"):
            mats.append(gq.dequantize(t.data, t.tensor_type).reshape(-1, int(t.shape[0])).astype(np.float32))
    x = np.concatenate(mats)
    b = x.reshape(-1, 32)
    step = (b.max(1, keepdims=True) - b.min(1, keepdims=True)) / 15
    b = b + np.random.default_rng(0).standard_normal(b.shape).astype(np.float32) * 0.3 * step
    return np.ascontiguousarray(b.reshape(x.shape))


def child(args: argparse.Namespace) -> None:
    x = np.random.default_rng(0).standard_normal((args.rows, 4096), dtype=np.float32)
    print(json.dumps(speed(x, args.types, args.repeats)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--types", type=lambda s: s.split(","), default=TYPES)
    ap.add_argument("--real", type=Path, help="the demo GGUF, for the error table on real rows")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0

    print(f"lowbit {lowbit.__version__} (isa {lowbit.isa()}) vs ggml {ga.ggml_version()} ({ga.ggml_commit()})")
    speeds = {}
    for threads in (1, 2):
        env = {**os.environ, "RAYON_NUM_THREADS": str(threads)}
        cmd = [sys.executable, __file__, "--child", "--rows", str(args.rows), "--repeats", str(args.repeats)]
        cmd += ["--types", ",".join(args.types)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        speeds[threads] = json.loads(proc.stdout)
    print(f"\nQuantize, {args.rows}×4096 f32, MB/s of input (median of {args.repeats} interleaved runs)")
    print(f"{'type':<8} {'ggml 1t':>9} {'lowbit 1t':>10} {'ratio':>7} {'lowbit 2t':>10} {'ratio':>7}")
    for t in args.types:
        g = speeds[1][t]["ggml"]
        l1, l2 = speeds[1][t]["lowbit"], speeds[2][t]["lowbit"]
        print(f"{t:<8} {g:>9.0f} {l1:>10.0f} {l1 / g:>6.1f}× {l2:>10.0f} {l2 / g:>6.1f}×")

    r = np.random.default_rng(1)
    sources = {"normal 512×4096": r.standard_normal((512, 4096), dtype=np.float32)}
    if args.real:
        sources["SmolLM2 ffn_down (de-gridded)"] = real_rows(args.real)
    for name, x in sources.items():
        imp = np.exp(r.standard_normal(x.shape[1]) * 1.5).astype(np.float32)
        plain, weighted = errors(x, args.types, None), errors(x, args.types, imp)
        print(f"\nError on {name}: RMSE; with a log-normal importance vector, importance-weighted RMSE")
        print(
            f"{'type':<8} {'ggml':>10} {'lowbit':>10} {'ratio':>7}   {'ggml+imp':>10} {'lowbit+imp':>10} {'ratio':>7}"
        )
        for t in args.types:
            p, w = plain[t], weighted[t]
            print(
                f"{t:<8} {p['ggml']:>10.6f} {p['lowbit']:>10.6f} {p['lowbit'] / p['ggml']:>7.4f}"
                f"   {w['ggml']:>10.6f} {w['lowbit']:>10.6f} {w['lowbit'] / w['ggml']:>7.4f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
