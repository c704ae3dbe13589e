"""Quantized matmul, lowbit against ggml side by side in the same run: GEMV (n = 1) weight GB/s with
weights streaming from DRAM, as a fraction of the DRAM read bandwidth measured in the same run, and
GEMM (n = 512) GFLOPS.

* Weights: a seeded N(0, 0.02²) f32 matrix quantized once with `lowbit.quantize`; ggml multiplies the
  very same block bytes (lowbit's bytes are ggml's layout for the ggml types). GEMV cycles through
  ceil(--gib GiB / matrix size) distinct copies of it (each library has its own copies), so every
  call reads its weights from DRAM, not from cache.
* Correctness first: before timing, lowbit's and ggml's results on a random x must agree with
  float64 numpy (x @ dequantize(W).T) to a relative RMS error < 2% (both quantize x to int8 blocks).
* Timing: lowbit and ggml alternate within each child process so machine load affects both; every
  figure is a median of --repeats runs (one run = one pass over all matrices, or one GEMM call).
  One child process per (shape, type, threads): lowbit runs on rayon's global pool, sized once from
  RAYON_NUM_THREADS; ggml gets the same n_threads.
* ggml "repacked" = the weights in the CPU backend's CPU_REPACK buffer (what llama.cpp does at load
  by default), for the types it repacks on AVX2 (q4_0, q4_k, iq4_nl). lowbit "packed" = the weights
  through `lowbit.pack` (what lowbit.Model does at load on AVX-512 VNNI CPUs), for q4_0 and iq4_nl.
* DRAM probe: a 2 GiB float32 matrix times a vector (numpy → OpenBLAS sgemv, one BLAS thread per
  Python thread, each thread on its own half): read GB/s with 1 and 2 threads, measured at the start
  and at the end of the run; the median of all samples is the reference.

ggml comes from `ggml_matmul.py` (PyPI's llama-cpp-python's libraries; optional: without them the
ggml columns are empty). Run from the repo root with a Python that has both, e.g.

    PYTHONPATH=python /work/anchor-venv/bin/python benches/bench_matmul.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lowbit

F32 = npt.NDArray[np.float32]
TYPES = ["q4_0", "q4_k", "q8_0", "q6_k", "q3_k", "q2_k", "q5_k", "iq4_nl", "int4-g128", "int3-g128", "int3-g16-dq",
         "f16"]  # fmt: skip
GEMV_SHAPES = [(4096, 4096), (14336, 4096)]
GEMM_SHAPE = (4096, 4096)
TOLERANCE = 0.02  # relative RMS error vs float64, allowed for int8-quantized activations
PROBE_COLS = 4096


def timings(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of each of `repeats` calls of `fn`, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def probe(threads: int, gib: float, repeats: int) -> list[float]:
    """DRAM read GB/s samples: a (gib GiB / 16 KiB, 4096) float32 matrix times a vector, split
    into `threads` row blocks each multiplied in its own Python thread (numpy releases the GIL)."""
    a = np.ones((int(gib * 2**30) // (4 * PROBE_COLS), PROBE_COLS), np.float32)
    v = np.ones(PROBE_COLS, np.float32)
    parts = np.array_split(a, threads)

    def once() -> None:
        ts = [threading.Thread(target=np.matmul, args=(p, v)) for p in parts]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    return [a.nbytes / s / 1e9 for s in timings(once, repeats)]


def rel_rms(y: npt.NDArray[Any], ref: npt.NDArray[np.float64]) -> float:
    return float(np.linalg.norm(y.astype(np.float64) - ref) / np.linalg.norm(ref))


def copies(qt: lowbit.QTensor, k: int) -> list[lowbit.QTensor]:
    """`k` QTensors with the same bytes in distinct memory."""
    return [lowbit.QTensor(qt.qtype, qt.shape, qt.data.copy(), group_size=qt.group_size, symmetric=qt.symmetric)
            for _ in range(k)]  # fmt: skip


# The types `lowbit.pack` packs (what lowbit.Model does at load on AVX-512 VNNI CPUs).
PACKED = ("q4_0", "iq4_nl")


def measure(cfg: dict[str, Any]) -> dict[str, Any]:
    """One configuration (run in its own child process): seconds per run for lowbit, ggml and
    ggml repacked (when available), and the correctness errors checked before timing."""
    try:
        import ggml_matmul as gm
    except ImportError:
        gm = None  # type: ignore[assignment]
    rows, cols, n, qtype, threads = cfg["rows"], cfg["cols"], cfg["n"], cfg["qtype"], cfg["threads"]
    r = np.random.default_rng(0)
    qt = lowbit.quantize(r.standard_normal((rows, cols), np.float32) * np.float32(0.02), qtype)
    k = max(1, math.ceil(cfg["gib"] * 2**30 / qt.nbytes)) if n == 1 else 1
    x = r.standard_normal((n, cols), np.float32)
    ref = x.astype(np.float64) @ qt.dequantize().astype(np.float64).T
    out: dict[str, Any] = {"matrices": k, "bytes": qt.nbytes, "bpw": qt.bits_per_weight, "err": {}, "s": {}}

    mats = copies(qt, k)
    out["err"]["lowbit"] = rel_rms(lowbit.matmul(x, mats[0]), ref)
    runs: dict[str, Callable[[], object]] = {"lowbit": lambda: [lowbit.matmul(x, m) for m in mats]}
    if qtype in PACKED:
        packed = [lowbit.pack(m) for m in mats]
        out["err"]["lowbit packed"] = rel_rms(lowbit.matmul(x, packed[0]), ref)
        runs["lowbit packed"] = lambda: [lowbit.matmul(x, p) for p in packed]
    engines = []
    if gm is not None and qtype in gm.TYPES:
        for name, repack in (("ggml", False), ("ggml repacked", True)):
            if repack and qtype not in gm.REPACKED:
                continue
            mm = gm.GgmlMatmul(qtype, [qt.data] * k, rows, cols, n, threads=threads, repack=repack)
            engines.append(mm)
            mm.set_x(x)
            mm.run(0)
            out["err"][name] = rel_rms(mm.result(0), ref)
            runs[name] = lambda mm=mm: [mm.run(i) for i in range(mm.count)]  # type: ignore[misc]
    for name, e in out["err"].items():
        if not e < TOLERANCE:
            raise AssertionError(f"{name} {qtype} {rows}x{cols} n={n}: relative RMS error {e:.4g} vs float64")
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():  # warm-up (page faults of the copies, thread pools)
        fn()
    for _ in range(cfg["repeats"]):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    for mm in engines:
        mm.close()
    out["s"] = samples
    return out


def child_main(spec: str) -> int:
    cfg = json.loads(spec)
    result = probe(cfg["threads"], cfg["gib"], cfg["repeats"]) if cfg["kind"] == "probe" else measure(cfg)
    print(json.dumps(result))
    return 0


def run_child(cfg: dict[str, Any]) -> Any:
    """Run one configuration in a fresh process with `threads` threads for rayon and one for BLAS."""
    print(f"running {cfg}", file=sys.stderr, flush=True)  # progress: a full run takes about half an hour
    env = {**os.environ, "RAYON_NUM_THREADS": str(cfg["threads"]), "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": str(cfg["threads"])}  # fmt: skip
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)], env=env, capture_output=True,
                          text=True)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"child {cfg} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt(v: float | None, spec: str = ".1f", unit: str = "") -> str:
    return "—" if v is None else format(v, spec) + unit


def ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None else f"{a / b:.2f}×"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", type=lambda s: s.split(","), default=TYPES)
    ap.add_argument("--threads", type=lambda s: [int(t) for t in s.split(",")], default=[1, 2])
    ap.add_argument("--gib", type=float, default=1.0, help="GiB of distinct weights per GEMV pass (default 1)")
    ap.add_argument("--probe-gib", type=float, default=2.0, help="size of the DRAM probe's array (default 2)")
    ap.add_argument("--gemm-n", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="smoke run: 4096×4096 only, 128 MiB, n=64, 3 repeats")
    ap.add_argument("--json", type=Path, help="write every sample here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child_main(args.child)
    shapes = GEMV_SHAPES
    if args.quick:
        shapes, args.gib, args.probe_gib, args.gemm_n, args.repeats = GEMV_SHAPES[:1], 0.125, 0.25, 64, 3

    try:
        import ggml_anchor as ga
        import ggml_matmul  # noqa: F401  (libggml-cpu must load too)

        anchor = f"ggml {ga.ggml_version()} ({ga.ggml_commit()}) from {ga.lib_dir()}"
    except ImportError as exc:
        anchor = f"no ggml anchor ({exc})"
    print(f"lowbit {lowbit.__version__} (isa {lowbit.isa()}) vs {anchor}")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load average at start "
          f"{os.getloadavg()[0]:.2f}; medians of {args.repeats} runs\n")  # fmt: skip

    record: dict[str, Any] = {"probe": {}, "gemv": {}, "gemm": {}, "load_start": os.getloadavg()}
    base = {"gib": args.gib, "repeats": args.repeats}
    for t in args.threads:
        record["probe"][t] = run_child({**base, "kind": "probe", "threads": t, "gib": args.probe_gib})
    for rows, cols in shapes:
        for q in args.types:
            for t in args.threads:
                cfg = {**base, "kind": "mm", "rows": rows, "cols": cols, "n": 1, "qtype": q, "threads": t}
                record["gemv"][f"{rows}x{cols} {q} {t}"] = run_child(cfg)
    for q in args.types:
        for t in args.threads:
            cfg = {**base, "kind": "mm", "rows": GEMM_SHAPE[0], "cols": GEMM_SHAPE[1], "n": args.gemm_n,
                   "qtype": q, "threads": t}  # fmt: skip
            record["gemm"][f"{q} {t}"] = run_child(cfg)
    for t in args.threads:  # the probe again at the end: how much did the machine drift?
        record["probe"][t] += run_child({**base, "kind": "probe", "threads": t, "gib": args.probe_gib})
    record["load_end"] = os.getloadavg()

    dram = {t: statistics.median(s) for t, s in record["probe"].items()}
    print("DRAM read probe (2 GiB f32 sgemv), GB/s, median (min–max) of start and end samples:")
    for t, s in record["probe"].items():
        print(f"  {t} thread{'s' if t > 1 else ''}: {dram[t]:.1f} ({min(s):.1f}–{max(s):.1f})")

    def speed(res: dict[str, Any], name: str, work: float) -> float | None:
        return work / statistics.median(res["s"][name]) if name in res["s"] else None

    for rows, cols in shapes:
        print(f"\nGEMV n=1, {rows}×{cols}, ≥ {args.gib:g} GiB of distinct weights: weight GB/s (10^9 B/s)\n")
        print("| type | bpw | threads | lowbit | ggml | lowbit / ggml | lowbit packed | ggml repacked "
              "| packed / repacked | lowbit % DRAM | packed % DRAM | ggml % DRAM |")  # fmt: skip
        print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        for q in args.types:
            for t in args.threads:
                res = record["gemv"][f"{rows}x{cols} {q} {t}"]
                gb = res["matrices"] * res["bytes"] / 1e9
                lb, gg, rp = speed(res, "lowbit", gb), speed(res, "ggml", gb), speed(res, "ggml repacked", gb)
                pk = speed(res, "lowbit packed", gb)
                pct = [None if v is None else 100 * v / dram[t] for v in (lb, pk, gg)]
                print(f"| {q} | {res['bpw']:.2f} | {t} | {fmt(lb)} | {fmt(gg)} | {ratio(lb, gg)} | {fmt(pk)} "
                      f"| {fmt(rp)} | {ratio(pk, rp)} | {fmt(pct[0], '.0f', '%')} | {fmt(pct[1], '.0f', '%')} "
                      f"| {fmt(pct[2], '.0f', '%')} |")  # fmt: skip
    rows, cols = GEMM_SHAPE
    print(f"\nGEMM n={args.gemm_n}, {rows}×{cols}: GFLOPS (2·n·rows·cols / s)\n")
    print("| type | threads | lowbit | ggml | lowbit / ggml | lowbit packed | ggml repacked | lowbit / repacked |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    flop = 2 * args.gemm_n * rows * cols / 1e9
    for q in args.types:
        for t in args.threads:
            res = record["gemm"][f"{q} {t}"]
            lb, gg, rp = speed(res, "lowbit", flop), speed(res, "ggml", flop), speed(res, "ggml repacked", flop)
            pk = speed(res, "lowbit packed", flop)
            print(f"| {q} | {t} | {fmt(lb)} | {fmt(gg)} | {ratio(lb, gg)} | {fmt(pk)} | {fmt(rp)} | {ratio(lb, rp)} |")
    la, lb_ = record["load_start"], record["load_end"]
    print(f"\nload average (1 min) {la[0]:.2f} at start, {lb_[0]:.2f} at end")
    if args.json:
        args.json.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
