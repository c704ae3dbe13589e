"""The `lowbit` command line: `info` (version, ISA, type table), `inspect FILE` (an LBF file's
header, metadata and tensor table), `verify FILE` (every checksum; exit code 1 on a mismatch),
`convert SRC -o OUT.lbf --type TYPE [--imatrix auto|FILE] [--method gptq|awq|awq+gptq|smoothquant]
[--act int8]` (HF checkpoint / GGUF / repo id → LBF), `imatrix MODEL -o FILE` (importance statistics
on calibration text) and
`export FILE.lbf --to hf DIR | --to gguf FILE`, `eval MODEL --text FILE [--reference REF]` (perplexity,
KL divergence, ΔPPL, top-1 agreement) and `generate MODEL --prompt TEXT` (streamed text, tokens/s).

Exit codes: 0 success, 1 a check failed (verify), 2 an error (message on stderr), 130 Ctrl-C."""

from __future__ import annotations

import argparse
import json
import math
import struct
import sys
import time
import zlib
from collections import defaultdict
from typing import Any

import numpy as np

import lowbit


def _info(args: argparse.Namespace) -> int:
    types = lowbit.qtypes()
    if args.json:
        payload = {
            "version": lowbit.__version__,
            "isa": lowbit.isa(),
            "available_isas": lowbit.available_isas(),
            "qtypes": [t.__dict__ for t in types],
        }
        print(json.dumps(payload, indent=2))
        return 0
    print(f"lowbit {lowbit.__version__}  isa: {lowbit.isa()}  (available: {', '.join(lowbit.available_isas())})")
    print(f"{'qtype':<8} {'block':>5} {'bytes':>5} {'bpw':>7}  {'ggml':<4} {'gguf id':>7}")
    for t in types:
        bpw = f"{t.bits_per_weight:.4g}" + ("+" if t.group_affine else "")
        gguf = "" if t.gguf_type is None else str(t.gguf_type)
        print(f"{t.name:<8} {t.block_size:>5} {t.block_bytes:>5} {bpw:>7}  {'yes' if t.ggml else 'no':<4} {gguf:>7}")
    print("int*: + one f16 scale per group, + one zero per group when asymmetric")
    return 0


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _json_value(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return [_json_value(x) for x in v.tolist()]
    if isinstance(v, list):
        return [_json_value(x) for x in v]
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, float) and not np.isfinite(v):
        return str(v)
    return v


def _short(v: Any, width: int) -> str:
    if isinstance(v, str):
        text = v.replace("\n", "\\n")
        extra = f"  ({_size(len(v.encode()))})" if len(text) > width else ""
        return (text[: width - 3] + "..." if len(text) > width else text) + extra
    if isinstance(v, np.ndarray | list):
        n = len(v)
        head = ", ".join(str(x) for x in list(v[:6]))
        return f"[{head}{', ...' if n > 6 else ''}]  ({n} items)"
    return str(v)


def _act_of(path: str, t: lowbit.TensorInfo) -> dict[str, Any] | None:
    """The W8A8 activation quantization of a tensor with an `act_quant` part (`formats/LBF.md` §5):
    `{"mode": "static", "step": float32 step}`, `{"mode": "dynamic"}`, or `{"mode": "invalid"}` when the
    8 bytes fail their CRC or the content rules (`lowbit verify` says more); None without the part. Only
    those 8 bytes are read, so inspect does not touch (or checksum) the weights."""
    part = next((p for p in t.parts if p.kind == "act_quant"), None)
    if part is None:
        return None
    with open(path, "rb") as fh:
        fh.seek(part.offset)
        raw = fh.read(part.length)
    if len(raw) == 8 and zlib.crc32(raw) == part.crc32:
        mode, step = struct.unpack("<If", raw)
        if mode == 1 and math.isfinite(step) and step > 0:
            return {"mode": "static", "step": step}
        if mode == 2 and raw[4:] == bytes(4):
            return {"mode": "dynamic"}
    return {"mode": "invalid"}


def _act_label(act: dict[str, Any] | None) -> str:
    """`act static 0.0123`, `act dynamic`, `act invalid`, or "" (no act_quant part)."""
    if act is None:
        return ""
    return f"act static {act['step']:.6g}" if act["mode"] == "static" else f"act {act['mode']}"


