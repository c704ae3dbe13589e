"""lowbit's k-quant recipes against llama.cpp's own quantizer on the demo model (SmolLM2-135M), side by
side on the same baseline, text and windows (issue 9: rows of 576 are not a multiple of 256, where
llama-quantize falls back to legacy types).

1. De-gridded baseline (ARCHITECTURE.md §6: the demo weights sit on q4_1's grid, which makes
   re-quantizing to aligned grids artificially easy). From the float32 HF checkpoint (--hf; made
   from the demo GGUF with `lowbit.gguf_to_hf` when absent) every 2-D weight W gets seeded uniform
   noise: for each row and each group of 32 columns, step = (max − min) / 15 of that group (q4_1's
   step) and W += U(−0.5, 0.5) × step, drawn with numpy's default_rng([seed, crc32(name)]). Norms
   (1-D) are untouched. Written as a new HF dir in --cache (config/tokenizer files copied).
2. Reference: that checkpoint converted to an f32 LBF (`ref.lbf`) and exported to an f32 GGUF
   (`base.gguf`, `lowbit.export_gguf`: q/k rows permuted to llama.cpp's order). The GGUF read back
   by lowbit is checked to equal `ref.lbf` exactly.
3. llama.cpp: `llama_cpp.llama_model_quantize(base.gguf, out, params)` with the default params and
   ftype LLAMA_FTYPE_MOSTLY_<RECIPE>, no imatrix, in a child process (--llama-python, a Python with
   llama-cpp-python). The ggml type of each tensor is read back with gguf's GGUFReader.
4. lowbit: `lowbit.convert(base, X.lbf, recipe)`, and with `gguf_compatible=True` when `convert`
   accepts it (llama.cpp's legacy fallbacks kept).
5. Metrics, `lowbit.evaluate(model, text, reference=ref.lbf, ctx, tokens)`:
   * weights-only (the primary comparison): every file — GGUF or LBF — converted with
     `lowbit.convert(file, tmp, "f32")`, i.e. every weight dequantized, then run in float32;
   * engine (LBF files only, for information): the file run as is (quantized matmul, int8 activations);
   * bits per weight = 8 × tensor data bytes / parameters over all tensors of the file (GGUF: GGUFReader's
     `n_bytes`; LBF: the index's `nbytes`), and over the 2-D weights alone.

6. With --calibrated (importance statistics, one calibration for both tools: `--samples` × `--seq-len`
   tokens of lowbit's packaged text, seed 0): one GGUF imatrix of the baseline (`compute_imatrix`,
   the mean x² per input column of every decoder linear, as llama.cpp's imatrix tool collects);
   "llama.cpp imatrix": llama.cpp's file with each covered tensor quantized again by ggml's
   `ggml_quantize_chunk` with that importance (`imatrix_child`: the route is checked to give
   llama.cpp's bytes without it); "lowbit imatrix": `convert(..., imatrix=that file)`; "lowbit gptq":
   `convert(..., method="gptq")` (GPTQ fitted to the k-quant grids). With --target-bpw B: lowbit's
   mixed precision at B bits per weight with the imatrix and with GPTQ (one importance-weighted
   sensitivity measurement, cached in `sensitivity-importance-n<samples>.json`).

Files and metrics are cached in --cache/seed<N> and re-used unless --fresh (llama.cpp's files are named
by llama-cpp-python's version; a lowbit file is remade when the recipe now plans other types). Progress
goes to stderr; the markdown table to stdout (and --json / --markdown files). Example:

    .venv/bin/python benches/quality_vs_llamacpp.py --llama-python /work/anchor-venv/bin/python
    .venv/bin/python benches/quality_vs_llamacpp.py --llama-python /work/anchor-venv/bin/python \
        --recipes q4_k_m,q3_k_m --calibrated --target-bpw 4.9
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

CACHE = Path.home() / ".cache" / "lowbit"
RECIPES = ("q4_k_m", "q3_k_m", "q2_k", "q4_k_s", "q5_k_m")
GROUP, LEVELS = 32, 15  # q4_1: groups of 32 values, 16 levels (step = range / 15)
HF_SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# 1. De-gridding


def degrid(w: npt.NDArray[np.float32], rng: np.random.Generator, group: int = GROUP) -> npt.NDArray[np.float32]:
    """`w` (rows, cols) float32 plus uniform noise: per row and group of `group` columns (the last group
    may be shorter), U(−0.5, 0.5) × (max − min) / 15 of that group. Returns a new float32 array."""
    if w.ndim != 2:
        raise ValueError(f"degrid needs a 2-D matrix, got shape {w.shape}")
    starts = np.arange(0, w.shape[1], group)
    step = (np.maximum.reduceat(w, starts, axis=1) - np.minimum.reduceat(w, starts, axis=1)) / LEVELS
    step = np.repeat(step, np.diff(np.append(starts, w.shape[1])), axis=1)
    noise = rng.uniform(-0.5, 0.5, w.shape).astype(np.float32)
    return (w + noise * step).astype(np.float32)


def tensor_rng(seed: int, name: str) -> np.random.Generator:
    """The noise generator of one tensor: independent of the order tensors are visited in."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def degrid_checkpoint(src: Path, dst: Path, seed: int) -> dict[str, int]:
    """Write `dst`, a copy of the HF checkpoint dir `src` (safetensors, float32) whose 2-D tensors are
    de-gridded (`degrid`, `tensor_rng(seed, name)`) and 1-D ones copied, as one `model.safetensors` plus
    the config/tokenizer files. Built in a temporary dir beside `dst`, renamed at the end. Returns the
    number of tensors de-gridded and copied unchanged."""
    from safetensors.numpy import load_file, save_file

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        tensors: dict[str, npt.NDArray[Any]] = {}
        for shard in sorted(src.glob("*.safetensors")):
            tensors.update(load_file(str(shard)))
        counts = {"degridded": 0, "unchanged": 0}
        for name, t in tensors.items():
            if t.ndim == 2:
                tensors[name] = degrid(t.astype(np.float32), tensor_rng(seed, name))
                counts["degridded"] += 1
            else:
                counts["unchanged"] += 1
        save_file(tensors, str(tmp / "model.safetensors"))
        for f in HF_SIDE_FILES:
            if (src / f).is_file():
                shutil.copyfile(src / f, tmp / f)
        tmp.chmod(0o755)  # mkdtemp's 0700 is for the temporary name only
        os.replace(tmp, dst)
        return counts
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------------
# Sizes and types


