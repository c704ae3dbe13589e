"""Convert speed and memory on the demo model (SmolLM2-135M as a float32 HF checkpoint).

Each round runs, in fresh child processes so that peak RSS is the child's own:

* anchor "read": the process that only imports lowbit and reads every source shard through once
  (16 MiB `readinto` chunks) — the floor of both time (the bytes must be read) and RSS (the
  interpreter, numpy and lowbit);
* `lowbit convert HF -o OUT.lbf -t RECIPE` for each recipe.

Reported per recipe, medians over the rounds (min–max): wall seconds, MB/s of source weights,
time ratio against the read anchor, peak RSS (VmHWM), RSS above the anchor's, and that excess as
a multiple of the largest tensor's float32 size and as a fraction of the model's float32 size.

    .venv/bin/python benches/bench_convert.py [--hf DIR | --gguf FILE] [--repeat 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RECIPES = ("q4_k_m", "int4-g128", "q8_0")

READ_CHILD = """
import sys, time, lowbit, numpy
buf = bytearray(16 << 20)
t0 = time.perf_counter()
for p in sys.argv[1:]:
    with open(p, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
print(time.perf_counter() - t0)
"""

CONVERT_CHILD = """
import sys, time
from lowbit.conversion import convert
t0 = time.perf_counter()
convert(sys.argv[1], sys.argv[2], sys.argv[3], overwrite=True, progress=False)
print(time.perf_counter() - t0)
"""


def run_child(code: str, *args: str) -> tuple[float, int]:
    """(seconds the child reports, its peak RSS in bytes, read from /proc at exit via wait4)."""
    p = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    _, status, rusage = os.wait4(p.pid, 0)
    out = p.stdout.read() if p.stdout else ""
    if status != 0:
        raise RuntimeError(f"child failed ({status}): {code[:60]}...")
    return float(out.strip().splitlines()[-1]), rusage.ru_maxrss * 1024


def med(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}–{max(xs):.2f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hf", type=Path, help="float32 HF checkpoint dir (default: made from --gguf)")
    ap.add_argument("--gguf", type=Path, default=Path.home() / ".cache" / "lowbit" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from lowbit.conversion import gguf_to_hf, open_hf_checkpoint

    work = Path(tempfile.mkdtemp(prefix="bench-convert-"))
    hf = args.hf
    if hf is None:
        hf = work / "hf"
        gguf_to_hf(args.gguf, hf, progress=False)
    with open_hf_checkpoint(hf) as src:
        model_f32 = sum(4 * t.numel for t in src.tensors)
        largest = max(4 * t.numel for t in src.tensors)
    shards = [str(p) for p in sorted(hf.glob("*.safetensors"))]
    src_bytes = sum(os.path.getsize(p) for p in shards)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus; source {hf}: {src_bytes / 1e6:.1f} MB")
    print(f"model f32 {model_f32 / 2**20:.1f} MiB, largest tensor f32 {largest / 2**20:.1f} MiB")

    results: dict[str, dict[str, list[float]]] = {k: {"s": [], "rss": []} for k in ("read", *RECIPES)}
    for _ in range(args.repeat):
        s, rss = run_child(READ_CHILD, *shards)
        results["read"]["s"].append(s)
        results["read"]["rss"].append(rss)
        for r in RECIPES:
            s, rss = run_child(CONVERT_CHILD, str(hf), str(work / f"{r}.lbf"), r)
            results[r]["s"].append(s)
            results[r]["rss"].append(rss)
    base_rss = float(statistics.median(results["read"]["rss"]))
    base_s = statistics.median(results["read"]["s"])
    print(f"\n{'run':<10} {'seconds':>22} {'MB/s':>7} {'× read':>7} {'peak RSS MiB':>24} {'excess MiB':>11} "
          f"{'÷ largest':>9} {'÷ model':>8}")  # fmt: skip
    table: dict[str, Any] = {"src_bytes": src_bytes, "model_f32": model_f32, "largest_f32": largest, "runs": {}}
    for k, v in results.items():
        secs = float(statistics.median(v["s"]))
        peak = float(statistics.median(v["rss"]))
        excess = peak - base_rss
        mib = [x / 2**20 for x in v["rss"]]
        print(
            f"{k:<10} {med(v['s']):>22} {src_bytes / 1e6 / secs:>7.0f} {secs / base_s:>7.1f} {med(mib):>24} "
            f"{excess / 2**20:>11.1f} {excess / largest:>9.2f} {excess / model_f32:>8.3f}"
        )
        table["runs"][k] = {"seconds": v["s"], "peak_rss": v["rss"]}
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    t = time.perf_counter()
    rc = main()
    print(f"\n(bench took {time.perf_counter() - t:.0f} s)")
    raise SystemExit(rc)