def _inspect(args: argparse.Namespace) -> int:
    with lowbit.load(args.file) as f:
        tensors = f.tensors
        numel = sum(t.numel for t in tensors)
        nbytes = sum(t.nbytes for t in tensors)
        by_type: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        for t in tensors:
            row = by_type[t.qtype]
            row[0] += 1
            row[1] += t.numel
            row[2] += t.nbytes
        bpw = 8.0 * nbytes / numel if numel else 0.0
        acts = {t.name: _act_of(f.path, t) for t in tensors}
        if args.json:
            payload = {
                "path": f.path,
                "header": f.header,
                "metadata": {k: {"type": f.metadata_types[k], "value": _json_value(v)} for k, v in f.metadata.items()},
                "tensors": [
                    {
                        "name": t.name,
                        "qtype": t.qtype,
                        "shape": list(t.shape),
                        "nbytes": t.nbytes,
                        "bits_per_weight": t.bits_per_weight,
                        "parts": [p.__dict__ for p in t.parts],
                        "row_layout": t.row_layout,
                        "act": acts[t.name],
                    }
                    for t in tensors
                ],
                "totals": {"tensors": len(tensors), "values": numel, "bytes": nbytes, "bits_per_weight": bpw},
                "by_qtype": {q: {"tensors": a, "values": b, "bytes": c} for q, (a, b, c) in by_type.items()},
            }
            print(json.dumps(payload, indent=2))
            return 0
        h = f.header
        print(f"{f.path}: LBF {h['version']}, {_size(h['file_len'])} ({h['file_len']} bytes)")
        print(f"  index at byte {h['index_offset']}, {h['index_len']} bytes; header crc32 {h['header_crc']:08x}")
        print(f"\nmetadata: {len(f.metadata)} keys")
        if f.metadata:
            kw = max(len(k) for k in f.metadata)
            tw = max(len(t) for t in f.metadata_types.values())
            for k, v in f.metadata.items():
                print(f"  {k:<{kw}}  {f.metadata_types[k]:<{tw}}  {_short(v, args.width)}")
        print(f"\ntensors: {len(tensors)}")
        if tensors:
            nw = max(4, *(len(t.name) for t in tensors))
            qw = max(5, *(len(t.qtype) for t in tensors))
            print(f"  {'#':>4}  {'name':<{nw}}  {'qtype':<{qw}}  {'shape':<16} {'bytes':>12} {'bpw':>8}  parts")
            for i, t in enumerate(tensors):
                shape = "×".join(str(d) for d in t.shape)
                parts = ",".join(p.kind for p in t.parts)
                print(
                    f"  {i:>4}  {t.name:<{nw}}  {t.qtype:<{qw}}  {shape:<16} {t.nbytes:>12,} "
                    f"{t.bits_per_weight:>8.4g}  {parts}" + (f"  {_act_label(acts[t.name])}" if acts[t.name] else "")
                )
        print("\nby qtype:")
        for q, (n, values, b) in sorted(by_type.items(), key=lambda kv: -kv[1][2]):
            q_bpw = 8.0 * b / values if values else 0.0
            print(f"  {q:<14} {n:>5} tensors {values:>15,} values {_size(b):>12} {q_bpw:>8.4g} bpw")
        print(
            f"\ntotal: {len(tensors)} tensors, {numel:,} values, {_size(nbytes)} of tensor data, "
            f"{bpw:.4g} bits per weight"
        )
    return 0