@dataclass
class Sizes:
    """Tensor data bytes and parameter counts of a file, over all tensors and over the 2-D ones;
    `types` counts the tensors of each type (lower-case ggml / lowbit names)."""

    bytes_all: int
    params_all: int
    bytes_2d: int
    params_2d: int
    types: dict[str, int]

    @property
    def bpw(self) -> float:
        return 8 * self.bytes_all / self.params_all

    @property
    def bpw_2d(self) -> float:
        return 8 * self.bytes_2d / self.params_2d


def sizes_of(tensors: Sequence[tuple[str, tuple[int, ...], int, int]]) -> Sizes:
    """`Sizes` from (type, shape, bytes, parameters) per tensor. A 2-D tensor has two dimensions > 1."""
    s = Sizes(0, 0, 0, 0, {})
    for _, shape, nbytes, n in tensors:
        s.bytes_all += nbytes
        s.params_all += n
        if sum(d > 1 for d in shape) == 2:
            s.bytes_2d += nbytes
            s.params_2d += n
    s.types = dict(sorted(Counter(t[0] for t in tensors).items()))
    return s


def gguf_sizes(path: Path) -> Sizes:
    from gguf import GGUFReader

    r = GGUFReader(path)
    return sizes_of(
        [
            (t.tensor_type.name.lower(), tuple(int(d) for d in t.shape), int(t.n_bytes), int(t.n_elements))
            for t in r.tensors
        ]
    )


def lbf_sizes(path: Path) -> Sizes:
    import lowbit

    with lowbit.load(path) as f:
        return sizes_of([(t.qtype, t.shape, t.nbytes, t.numel) for t in f.tensors])


def sizes(path: Path) -> Sizes:
    return gguf_sizes(path) if path.suffix == ".gguf" else lbf_sizes(path)


# --------------------------------------------------------------------------------------------
# llama.cpp's quantizer (child process in the anchor venv)


