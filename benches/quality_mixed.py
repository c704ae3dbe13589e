"""Sparse outliers, small-group types and mixed precision on the demo model (issue 8): KLD
against the float32 baseline with bits per weight beside each figure, and the bpw/KLD curve of
`--target-bpw` against the fixed recipes.

* Baseline: the de-gridded demo checkpoint of `quality_vs_llamacpp.py` (ARCHITECTURE.md §6).
* Calibration (GPTQ, imatrix, the sensitivity of `--target-bpw`): the packaged Jane Austen text,
  `--samples` × `--seq-len` tokens, seed 0. Evaluation: Botchan, the first `--tokens` tokens,
  windows of 512, `lowbit.evaluate` with the f32 reference; files run as they are (the engine).
* bits per weight: 8 × tensor data bytes / parameters over every tensor of the file (norms, the
  embedding and every outlier sidecar included), as `lowbit.evaluate` reports it; and over the
  decoder linears alone (the figure papers quote: SpQR's "3.9 bits"). The int3/int4 rows keep
  the embedding/output at q8_0 as the int4-g128 recipe does.

Files and metrics are cached in `<work>/mixed/` (a file is re-made only when missing; a row's
metrics only when missing for these evaluation settings). `--only REGEX` picks rows.
`--json FILE` writes the rows; `--png FILE` plots the curve with matplotlib (if importable: the
plot alone can run from that JSON with `--plot-from FILE.json --png FILE`, in any Python with
matplotlib).

Usage: python benches/quality_mixed.py [--samples 32] [--seq-len 512] [--tokens 4096] [--png curve.png]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

CACHE = Path.home() / ".cache" / "lowbit"

# The embedding and output at q8_0, as the int4-g128/int3-g128 recipes keep them.
Q8_ENDS: dict[str, Any] = {"tensor_types": ["token_embd=q8_0", "^output$=q8_0"]}

# (label, recipe, convert options besides the calibration sizes). A row's curve is the label's
# first word: "fixed" recipes (round-to-nearest), "mixed" (--target-bpw), or single points.
ROWS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("fixed q2_k", "q2_k", {}),
    ("fixed q3_k_m", "q3_k_m", {}),
    ("fixed q4_k_m", "q4_k_m", {}),
    ("fixed q5_k_m", "q5_k_m", {}),
    ("fixed q6_k", "q6_k", {}),
    ("fixed q8_0", "q8_0", {}),
    ("point int4-g128 rtn", "int4-g128", {}),
    ("point int4-g128 gptq", "int4-g128", {"method": "gptq"}),
    ("point int3-g128 rtn", "int3-g128", {}),
    ("point int3-g128 rtn +0.5%", "int3-g128", {"outliers": 0.005}),
    ("point int3-g128 gptq", "int3-g128", {"method": "gptq"}),
    ("point int3-g128 gptq +0.5%", "int3-g128", {"method": "gptq", "outliers": 0.005}),
    ("point q3_k rtn +0.5%", "q3_k", {"outliers": 0.005, **Q8_ENDS}),
    ("point int3-g16-dq rtn", "int3-g16-dq", Q8_ENDS),
    ("point int3-g16-dq rtn +0.5%", "int3-g16-dq", {"outliers": 0.005, **Q8_ENDS}),
    ("point int3-g16-dq gptq", "int3-g16-dq", {"method": "gptq", **Q8_ENDS}),
    ("point int3-g16-dq gptq +0.5%", "int3-g16-dq", {"method": "gptq", "outliers": 0.005, **Q8_ENDS}),
    *((f"mixed rtn {b}", "q4_k_m", {"target_bpw": b}) for b in (2.5, 3.0, 3.5, 4.0, 4.5, 4.9, 5.5, 6.5)),
    ("mixed imatrix 4.9", "q4_k_m", {"target_bpw": 4.9, "imatrix": "auto"}),
    ("mixed gptq 4.9", "q4_k_m", {"target_bpw": 4.9, "method": "gptq"}),
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make(base: Path, out: Path, recipe: str, opts: dict[str, Any], args: argparse.Namespace) -> float:
    """Convert `base` to `out` with `opts`; the wall time in seconds."""
    import lowbit

    kw: dict[str, Any] = {"calib_samples": args.samples, "calib_seq_len": args.seq_len, "progress": False}
    kw.update(opts)
    if "target_bpw" in opts:  # one sensitivity measurement per method serves every budget
        how = "importance" if "method" in opts or "imatrix" in opts else "plain"
        kw["sensitivity"] = out.parent / f"sensitivity-{how}-n{args.samples}.json"
    t0 = time.perf_counter()
    lowbit.convert(base, out, recipe, overwrite=True, **kw)
    return time.perf_counter() - t0


def plot(rows: list[dict[str, Any]], png: Path) -> None:
    """The bpw/KLD curves (log KLD) of the fixed recipes and of --target-bpw, and the points."""
    import matplotlib  # type: ignore[import-not-found]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found]

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, style in (("fixed", "o-"), ("mixed rtn", "s-")):
        pts = sorted((r["bpw"], r["kld"], r["label"]) for r in rows if r["label"].startswith(kind + " "))
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=kind + (" recipes" if kind == "fixed" else
                    " (--target-bpw)"))  # fmt: skip
            for b, k, label in pts:
                if kind == "fixed":
                    ax.annotate(label.split()[-1], (b, k), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for r in rows:
        if not r["label"].startswith(("fixed ", "mixed rtn ")):
            ax.plot([r["bpw"]], [r["kld"]], "x")
            ax.annotate(r["label"].removeprefix("point ").removeprefix("mixed "), (r["bpw"], r["kld"]),
                        textcoords="offset points", xytext=(4, -8), fontsize=6)  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (all tensors, sidecars included)")
    ax.set_ylabel("mean KLD vs float32 (Botchan)")
    ax.set_title("SmolLM2-135M, de-gridded: fixed recipes vs --target-bpw")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    log(f"wrote {png}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=CACHE / "quality-vs-llamacpp" / "seed0")
    ap.add_argument("--hf", type=Path, default=CACHE / "SmolLM2-135M-Instruct.Q4_1-hf")
    ap.add_argument("--gguf", type=Path, default=CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--text", type=Path, default=CACHE / "botchan.txt")
    ap.add_argument("--samples", type=int, default=32, help="calibration samples (default 32)")
    ap.add_argument("--seq-len", type=int, default=512, help="tokens per calibration sample (default 512)")
    ap.add_argument("--tokens", type=int, default=4096, help="evaluation tokens (default 4096)")
    ap.add_argument("--seed", type=int, default=0, help="de-gridding seed (default 0)")
    ap.add_argument("--fresh", action="store_true", help="re-make the baseline")
    ap.add_argument("--only", help="regex: the rows whose label matches")
    ap.add_argument("--json", type=Path, help="write the rows as JSON")
    ap.add_argument("--png", type=Path, help="plot the curve (needs matplotlib)")
    ap.add_argument("--plot-from", type=Path, help="only plot the rows of this --json file")
    args = ap.parse_args()
    if args.plot_from is not None:
        plot(json.loads(args.plot_from.read_text()), args.png or args.plot_from.with_suffix(".png"))
        return 0
    import lowbit
    from quality_vs_llamacpp import prepare_base

    base, ref, _ = prepare_base(args)
    work = args.work / "mixed"
    work.mkdir(exist_ok=True)
    rows: list[dict[str, Any]] = []
    key = f"eval{args.tokens}"
    with lowbit.Model.load(ref) as ref_model:
        for label, recipe, opts in ROWS:
            if args.only and not re.search(args.only, label):
                continue
            path = work / (re.sub(r"[^\w.+-]", "-", label) + f"-n{args.samples}.lbf")
            meta = path.with_name(path.name + ".json")
            got = json.loads(meta.read_text()) if meta.exists() and path.exists() else {}
            if "seconds" not in got:
                log(f"converting {label}")
                try:
                    got = {"seconds": make(base, path, recipe, opts, args)}
                except (lowbit.LowbitError, TypeError) as e:  # a type or option this build lacks
                    log(f"  skipped: {type(e).__name__}: {e}")
                    continue
            if "linear_bpw" not in got:
                with lowbit.load(path) as f:
                    lin = [i for i in f.tensors if re.match(r"model\.layers\.\d+\..*_proj\.weight$", i.name)]
                    got["linear_bpw"] = 8 * sum(i.nbytes for i in lin) / sum(i.shape[0] * i.shape[1] for i in lin)
            if key not in got:
                log(f"evaluating {label}")
                r = lowbit.evaluate(path, args.text, reference=ref_model, tokens=args.tokens, progress=False)
                got[key] = {"ppl": r.ppl, "ref_ppl": r.reference_ppl, "kld": r.kld_mean, "top1": r.top1_agreement,
                            "bpw": r.bits_per_weight}  # fmt: skip
                log(f"  KLD {r.kld_mean:.5f} at {r.bits_per_weight:.3f} bpw")
            meta.write_text(json.dumps(got))
            rows.append({"label": label, "seconds": got["seconds"], "linear_bpw": got["linear_bpw"], **got[key]})
    if not rows:
        return 0
    ref_ppl = rows[0]["ref_ppl"]
    print(f"| row | bpw (file) | bpw (decoder linears) | PPL (f32 {ref_ppl:.3f}) | mean KLD | top-1 | convert s |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for row in rows:
        print(f"| {row['label']} | {row['bpw']:.3f} | {row['linear_bpw']:.3f} | {row['ppl']:.3f} | {row['kld']:.5f} "
              f"| {100 * row['top1']:.1f} % | {row['seconds']:.0f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.png:
        try:
            plot(rows, args.png)
        except ImportError:
            log("matplotlib is not installed: no plot (run --plot-from with a Python that has it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
