"""Calibrated quantization on the demo model (issues 6, 7): round-to-nearest vs importance
statistics (imatrix) vs GPTQ vs AWQ (and AWQ's scales + GPTQ), at the same types, measured with
`lowbit.evaluate` against the float32 baseline.

* Baseline: the de-gridded demo checkpoint of `quality_vs_llamacpp.py` (ARCHITECTURE.md §6; made
  there when missing, in the same cache directory): its weights no longer sit on q4_1's grid.
* Calibration: the packaged Jane Austen text, `--samples` × `--seq-len` tokens, seed 0;
  evaluation: Botchan (another text), the first `--tokens` tokens, windows of 512, second half
  scored; the LBF files run as they are (the engine, int8 activations).
* GPTQ: `convert(..., method="gptq")` with act-order for the group-affine types; on a k-quant
  recipe GPTQ is fitted to the k-quant grids (`lowbit.algos.gptq_blocks`).
* AWQ: `convert(..., method="awq")` (scales + clipping), `method="awq+gptq"` (scales, then GPTQ
  with act-order).

Files and metrics are cached in `<work>/calibrated/` (a file is re-made only when missing).

Usage: python benches/quality_calibrated.py [--samples 32] [--seq-len 512] [--tokens 8192]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from quality_vs_llamacpp import CACHE, log, prepare_base

# (label, recipe, convert options besides the calibration sizes)
ROWS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("int4-g128 rtn", "int4-g128", {}),
    ("int4-g128 gptq", "int4-g128", {"method": "gptq", "act_order": True}),
    ("int4-g128 awq", "int4-g128", {"method": "awq"}),
    ("int4-g128 awq+gptq", "int4-g128", {"method": "awq+gptq", "act_order": True}),
    ("int3-g128 rtn", "int3-g128", {}),
    ("int3-g128 gptq", "int3-g128", {"method": "gptq", "act_order": True}),
    ("int3-g128 awq", "int3-g128", {"method": "awq"}),
    ("int3-g128 awq+gptq", "int3-g128", {"method": "awq+gptq", "act_order": True}),
    ("q4_k_m rtn", "q4_k_m", {}),
    ("q4_k_m imatrix", "q4_k_m", {"imatrix": "auto"}),
    ("q4_k_m gptq", "q4_k_m", {"method": "gptq"}),
    ("q4_k_m awq", "q4_k_m", {"method": "awq"}),
)


def make(base: Path, out: Path, recipe: str, opts: dict[str, Any], args: argparse.Namespace) -> float:
    """Convert `base` to `out`; the wall time in seconds."""
    import lowbit
    from lowbit.algos import GPTQConfig

    kw: dict[str, Any] = {"calib_samples": args.samples, "calib_seq_len": args.seq_len, "progress": False}
    if "method" in opts:
        kw.update(method=opts["method"], gptq=GPTQConfig(act_order=bool(opts.get("act_order"))))
    elif "imatrix" in opts:
        kw["imatrix"] = opts["imatrix"]
    t0 = time.perf_counter()
    lowbit.convert(base, out, recipe, overwrite=True, **kw)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=CACHE / "quality-vs-llamacpp" / "seed0")
    ap.add_argument("--hf", type=Path, default=CACHE / "SmolLM2-135M-Instruct.Q4_1-hf")
    ap.add_argument("--gguf", type=Path, default=CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--text", type=Path, default=CACHE / "botchan.txt")
    ap.add_argument("--samples", type=int, default=32, help="calibration samples (default 32)")
    ap.add_argument("--seq-len", type=int, default=512, help="tokens per calibration sample (default 512)")
    ap.add_argument("--tokens", type=int, default=8192, help="evaluation tokens (default 8192)")
    ap.add_argument("--seed", type=int, default=0, help="de-gridding seed (default 0)")
    ap.add_argument("--fresh", action="store_true", help="re-make the baseline")
    args = ap.parse_args()
    import lowbit

    base, ref, _ = prepare_base(args)
    work = args.work / "calibrated"
    work.mkdir(exist_ok=True)
    table = []
    with lowbit.Model.load(ref) as ref_model:
        for label, recipe, opts in ROWS:
            path = work / (label.replace(" ", "-") + f"-n{args.samples}.lbf")
            meta = path.with_name(path.name + ".json")
            got = json.loads(meta.read_text()) if meta.exists() and path.exists() else {}
            if "seconds" not in got:
                log(f"converting {label}")
                got = {"seconds": make(base, path, recipe, opts, args)}
            key = f"eval{args.tokens}"
            if key not in got:
                log(f"evaluating {label}")
                r = lowbit.evaluate(path, args.text, reference=ref_model, tokens=args.tokens, progress=False)
                got[key] = {"ppl": r.ppl, "ref_ppl": r.reference_ppl, "kld": r.kld_mean, "top1": r.top1_agreement,
                            "bpw": r.bits_per_weight}  # fmt: skip
            meta.write_text(json.dumps(got))
            table.append((label, got["seconds"], got[key]))
    ref_ppl = table[0][2]["ref_ppl"]
    print(f"| method | bpw | PPL (f32 {ref_ppl:.3f}) | mean KLD | KLD / RTN's | top-1 | convert s |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    rtn: dict[str, float] = {}
    for label, secs, m in table:
        kind = label.split()[0]
        rtn.setdefault(kind, m["kld"])
        print(f"| {label} | {m['bpw']:.3f} | {m['ppl']:.3f} | {m['kld']:.5f} | {m['kld'] / rtn[kind]:.2f} "
              f"| {100 * m['top1']:.1f} % | {secs:.0f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
