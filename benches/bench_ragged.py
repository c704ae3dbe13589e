"""Ragged k-types against their aligned k-quant: GEMV (n = 1) weight GB/s of `q*_kr` on rows with a
tail (4096 + 64 and 4096 + 192 values: 2 and 6 tail units) against `q*_k` on rows of 4096, weights
streaming from DRAM, in the same process. Issue 9's target: the ragged rows within 5 % of the aligned
type's weight GB/s.

* Weights: a seeded N(0, 0.02²) f32 matrix of 4096 rows quantized once; ceil(--gib GiB / size) distinct
  copies, cycled, so every call reads from DRAM. Weight GB/s = stored bytes (tails included) per second.
* Before timing, each result is checked against float64 numpy (relative RMS error < 2 %).
* The aligned and the ragged matrices alternate within each repeat (machine load affects both); figures
  are medians of --repeats passes (default 27: with 9, a cell moves ±3 % from run to run on a shared
  2-core machine). One child process per (type, threads), RAYON_NUM_THREADS = threads.

    .venv/bin/python benches/bench_ragged.py [--types q4_kr,q6_kr] [--threads 1,2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lowbit
from bench_matmul import TOLERANCE, copies, rel_rms

TYPES = ["q2_kr", "q3_kr", "q4_kr", "q5_kr", "q6_kr"]
ROWS, ALIGNED, TAILS = 4096, 4096, (64, 192)


def measure(qtype: str, gib: float, repeats: int) -> dict[str, Any]:
    """Seconds per pass and bytes of the aligned (`cols` 4096) and each ragged matrix set."""
    r = np.random.default_rng(0)
    sets: dict[str, tuple[list[lowbit.QTensor], np.ndarray[Any, Any]]] = {}
    out: dict[str, Any] = {"bytes": {}, "s": {}}
    for cols in (ALIGNED, *(ALIGNED + t for t in TAILS)):
        qt = lowbit.quantize(r.standard_normal((ROWS, cols), np.float32) * np.float32(0.02), qtype)
        assert qt.qtype == (qtype[:-1] if cols % 256 == 0 else qtype)
        x = r.standard_normal((1, cols), np.float32)
        err = rel_rms(lowbit.matmul(x, qt), x.astype(np.float64) @ qt.dequantize().astype(np.float64).T)
        if not err < TOLERANCE:
            raise AssertionError(f"{qt.qtype} {ROWS}x{cols}: relative RMS error {err:.4g} vs float64")
        k = max(1, math.ceil(gib * 2**30 / qt.nbytes))
        name = f"{qt.qtype} cols={cols}"
        sets[name] = (copies(qt, k), x)
        out["bytes"][name] = k * qt.nbytes
        out["s"][name] = []
    for mats, x in sets.values():  # warm-up: page faults of the copies, the thread pool
        for m in mats:
            lowbit.matmul(x, m)
    for _ in range(repeats):
        for name, (mats, x) in sets.items():
            t0 = time.perf_counter()
            for m in mats:
                lowbit.matmul(x, m)
            out["s"][name].append(time.perf_counter() - t0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", type=lambda s: s.split(","), default=TYPES)
    ap.add_argument("--threads", type=lambda s: [int(t) for t in s.split(",")], default=[1, 2])
    ap.add_argument("--gib", type=float, default=1.0, help="GiB of distinct weights per pass (default 1)")
    ap.add_argument("--repeats", type=int, default=27)
    ap.add_argument("--json", type=Path, help="write every sample here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        cfg = json.loads(args.child)
        print(json.dumps(measure(cfg["qtype"], cfg["gib"], cfg["repeats"])))
        return 0
    print(f"lowbit {lowbit.__version__}, isa {lowbit.isa()}, {os.cpu_count()} CPUs; GEMV n=1, {ROWS} rows, "
          f"{args.gib} GiB of distinct weights per pass, median of {args.repeats}")  # fmt: skip
    print(f"{'type':<8} {'thr':>3} {'matrix':<22} {'GB/s':>7} {'vs aligned':>10}")
    results = []
    for qtype in args.types:
        for threads in args.threads:
            cfg = {"qtype": qtype, "gib": args.gib, "repeats": args.repeats}
            print(f"running {qtype} threads={threads}", file=sys.stderr, flush=True)
            env = {**os.environ, "RAYON_NUM_THREADS": str(threads)}
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)], env=env,
                                  capture_output=True, text=True)  # fmt: skip
            if proc.returncode != 0:
                raise RuntimeError(f"child {cfg} failed:\n{proc.stderr}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append({"qtype": qtype, "threads": threads, **res})
            gbs = {n: res["bytes"][n] / statistics.median(s) / 1e9 for n, s in res["s"].items()}
            aligned = next(iter(gbs.values()))
            for name, v in gbs.items():
                print(f"{qtype:<8} {threads:>3} {name:<22} {v:>7.2f} {v / aligned:>10.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