def _verify(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    with lowbit.load(args.file) as f:
        nbytes = sum(t.nbytes for t in f.tensors)
        try:
            f.verify()
        except lowbit.ChecksumError as e:
            print(f"lowbit: FAILED: {e}", file=sys.stderr)
            return 1
        secs = time.perf_counter() - start
        print(f"{f.path}: OK: header, index and {len(f)} tensors ({_size(nbytes)}) verified in {secs:.3f} s")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .algos.awq import AWQConfig
    from .algos.sequential import GPTQConfig
    from .conversion import RECIPES, convert, format_plan

    if args.list_recipes:
        for r in RECIPES.values():
            print(f"{r.name:>10}  base {r.base:<10} {r.summary}")
            for rule in r.rules:
                print(f"{'':>12}{rule.why:<28} → {rule.qtype}")
        return 0
    if args.src is None:
        raise lowbit.ParameterError("convert needs a source (HF checkpoint dir, GGUF file or repo id)")
    report = convert(
        args.src,
        args.output,
        args.type,
        tensor_types=args.tensor_type,
        dry_run=args.dry_run,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        gguf_compatible=args.gguf_compatible,
        imatrix=args.imatrix,
        calib=args.calib or None,
        calib_samples=args.calib_samples,
        calib_seq_len=args.calib_seq_len,
        seed=args.seed,
        method=args.method,
        gptq=GPTQConfig(
            act_order=args.act_order, static_groups=args.static_groups, damp=args.damp, block_size=args.block_size
        ),
        outliers=args.outliers,
        outlier_method=args.outlier_method,
        target_bpw=args.target_bpw,
        candidates=args.candidates.split(",") if args.candidates else None,
        sensitivity=args.sensitivity,
        awq=AWQConfig(grid=args.awq_grid, clip=not args.no_clip),
        act=args.act,
        observer=args.observer,
        smooth_alpha=args.smooth_alpha,
        resume=args.resume,
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(format_plan(report))
        if not args.dry_run:
            print(f"wrote {args.output}")
    return 0


def _imatrix(args: argparse.Namespace) -> int:
    from .calib.imatrix import compute_imatrix, save_imatrix

    t0 = time.perf_counter()
    im = compute_imatrix(
        args.model,
        calib=args.calib or None,
        n_samples=args.calib_samples,
        seq_len=args.calib_seq_len,
        seed=args.seed,
        progress=not args.no_progress,
    )
    save_imatrix(im, args.output, overwrite=args.overwrite)
    tokens = max(im.tokens.values(), default=0)
    print(f"wrote {args.output}: {len(im.sum_sq)} weights, {tokens} tokens, {time.perf_counter() - t0:.1f} s")
    return 0


def _calib_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--calib",
        action="append",
        default=[],
        metavar="FILE",
        help="calibration text (UTF-8; repeatable); default: the packaged Jane Austen text",
    )
    p.add_argument("--calib-samples", type=int, default=128, help="calibration samples (default 128)")
    p.add_argument("--calib-seq-len", type=int, default=512, help="tokens per calibration sample (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration windows (default 0)")


def _export(args: argparse.Namespace) -> int:
    from .conversion import export_gguf, export_hf

    if args.to == "hf":
        out = export_hf(args.file, args.dest, progress=not args.no_progress, overwrite=args.overwrite)
    else:
        out = export_gguf(args.file, args.dest, progress=not args.no_progress, overwrite=args.overwrite).path
    print(f"wrote {out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .eval import evaluate

    rep = evaluate(
        args.model,
        args.text,
        reference=args.reference,
        ctx=args.ctx,
        tokens=args.tokens,
        progress=not args.no_progress,
    )
    print(json.dumps(rep.to_json(), indent=2) if args.json else rep.format())
    return 0


def _generate(args: argparse.Namespace) -> int:
    from .model import Model

    with Model.load(args.model) as m:
        gen = m.generate(
            args.prompt,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
            chat=args.chat,
        )
        if not args.chat:
            print(args.prompt, end="", flush=True)
        for piece in gen:
            print(piece, end="", flush=True)
        print()
        print(
            f"[{gen.prompt_tokens} prompt tokens at {gen.prompt_tokens_per_second:.1f} tokens/s, "
            f"{len(gen.tokens)} generated at {gen.tokens_per_second:.1f} tokens/s; finish: {gen.finish_reason}]",
            file=sys.stderr,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lowbit` script; returns the exit code."""
    parser = argparse.ArgumentParser(prog="lowbit", description="CPU-first LLM compression toolkit")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="version, instruction set in use, and the type table")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_info)
    insp = sub.add_parser("inspect", help="an LBF file's header, metadata and tensor table")
    insp.add_argument("file", help="path of the .lbf file")
    insp.add_argument("--json", action="store_true", help="machine-readable output (full metadata values)")
    insp.add_argument("--width", type=int, default=60, help="characters of each metadata value shown (default 60)")
    insp.set_defaults(func=_inspect)
    ver = sub.add_parser("verify", help="check every checksum of an LBF file (exit 1 on a mismatch)")
    ver.add_argument("file", help="path of the .lbf file")
    ver.set_defaults(func=_verify)
    conv = sub.add_parser(
        "convert",
        help="quantize a model (HF checkpoint dir, GGUF file or HF repo id) into an LBF file",
        description="Quantize a model into an LBF file, tensor by tensor. TYPE is a recipe (see --list-recipes) "
        "or a qtype (see `lowbit info`).",
    )
    conv.add_argument("src", nargs="?", help="HF checkpoint directory, GGUF file, or HF repo id (owner/name)")
    conv.add_argument("-o", "--output", help="the .lbf file to write")
    conv.add_argument("-t", "--type", default="q4_k_m", help="recipe or qtype (default q4_k_m)")
    conv.add_argument(
        "--tensor-type",
        action="append",
        default=[],
        metavar="REGEX=QTYPE",
        help="override the qtype of tensors whose HF name or llama.cpp alias (blk.N.attn_v) matches; repeatable",
    )
    conv.add_argument("--dry-run", action="store_true", help="print the plan and sizes; write nothing")
    conv.add_argument(
        "--gguf-compatible",
        action="store_true",
        help="ggml types only, so the file exports to GGUF: llama.cpp's legacy fallbacks (q4_k → q5_0, …) "
        "instead of ragged k-types (q4_kr, …) on rows that are not a multiple of 256",
    )
    conv.add_argument(
        "--imatrix",
        metavar="auto|FILE",
        help="weight the scale search by importance statistics: a GGUF imatrix file (lowbit imatrix, llama.cpp) "
        "or 'auto' to compute them from the calibration text first",
    )
    conv.add_argument(
        "--method",
        choices=("rtn", "gptq", "awq", "awq+gptq", "smoothquant"),
        default="rtn",
        help="rtn (default), or layer by layer on calibration text: gptq, awq (activation-aware scales + clipping), "
        "awq+gptq (AWQ's scales, then GPTQ), smoothquant (with --act: activation outliers moved into the weights)",
    )
    conv.add_argument(
        "--act",
        choices=("int8", "int8-dynamic"),
        help="W8A8: the decoder linears run int8 weights (per channel) × int8 activations, with a static step per "
        "tensor from --observer on the calibration text (int8) or one step per token (int8-dynamic)",
    )
    conv.add_argument(
        "--observer",
        choices=("minmax", "ema", "percentile", "kl", "mse"),
        default="minmax",
        help="--act int8: the observer of the static activation steps (default minmax)",
    )
    conv.add_argument(
        "--smooth-alpha", type=float, default=0.5, help="smoothquant: migration strength α in [0, 1] (default 0.5)"
    )
    conv.add_argument(
        "--outliers",
        metavar="FRACTION",
        help="keep this share of every quantized matrix's weights exactly (sparse f16 sidecar, SpQR style), e.g. "
        "0.5%% or 0.005, at most 10%%; chosen by Hessian sensitivity inside gptq/awq+gptq, else by --outlier-method",
    )
    conv.add_argument(
        "--outlier-method",
        choices=("magnitude", "deviation"),
        default="magnitude",
        help="calibration-free outlier choice (rtn): largest |w| (default) or largest deviation in its 16-group",
    )
    conv.add_argument(
        "--target-bpw",
        type=float,
        metavar="BPW",
        help="mixed precision: choose each matrix's type so the whole file has at most BPW bits per weight and "
        "the least predicted KL divergence (sensitivity measured per tensor on the calibration text); the plan "
        "shows each choice, also with --dry-run",
    )
    conv.add_argument(
        "--candidates",
        metavar="T1,T2,...",
        help="--target-bpw: the types to choose from (default int2-g64,q2_k,q3_k,q4_k,q5_k,q6_k,q8_0; k-types "
        "become ragged k-types on rows that are not a multiple of 256)",
    )
    conv.add_argument(
        "--sensitivity",
        metavar="FILE.json",
        help="--target-bpw: cache the sensitivity measurement in FILE (reused when it matches the model, "
        "calibration text and candidates), so trying several budgets costs one measurement",
    )
    _calib_args(conv)
    conv.add_argument("--act-order", action="store_true", help="gptq: columns in decreasing Hessian diagonal order")
    conv.add_argument("--static-groups", action="store_true", help="gptq: group ranges fixed before the column loop")
    conv.add_argument("--damp", type=float, default=0.01, help="gptq: relative damping of the Hessian (default 0.01)")
    conv.add_argument("--block-size", type=int, default=128, help="gptq: columns per lazy-batch update (default 128)")
    conv.add_argument("--awq-grid", type=int, default=20, help="awq: scale exponents tried, i/N for i < N (default 20)")
    conv.add_argument("--no-clip", action="store_true", help="awq: no clipping-ratio search")
    conv.add_argument("--resume", action="store_true", help="calibrated methods: continue OUT.ckpt/ of a killed run")
    conv.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    conv.add_argument("--json", action="store_true", help="print the report as JSON")
    conv.add_argument("--no-progress", action="store_true", help="no progress bar")
    conv.add_argument("--list-recipes", action="store_true", help="print the recipe table and exit")
    conv.set_defaults(func=_convert)
    imx = sub.add_parser(
        "imatrix",
        help="compute importance statistics (mean x² per input column of every linear) on calibration text",
        description="Run calibration text through the model layer by layer and save llama.cpp-style importance "
        "statistics (a GGUF imatrix file) for `lowbit convert --imatrix FILE`.",
    )
    imx.add_argument("model", help="HF checkpoint directory, GGUF or LBF file")
    imx.add_argument("-o", "--output", required=True, help="the imatrix file to write (.gguf)")
    _calib_args(imx)
    imx.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    imx.add_argument("--no-progress", action="store_true", help="no progress bar")
    imx.set_defaults(func=_imatrix)

    exp = sub.add_parser("export", help="write an LBF model as an HF checkpoint (dequantized) or a GGUF file")
    exp.add_argument("file", help="the .lbf file")
    exp.add_argument("--to", choices=("hf", "gguf"), required=True, help="target format")
    exp.add_argument("dest", help="output directory (hf) or file (gguf)")
    exp.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    exp.add_argument("--no-progress", action="store_true", help="no progress bar")
    exp.set_defaults(func=_export)
    ev = sub.add_parser(
        "eval",
        help="perplexity on a text; with --reference also KL divergence, ΔPPL and top-1 agreement",
        description="Evaluate MODEL on TEXT in consecutive windows of --ctx tokens, scoring the second half of "
        "each (llama.cpp's protocol). With --reference (the unquantized model: an LBF file or an HF checkpoint "
        "dir) also the mean KL divergence of the next-token distributions, ΔPPL and top-1 agreement.",
    )
    ev.add_argument("model", help="the model: an .lbf file (or an HF checkpoint dir / GGUF, run in float32)")
    ev.add_argument("--text", required=True, help="UTF-8 text file to evaluate on")
    ev.add_argument("--reference", help="reference model (.lbf or HF checkpoint dir) for KL divergence")
    ev.add_argument("--ctx", type=int, default=512, help="tokens per window (default 512)")
    ev.add_argument("--tokens", type=int, default=None, help="use only the first N tokens of the text")
    ev.add_argument("--json", action="store_true", help="print the report as JSON")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev.set_defaults(func=_eval)
    gen = sub.add_parser("generate", help="generate text from a prompt, streamed; prints tokens/s at the end")
    gen.add_argument("model", help="the model: an .lbf file (or an HF checkpoint dir / GGUF, run in float32)")
    gen.add_argument("--prompt", required=True, help="the prompt text")
    gen.add_argument("--max-tokens", type=int, default=128, help="most tokens to generate (default 128)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); e.g. 0.7")
    gen.add_argument("--top-k", type=int, default=0, help="sample among the K most likely tokens (0 = all)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold in (0, 1] (default 1)")
    gen.add_argument("--seed", type=int, default=0, help="random seed of the sampler (default 0)")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    gen.set_defaults(func=_generate)
    args = parser.parse_args(argv)
    if args.command == "convert" and not args.list_recipes and not args.dry_run and not args.output:
        parser.error("convert: -o/--output is required (or --dry-run)")
    try:
        return int(args.func(args))
    except (lowbit.LowbitError, OSError) as e:
        print(f"lowbit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lowbit: interrupted; no output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
