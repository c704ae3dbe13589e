"""W8A8 on the demo model (issue 7): int8 weights per output channel × int8 activations, with and
without SmoothQuant, for every observer of the static activation steps, and with dynamic
per-token steps; measured with `lowbit.evaluate` against the float32 baseline.

* Baseline: the de-gridded demo checkpoint of `quality_vs_llamacpp.py` (made there when missing).
* Every file uses the `q8_0` recipe for the tensors outside the decoder layers (embeddings,
  output); the decoder linears are W8A8 (`--act int8`). The weight-only `q8_0` file is the anchor.
* Calibration: the packaged Jane Austen text, `--samples` × `--seq-len` tokens, seed 0;
  evaluation: Botchan, the first `--tokens` tokens, windows of 512, second half scored.

Files and metrics are cached in `<work>/w8a8/`.

Usage: python benches/quality_w8a8.py [--samples 32] [--seq-len 512] [--tokens 8192] [--alpha 0.5]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from quality_vs_llamacpp import CACHE, log, prepare_base

OBSERVERS = ("minmax", "percentile", "kl", "mse")  # the four (ema behaves like minmax)


def rows(alpha: float) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = [("q8_0 weight-only", {})]
    for obs in OBSERVERS:
        out.append((f"w8a8 static {obs}", {"act": "int8", "observer": obs}))
        out.append((f"smoothquant static {obs}", {"act": "int8", "observer": obs, "method": "smoothquant"}))
    out.append(("w8a8 dynamic", {"act": "int8-dynamic"}))
    out.append(("smoothquant dynamic", {"act": "int8-dynamic", "method": "smoothquant"}))
    for _, opts in out:
        if opts.get("method") == "smoothquant":
            opts["smooth_alpha"] = alpha
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=CACHE / "quality-vs-llamacpp" / "seed0")
    ap.add_argument("--hf", type=Path, default=CACHE / "SmolLM2-135M-Instruct.Q4_1-hf")
    ap.add_argument("--gguf", type=Path, default=CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--text", type=Path, default=CACHE / "botchan.txt")
    ap.add_argument("--samples", type=int, default=32, help="calibration samples (default 32)")
    ap.add_argument("--seq-len", type=int, default=512, help="tokens per calibration sample (default 512)")
    ap.add_argument("--tokens", type=int, default=8192, help="evaluation tokens (default 8192)")
    ap.add_argument("--alpha", type=float, default=0.5, help="SmoothQuant's α (default 0.5)")
    ap.add_argument("--seed", type=int, default=0, help="de-gridding seed (default 0)")
    ap.add_argument("--fresh", action="store_true", help="re-make the baseline")
    args = ap.parse_args()
    import lowbit

    base, ref, _ = prepare_base(args)
    work = args.work / "w8a8"
    work.mkdir(exist_ok=True)
    table = []
    with lowbit.Model.load(ref) as ref_model:
        for label, opts in rows(args.alpha):
            tag = f"-a{args.alpha}" if opts.get("method") == "smoothquant" else ""
            path = work / (label.replace(" ", "-") + f"{tag}-n{args.samples}.lbf")
            meta = path.with_name(path.name + ".json")
            got = json.loads(meta.read_text()) if meta.exists() and path.exists() else {}
            if "seconds" not in got:
                log(f"converting {label}")
                kw: dict[str, Any] = {"calib_samples": args.samples, "calib_seq_len": args.seq_len} if opts else {}
                t0 = time.perf_counter()
                lowbit.convert(base, path, "q8_0", overwrite=True, progress=False, **kw, **opts)
                got = {"seconds": time.perf_counter() - t0}
            key = f"eval{args.tokens}"
            if key not in got:
                log(f"evaluating {label}")
                r = lowbit.evaluate(path, args.text, reference=ref_model, tokens=args.tokens, progress=False)
                got[key] = {"ppl": r.ppl, "ref_ppl": r.reference_ppl, "kld": r.kld_mean, "top1": r.top1_agreement,
                            "bpw": r.bits_per_weight, "tps": r.tokens_per_second}  # fmt: skip
            meta.write_text(json.dumps(got))
            table.append((label, got["seconds"], got[key]))
    ref_ppl = table[0][2]["ref_ppl"]
    print(f"| file (SmoothQuant α = {args.alpha}) | bpw | PPL (f32 {ref_ppl:.3f}) | mean KLD | top-1 | eval tokens/s "
          "| convert s |")  # fmt: skip
    print("|---|--:|--:|--:|--:|--:|--:|")
    for label, secs, m in table:
        print(f"| {label} | {m['bpw']:.3f} | {m['ppl']:.3f} | {m['kld']:.5f} | {100 * m['top1']:.1f} % "
              f"| {m['tps']:.0f} | {secs:.0f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