def llama_child(spec: dict[str, str]) -> dict[str, Any]:
    """Quantize spec["inp"] (GGUF) to spec["out"] with ftype LLAMA_FTYPE_MOSTLY_<spec["recipe"]>."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{spec['recipe'].upper()}")
    rc = llama_cpp.llama_model_quantize(spec["inp"].encode(), spec["out"].encode(), params)
    return {"rc": int(rc)}


def imatrix_child(spec: dict[str, str]) -> dict[str, Any]:
    """Write spec["out"]: llama.cpp's file spec["plain"] (made by `llama_model_quantize` without an
    imatrix) with every tensor that the GGUF imatrix spec["imatrix"] covers quantized again from the f32
    GGUF spec["base"] by ggml's `ggml_quantize_chunk` — the call llama-quantize makes per tensor — with
    that tensor's importance (mean x² per input column, as llama-quantize passes it). The tensor types
    stay llama.cpp's. Checked first: each of those tensors quantized again *without* importance gives
    the plain file's bytes exactly, so the route is llama-quantize's own. (llama-cpp-python cannot hand
    `llama_model_quantize` an imatrix: its `imatrix` parameter is a pointer to a C++ map.)"""
    from gguf import GGUFReader

    import ggml_anchor

    base = {t.name: t for t in GGUFReader(spec["base"]).tensors}
    im = {t.name: np.asarray(t.data, dtype=np.float64).reshape(-1) for t in GGUFReader(spec["imatrix"]).tensors}
    plain = GGUFReader(spec["plain"])
    shutil.copyfile(spec["plain"], spec["out"])
    out = np.memmap(spec["out"], dtype=np.uint8, mode="r+")
    done = []
    for t in plain.tensors:
        if t.name + ".in_sum2" not in im:
            continue
        kind = t.tensor_type.name.lower()
        x = np.ascontiguousarray(base[t.name].data, dtype=np.float32)
        old = bytes(out[t.data_offset : t.data_offset + t.n_bytes])
        if ggml_anchor.ggml_quantize(kind, x) != old:
            raise RuntimeError(f"{t.name}: ggml_quantize_chunk without importance differs from llama.cpp's file")
        imp = (im[t.name + ".in_sum2"] / max(float(im[t.name + ".counts"][0]), 1.0)).astype(np.float32)
        new = ggml_anchor.ggml_quantize(kind, x, imp)
        out[t.data_offset : t.data_offset + t.n_bytes] = np.frombuffer(new, dtype=np.uint8)
        done.append(t.name)
    out.flush()
    del out
    with open(spec["out"], "rb+") as f:
        os.fsync(f.fileno())
    return {"rc": 0, "requantized": len(done)}


def run_child(python: str, spec: dict[str, str], out: Path, what: str) -> dict[str, Any]:
    """Run this script's `--child` `spec` in `python` (the anchor's), writing to a temp file beside
    `out` (spec["out"]) renamed at the end. Returns the child's JSON answer."""
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        spec = {**spec, "out": str(tmp)}
        proc = subprocess.run([python, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
        res = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {"rc": -1}
        if res["rc"] != 0:
            raise RuntimeError(f"{what} failed:\n{proc.stderr[-4000:]}")
        os.replace(tmp, out)
        return dict(res)
    finally:
        tmp.unlink(missing_ok=True)


def llama_quantize(python: str, inp: Path, out: Path, recipe: str) -> None:
    """Run llama.cpp's quantizer in a child `python`."""
    run_child(python, {"inp": str(inp), "recipe": recipe}, out, f"llama_model_quantize {recipe}")


def llama_imatrix(python: str, base: Path, plain: Path, imatrix: Path, out: Path) -> None:
    """llama.cpp's file `plain` with the importance of `imatrix` (`imatrix_child`), in a child `python`."""
    res = run_child(python, {"base": str(base), "plain": str(plain), "imatrix": str(imatrix)}, out,
                    f"ggml_quantize_chunk with {imatrix.name}")  # fmt: skip
    log(f"  {out.name}: {res['requantized']} tensors quantized with importance")


# --------------------------------------------------------------------------------------------
# Metrics


@dataclass
class Row:
    recipe: str
    tool: str
    file: str
    bpw: float
    bpw_2d: float
    types: dict[str, int]
    ppl: float
    ref_ppl: float
    kld_mean: float
    kld_p99: float
    top1: float
    engine_kld_mean: float | None = None

    @property
    def delta_ppl(self) -> float:
        return self.ppl - self.ref_ppl


def _eval(model: Any, text: Path, ref: Any, ctx: int, tokens: int) -> dict[str, float]:
    import lowbit

    r = lowbit.evaluate(model, text, reference=ref, ctx=ctx, tokens=tokens, progress=False)
    assert r.reference_ppl is not None and r.kld_mean is not None and r.kld_p99 is not None
    return {"ppl": r.ppl, "ref_ppl": r.reference_ppl, "kld_mean": r.kld_mean, "kld_p99": r.kld_p99,
            "top1": r.top1_agreement or 0.0}  # fmt: skip


def measure(path: Path, ref: Any, text: Path, ctx: int, tokens: int, fresh: bool) -> dict[str, Any]:
    """Weights-only metrics of `path` (and engine KLD for an LBF) against the `Model` `ref`, cached in
    `<path>.metrics.json` keyed by the evaluation settings and both files' modification times."""
    import lowbit

    cache = path.with_name(path.name + ".metrics.json")
    key = {"text": str(text), "ctx": ctx, "tokens": tokens, "mtime": path.stat().st_mtime_ns,
           "ref_mtime": ref.path.stat().st_mtime_ns}  # fmt: skip
    if cache.exists() and not fresh:
        got = json.loads(cache.read_text())
        if got.get("key") == key:
            return dict(got["metrics"])
    with tempfile.TemporaryDirectory(prefix="lowbit-rq-", dir=path.parent) as tmp:
        deq = Path(tmp) / "dequantized.f32.lbf"
        t0 = time.perf_counter()
        lowbit.convert(path, deq, "f32", progress=False)
        m = _eval(deq, text, ref, ctx, tokens)
    if path.suffix == ".lbf":
        m["engine_kld_mean"] = _eval(path, text, ref, ctx, tokens)["kld_mean"]
    log(f"  {path.name}: KLD {m['kld_mean']:.5f} ({time.perf_counter() - t0:.0f} s)")
    cache.write_text(json.dumps({"key": key, "metrics": m}))
    return m


# --------------------------------------------------------------------------------------------
# Output


def _types(t: dict[str, int]) -> str:
    return ", ".join(f"{k} ×{v}" for k, v in t.items())


def markdown(rows: Sequence[Row], ref_ppl: float) -> str:
    """The table: one line per (recipe, tool), sorted as given; weights-only metrics."""
    out = [f"| recipe | tool | bpw | bpw 2-D | PPL (f32 {ref_ppl:.3f}) | ΔPPL | mean KLD | p99 KLD | top-1 "
           "| engine KLD |", "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"]  # fmt: skip
    for r in rows:
        eng = "—" if r.engine_kld_mean is None else f"{r.engine_kld_mean:.5f}"
        out.append(f"| {r.recipe} | {r.tool} | {r.bpw:.3f} | {r.bpw_2d:.3f} | {r.ppl:.3f} | {r.delta_ppl:+.3f} "
                   f"| {r.kld_mean:.5f} | {r.kld_p99:.4f} | {100 * r.top1:.1f} % | {eng} |")  # fmt: skip
    return "\n".join(out)


def type_lines(rows: Sequence[Row]) -> str:
    return "\n".join(f"- {r.recipe} {r.tool}: {_types(r.types)}" for r in rows)


# --------------------------------------------------------------------------------------------
# Main


def prepare_base(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """The de-gridded HF dir, `ref.lbf` and `base.gguf` in the cache, made when missing."""
    import lowbit

    base, ref, gg = args.work / "degridded-hf", args.work / "ref.f32.lbf", args.work / "base.f32.gguf"
    if args.fresh:
        shutil.rmtree(base, ignore_errors=True)
        ref.unlink(missing_ok=True)
        gg.unlink(missing_ok=True)
    if not (args.hf / "config.json").exists():
        log(f"making {args.hf} from {args.gguf}")
        lowbit.gguf_to_hf(args.gguf, args.hf, progress=False)
    if not base.exists():
        log(f"de-gridding {args.hf} → {base} (seed {args.seed})")
        counts = degrid_checkpoint(args.hf, base, args.seed)
        log(f"  {counts['degridded']} 2-D tensors de-gridded, {counts['unchanged']} 1-D copied")
    if not ref.exists():
        lowbit.convert(base, ref, "f32", progress=False)
    if not gg.exists():
        lowbit.export_gguf(ref, gg, progress=False)
        check_round_trip(ref, gg)
    return base, ref, gg


def check_round_trip(ref: Path, gg: Path) -> None:
    """The f32 GGUF, read back by lowbit (q/k rows un-permuted), equals `ref` exactly."""
    import lowbit

    with tempfile.TemporaryDirectory(prefix="lowbit-rq-", dir=ref.parent) as tmp:
        back = Path(tmp) / "back.lbf"
        lowbit.convert(gg, back, "f32", progress=False)
        with lowbit.load(ref) as a, lowbit.load(back) as b:
            if set(a) != set(b):
                raise RuntimeError(f"{gg} read back has tensors {sorted(set(a) ^ set(b))} differing from {ref}")
            bad = [n for n in a if not np.array_equal(np.asarray(a[n]), np.asarray(b[n]))]
    if bad:
        raise RuntimeError(f"{gg} read back differs from {ref} in {bad[:5]}")
    log(f"  {gg.name} read back by lowbit equals {ref.name} exactly")


def lbf_is_current(src: Path, lbf: Path, recipe: str, kw: dict[str, Any]) -> bool:
    """Whether `lbf` exists with the qtype per tensor that `convert(src, ..., recipe, **kw)` plans now
    (a cached file made before a recipe or fallback change is not re-used)."""
    import lowbit

    if not lbf.exists():
        return False
    plan = lowbit.convert(src, None, recipe, dry_run=True, progress=False, **kw).plan
    with lowbit.load(lbf) as f:
        return {e.name: e.qtype for e in plan} == {t.name: t.qtype for t in f.tensors}


def calibrated_imatrix(base: Path, args: argparse.Namespace) -> Path:
    """The GGUF imatrix of `base` on the packaged calibration text (`--samples` × `--seq-len` tokens,
    seed 0), made when missing: the one importance statistic both tools are given."""
    from lowbit.calib.imatrix import compute_imatrix, save_imatrix

    path: Path = args.work / f"imatrix-n{args.samples}x{args.seq_len}.gguf"
    if args.fresh or not path.exists():
        log(f"imatrix of {base.name}: {args.samples} × {args.seq_len} tokens of the packaged text")
        im = compute_imatrix(base, n_samples=args.samples, seq_len=args.seq_len, progress=False)
        save_imatrix(im, path, overwrite=True)
    return path


def calibrated_lbf(base: Path, out: Path, recipe: str, kw: dict[str, Any], args: argparse.Namespace) -> Path:
    """`out`: `base` converted to `recipe` with the calibrated options `kw` (imatrix, method, target_bpw,
    …) on `--samples` × `--seq-len` tokens of the packaged text, made when missing (or --fresh)."""
    import lowbit

    if args.fresh or not out.exists():
        log(f"lowbit convert {out.stem}")
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", lowbit.LowbitWarning)  # "no --calib: the packaged text"
            lowbit.convert(base, out, recipe, progress=False, overwrite=True, calib_samples=args.samples,
                           calib_seq_len=args.seq_len, **kw)  # fmt: skip
        log(f"  {time.perf_counter() - t0:.0f} s")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hf", type=Path, default=CACHE / "SmolLM2-135M-Instruct.Q4_1-hf",
                    help="float32 HF checkpoint dir (made from --gguf when it does not exist)")  # fmt: skip
    ap.add_argument("--gguf", type=Path, default=CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--cache", type=Path, default=CACHE / "quality-vs-llamacpp")
    ap.add_argument("--text", type=Path, default=CACHE / "botchan.txt")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0, help="seed of the de-gridding noise")
    ap.add_argument("--recipes", type=lambda s: s.split(","), default=list(RECIPES))
    ap.add_argument("--llama-python", help="a Python with llama_cpp (default: this one, if it has it)")
    ap.add_argument(
        "--calibrated",
        action="store_true",
        help="add rows with importance statistics: llama.cpp + imatrix, lowbit + imatrix, lowbit + GPTQ",
    )
    ap.add_argument(
        "--target-bpw",
        type=lambda s: [float(b) for b in s.split(",")],
        default=[],
        help="add lowbit --target-bpw rows (imatrix and GPTQ) at these budgets, e.g. 4.9",
    )
    ap.add_argument("--samples", type=int, default=32, help="calibration samples (default 32)")
    ap.add_argument("--seq-len", type=int, default=512, help="tokens per calibration sample (default 512)")
    ap.add_argument("--fresh", action="store_true", help="remake every cached file and metric")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(imatrix_child(spec) if "imatrix" in spec else llama_child(spec)))
        return 0

    import lowbit

    llama_py = args.llama_python or (sys.executable if importlib.util.find_spec("llama_cpp") else None)
    llama_version = (
        llama_py
        and subprocess.run(
            [llama_py, "-c", "import llama_cpp; print(llama_cpp.__version__)"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    compat = "gguf_compatible" in inspect.signature(lowbit.convert).parameters
    args.work = args.cache / f"seed{args.seed}"
    args.work.mkdir(parents=True, exist_ok=True)
    base, ref_path, gg = prepare_base(args)
    files: list[tuple[str, str, Path]] = []
    imatrix = calibrated_imatrix(base, args) if args.calibrated or args.target_bpw else None
    for recipe in args.recipes:
        if llama_py:
            out = args.work / f"llama-cpp-python-{llama_version}-{recipe}.gguf"
            if args.fresh or not out.exists():
                log(f"llama.cpp quantize {recipe}")
                llama_quantize(llama_py, gg, out, recipe)
            files.append((recipe, "llama.cpp", out))
            if args.calibrated and imatrix is not None:
                imat = out.with_name(f"{out.stem}-imatrix-n{args.samples}.gguf")
                if args.fresh or not imat.exists():
                    log(f"llama.cpp {recipe} + imatrix")
                    llama_imatrix(llama_py, gg, out, imatrix, imat)
                files.append((recipe, "llama.cpp imatrix", imat))
        variants: list[tuple[str, dict[str, Any]]] = [("lowbit", {})]
        if compat:
            variants.append(("lowbit gguf-compatible", {"gguf_compatible": True}))
        for tool, kw in variants:
            out = args.work / f"lowbit-{recipe}{'-gguf-compatible' if kw else ''}.lbf"
            if args.fresh or not lbf_is_current(base, out, recipe, kw):
                log(f"lowbit convert {recipe} {kw or ''}")
                lowbit.convert(base, out, recipe, progress=False, overwrite=True, **kw)
            files.append((recipe, tool, out))
        if args.calibrated and imatrix is not None:
            for tool, kw in (("lowbit imatrix", {"imatrix": imatrix}), ("lowbit gptq", {"method": "gptq"})):
                out = args.work / f"lowbit-{recipe}-{tool.split()[1]}-n{args.samples}.lbf"
                files.append((recipe, tool, calibrated_lbf(base, out, recipe, kw, args)))
    for bpw in args.target_bpw:
        assert imatrix is not None
        sens = args.work / f"sensitivity-importance-n{args.samples}.json"
        for tool, kw in (("lowbit imatrix", {"imatrix": imatrix}), ("lowbit gptq", {"method": "gptq"})):
            out = args.work / f"lowbit-bpw{bpw:g}-{tool.split()[1]}-n{args.samples}.lbf"
            kw = {**kw, "target_bpw": bpw, "sensitivity": sens}
            files.append((f"--target-bpw {bpw:g}", tool, calibrated_lbf(base, out, "q4_k_m", kw, args)))

    rows: list[Row] = []
    with lowbit.Model.load(ref_path) as ref:
        for recipe, tool, path in files:
            log(f"evaluating {path.name}")
            s = sizes(path)
            m = measure(path, ref, args.text, args.ctx, args.tokens, args.fresh)
            rows.append(Row(recipe, tool, path.name, s.bpw, s.bpw_2d, s.types, **m))
    ref_ppl = rows[0].ref_ppl if rows else float("nan")
    head = (
        f"lowbit {lowbit.__version__}; llama.cpp: "
        + (f"llama-cpp-python {llama_version} via {llama_py}" if llama_py else "none")
        + f"; gguf_compatible column: {'yes' if compat else 'no (convert has no gguf_compatible keyword)'}\n"
        f"Baseline: the demo checkpoint de-gridded (seed {args.seed}): every 2-D weight + U(−0.5, 0.5) × "
        f"(max − min)/15 per row and group of 32 columns; norms untouched. Reference: that baseline in f32.\n"
        f"Text: first {args.tokens} tokens of {args.text.name}, windows of {args.ctx}, second half scored. "
        "Weights-only: each file dequantized to f32 and run in f32; engine KLD: LBF run as is.\n"
    )
    table = markdown(rows, ref_ppl)
    report = f"{head}\n{table}\n\nTensor types per file:\n{type_lines(rows)}\n"
    print(report, end="")
    if args.json:
        args.json.write_text(json.dumps({"head": head, "rows": [{**asdict(r), "delta_ppl": r.delta_ppl} for r in rows]},
                                        indent=1))  # fmt: skip
    if args.markdown:
        args.markdown.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
