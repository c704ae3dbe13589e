"""`lowbit.convert`: a Hugging Face checkpoint or GGUF file → one LBF file, tensor by tensor.

The source is opened and validated, the recipe turns it into a plan (`recipes.make_plan`), and
then each tensor is read (memory-mapped), quantized in Rust on all cores, measured (relative
RMSE against the source) and appended to a streaming `LBFWriter` before the next one is read:
peak memory is a few times the largest tensor's float32 size, never the model.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import _core
from ..algos.awq import AWQConfig, awq_method
from ..algos.mixed import (
    DEFAULT_CANDIDATES,
    GGUF_CANDIDATES,
    Sensitivity,
    allocate,
    check_target,
    measure_sensitivity,
)
from ..algos.outliers import check_method, parse_fraction, quantize_with_outliers, sidecar_bytes
from ..algos.sequential import (
    GPTQConfig,
    LayerFn,
    LinearReport,
    fingerprint,
    gptq_layer,
    load_quantized,
    remove_state,
    run_layers,
    write_json,
)
from ..algos.smooth import W8A8_QTYPE, W8A8Config, smooth_method
from ..calib.capture import check_model
from ..calib.data import CalibrationSet, calibration_tokens
from ..calib.imatrix import Imatrix, compute_imatrix, load_imatrix
from ..errors import DestinationExistsError, FormatError, InvalidValueError, LowbitWarning, ParameterError
from ..lbf import LBFWriter
from ..qtensor import FLOAT_QTYPES, QTensor, dequantize, quantize
from ._files import progress_bar
from .hf_source import resolve_source
from .recipes import PlanEntry, make_plan, parse_tensor_types, recipe_for
from .source import Source

__all__ = ["KNOWN_ARCHITECTURES", "ConvertReport", "convert", "format_plan"]

# model_type values whose tensors the recipes know by role (and the engine will run).
KNOWN_ARCHITECTURES = ("llama", "mistral", "qwen2")

# Quantization methods: round-to-nearest tensor by tensor, or calibrated layer by layer.
METHODS = ("rtn", "gptq", "awq", "awq+gptq", "smoothquant")
SCALING_METHODS = ("awq", "awq+gptq", "smoothquant")
# The weights the calibrated methods quantize layer by layer (and `act` makes W8A8).
DECODER_LINEAR = re.compile(r"^model\.layers\.\d+\.\w+\.\w+_proj\.weight$")

# Estimated bytes of header, index and embedded metadata besides tensor data (dry-run total).
_INDEX_BYTES_PER_TENSOR = 128


@dataclass
class ConvertReport:
    """What `convert` planned (and, unless a dry run, did).

    Attributes:
        source: the resolved source path; kind "hf" or "gguf".
        recipe: the recipe or qtype asked for.
        plan: one entry per tensor, in file order.
        rel_rmse: name → ‖x̂ − x‖ / ‖x‖ of the stored tensor against the source (empty in a
            dry run; 0 for tensors stored exactly).
        file_bytes: size of the written file (dry run: an estimate; tensor bytes are exact).
        seconds: wall time of the conversion proper (0 in a dry run).
        gguf_compatible: the plan uses ggml types only (llama.cpp's fallbacks).
        other_tensor_bytes: tensor bytes of the same recipe with the other `gguf_compatible`
            setting (ragged k-types vs llama.cpp's fallbacks), for comparison.
        linears: with a calibrated method (gptq, awq, …, `act`), per decoder linear the relative
            output error on the calibration activations by round-to-nearest and by the method
            used (`lowbit.algos.sequential.LinearReport`).
        layers: with a calibrated method, what it chose per layer (AWQ: α per scale group and
            clipping; SmoothQuant/W8A8: dead channels, static steps).
        mixed: with `target_bpw`, the allocation: target, candidates, predicted KLD, per tensor
            the qtype, predicted ΔKLD and α, the candidates skipped (and why).
    """

    source: str
    kind: str
    recipe: str
    plan: list[PlanEntry]
    dry_run: bool
    rel_rmse: dict[str, float] = field(default_factory=dict)
    file_bytes: int = 0
    seconds: float = 0.0
    gguf_compatible: bool = False
    other_tensor_bytes: int = 0
    linears: dict[str, LinearReport] = field(default_factory=dict)
    layers: list[dict[str, Any]] = field(default_factory=list)
    mixed: dict[str, Any] | None = None

    @property
    def src_bytes(self) -> int:
        return sum(e.src_bytes for e in self.plan)

    @property
    def tensor_bytes(self) -> int:
        return sum(e.nbytes for e in self.plan)

    @property
    def n_weights(self) -> int:
        return sum(e.numel for e in self.plan)

    @property
    def bits_per_weight(self) -> float:
        """Bits of stored tensor data per weight, over all tensors (norms included)."""
        return 8 * self.tensor_bytes / self.n_weights if self.n_weights else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "recipe": self.recipe,
            "dry_run": self.dry_run,
            "src_bytes": self.src_bytes,
            "tensor_bytes": self.tensor_bytes,
            "file_bytes": self.file_bytes,
            "bits_per_weight": self.bits_per_weight,
            "gguf_compatible": self.gguf_compatible,
            "other_bits_per_weight": 8 * self.other_tensor_bytes / self.n_weights if self.n_weights else 0.0,
            "seconds": self.seconds,
            "linears": {k: asdict(v) for k, v in self.linears.items()},
            "layers": self.layers,
            "mixed": self.mixed,
            "tensors": [
                {
                    "name": e.name,
                    "shape": list(e.shape),
                    "src_dtype": e.src_dtype,
                    "src_bytes": e.src_bytes,
                    "requested": e.requested,
                    "qtype": e.qtype,
                    "bytes": e.nbytes,
                    "bits_per_weight": e.bits_per_weight,
                    "reason": e.reason,
                    "fallback": e.fallback,
                    "outliers": e.outliers,
                    "predicted": e.predicted,
                    "rel_rmse": self.rel_rmse.get(e.name),
                }
                for e in self.plan
            ],
        }


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f}"


def format_plan(report: ConvertReport, *, width: int = 48) -> str:
    """The plan as a text table: per tensor the qtype, bytes before/after, bits per weight and
    (after a real run) relative RMSE; then totals by qtype and for the file."""
    rmse = bool(report.rel_rmse)
    head = f"{'tensor':<{width}} {'shape':>12} {'src':>5} {'qtype':>10} {'MiB in':>8} {'MiB out':>8} {'bpw':>6}"
    lines = [head + (f" {'rel rmse':>9}" if rmse else "") + "  note", "-" * (len(head) + (10 if rmse else 0) + 6)]
    for e in report.plan:
        name = e.name if len(e.name) <= width else "…" + e.name[-(width - 1) :]
        shape = "×".join(map(str, e.shape))
        row = (
            f"{name:<{width}} {shape:>12} {e.src_dtype.lower():>5} {e.qtype:>10} {_mib(e.src_bytes):>8} "
            f"{_mib(e.nbytes):>8} {e.bits_per_weight:>6.2f}"
        )
        if rmse:
            r = report.rel_rmse.get(e.name)
            row += f" {r:>9.2e}" if r is not None else f" {'':>9}"
        notes = [e.fallback] if e.fallback else []
        notes += [f"+ {e.outliers} outliers"] if e.outliers else []
        notes += [f"predicted ΔKLD {e.predicted:.2e}"] if e.predicted is not None else []
        lines.append(row + "".join(f"  {n}" for n in notes))
    lines.append("")
    by_type: dict[str, list[int]] = {}
    for e in report.plan:
        acc = by_type.setdefault(e.qtype, [0, 0, 0])
        acc[0] += 1
        acc[1] += e.numel
        acc[2] += e.nbytes
    for qt, (n, numel, nb) in sorted(by_type.items(), key=lambda kv: -kv[1][2]):
        lines.append(
            f"  {qt:>10}: {n:4d} tensors {numel / 1e6:9.2f} M weights {_mib(nb):>9} MiB {8 * nb / numel:6.2f} bpw"
        )
    fallbacks = sum(1 for e in report.plan if e.fallback.startswith("fallback"))
    verb = "estimated file size" if report.dry_run else "file size"
    lines.append(
        f"total: {len(report.plan)} tensors, {report.n_weights / 1e6:.2f} M weights, "
        f"{_mib(report.src_bytes)} MiB → {_mib(report.tensor_bytes)} MiB of tensor data "
        f"({report.bits_per_weight:.3f} bpw); {verb} {_mib(report.file_bytes)} MiB"
        + (f"; {fallbacks} fallback(s)" if fallbacks else "")
    )
    if report.other_tensor_bytes != report.tensor_bytes and report.n_weights:
        other = 8 * report.other_tensor_bytes / report.n_weights
        how = "ragged k-types (without --gguf-compatible)" if report.gguf_compatible else "--gguf-compatible"
        lines.append(
            f"with {how}: {_mib(report.other_tensor_bytes)} MiB of tensor data ({other:.3f} bpw, "
            f"{other - report.bits_per_weight:+.3f})"
        )
    if report.mixed is not None:
        m = report.mixed
        lines.append(
            f"--target-bpw {m['target_bpw']:g}: predicted KLD {m['predicted_kld']:.4g} (sum of per-tensor ΔKLD, "
            f"sensitivity on {m['probe_tokens']} calibration tokens)"
            + (f"; candidates skipped for {len(m['skipped'])} tensor(s)" if m["skipped"] else "")
        )
    if report.linears:
        ratios = sorted(r.error / r.rtn_error for r in report.linears.values() if r.rtn_error > 0)
        if ratios:
            med = ratios[len(ratios) // 2]
            method = next(iter(report.linears.values())).method
            lines.append(
                f"{method}: {len(report.linears)} linears; relative output error / round-to-nearest's: "
                f"median {med:.3f}, range {ratios[0]:.3f} … {ratios[-1]:.3f}"
            )
    if not report.dry_run:
        mb_s = report.src_bytes / 1e6 / report.seconds if report.seconds else 0.0
        lines.append(f"converted in {report.seconds:.1f} s ({mb_s:.0f} MB/s of source weights)")
    return "\n".join(lines)


def _metadata(
    src: Source, recipe: str, overrides: Sequence[str], gguf_compatible: bool, im: Imatrix | None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"model.config": json.dumps(src.config, ensure_ascii=False)}
    if src.generation_config is not None:
        meta["model.generation_config"] = json.dumps(src.generation_config, ensure_ascii=False)
    if src.tokenizer_json is not None:
        meta["tokenizer.json"] = src.tokenizer_json
    if src.tokenizer_config is not None:
        meta["tokenizer.config"] = json.dumps(src.tokenizer_config, ensure_ascii=False)
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    meta.update(
        {
            "quantization.tool_version": _core.__version__,
            "quantization.method": "rtn",
            "quantization.recipe": recipe,
            "quantization.params": json.dumps(
                {
                    "tensor_types": list(overrides),
                    "gguf_compatible": gguf_compatible,
                    **({"imatrix": {"tensors": len(im.sum_sq), "calibration": im.provenance}} if im else {}),
                }
            ),
            "quantization.source": json.dumps({"kind": src.kind, "path": str(src.path)}),
            "quantization.time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    )
    if im is not None and im.calib_sha256:
        meta["quantization.calib_sha256"] = im.calib_sha256
        if isinstance(im.provenance.get("seed"), int):
            meta["quantization.seed"] = np.uint64(im.provenance["seed"])  # LBF.md: u64
    return meta


def _inputs(src: Source) -> list[str]:
    """Files the source reads from (the destination may not be one of them)."""
    p = Path(src.path)
    if p.is_dir():
        return [str(f) for f in sorted(p.iterdir()) if f.is_file()]
    return [str(p)]


def _rel_rmse(x: npt.NDArray[np.float32], y: npt.NDArray[np.float32]) -> float:
    """‖y − x‖ / ‖x‖, summed in float64 over chunks (y is overwritten: no full-size temporary)."""
    np.subtract(y, x, out=y)
    err, ref = _sumsq(y.reshape(-1)), _sumsq(x.reshape(-1))
    return math.sqrt(err / ref) if ref > 0 else math.sqrt(err)


def _sumsq(v: npt.NDArray[np.float32], chunk: int = 2**22) -> float:
    return sum(float(np.dot(c, c)) for c in (v[i : i + chunk].astype(np.float64) for i in range(0, v.size, chunk)))


def convert(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str] | None,
    type: str = "q4_k_m",
    *,
    tensor_types: Sequence[str] = (),
    dry_run: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    gguf_compatible: bool = False,
    imatrix: str | os.PathLike[str] | Imatrix | None = None,
    calib: Sequence[str | os.PathLike[str]] | None = None,
    calib_samples: int = 128,
    calib_seq_len: int = 512,
    seed: int = 0,
    method: str = "rtn",
    gptq: GPTQConfig | None = None,
    awq: AWQConfig | None = None,
    act: str | None = None,
    observer: str = "minmax",
    smooth_alpha: float = 0.5,
    outliers: float | str | None = None,
    outlier_method: str = "magnitude",
    target_bpw: float | None = None,
    candidates: Sequence[str] | None = None,
    sensitivity: str | os.PathLike[str] | None = None,
    resume: bool = False,
) -> ConvertReport:
    """Convert a model to an LBF file.

    Args:
        src: a Hugging Face checkpoint directory (config.json + safetensors), a GGUF file, or an
            HF repo id (downloaded with `huggingface_hub`, weights/config/tokenizer only).
        out: the LBF file to write (None only with `dry_run`).
        type: a recipe (`lowbit.conversion.RECIPES`: q4_k_m, q4_k_s, q5_k_m, q3_k_m, q2_k, q6_k,
            q8_0, int4-g128, int3-g128) or a qtype name (every matrix gets it).
        tensor_types: `REGEX=QTYPE` overrides, the first match wins; the regex is searched in the
            HF name and in the llama.cpp-style alias (`blk.3.attn_v`).
        gguf_compatible: store ggml types only, so the file exports to GGUF: where rows are not a
            multiple of 256, k-quants fall back to llama.cpp's legacy types (q4_k → q5_0, …)
            instead of becoming ragged k-types (q4_kr, …).
        imatrix: importance statistics weighting every quantized weight's scale search: an
            `Imatrix`, a GGUF imatrix file (`lowbit imatrix`, or llama.cpp's), or "auto" to
            compute them first from `calib` (`lowbit.calib.imatrix.compute_imatrix`).
        calib, calib_samples, calib_seq_len, seed: the calibration text files (default: the
            packaged text), samples × tokens and seed of `imatrix="auto"`.
        method: "rtn" (round-to-nearest, tensor by tensor), or layer by layer on the calibration
            tokens `calib`/`calib_samples`/`calib_seq_len`/`seed` (`lowbit.algos.sequential`):
            "gptq" (fits the group-affine types of the plan, int4-g128, …, and weights the
            others' scale search by the Hessian's diagonal), "awq" (activation-aware scales
            folded into the norms and linears, and clipping: `lowbit.algos.awq`), "awq+gptq"
            (AWQ's scales, then GPTQ on the scaled weights), "smoothquant" (with `act`:
            activation outliers migrated into the weights: `lowbit.algos.smooth`).
        gptq: GPTQ's parameters (act-order, static groups, damping, block size).
        awq: AWQ's parameters (grids, clipping).
        act: "int8" (static: one step per tensor from the calibration `observer`) or
            "int8-dynamic" (one step per token): the decoder linears become W8A8, int8 weights
            per output channel (`int8-row-sym`) times int8 activations; with method "rtn" or
            "smoothquant".
        observer: the static steps' observer (minmax, ema, percentile, kl, mse).
        smooth_alpha: SmoothQuant's migration strength α in [0, 1].
        outliers: keep this fraction of every quantized decoder linear's weights exactly as sparse
            outliers (`0.005` or `"0.5%"`, at most 10%; `lowbit.algos.outliers`): chosen by
            `outlier_method` ("magnitude" or "deviation", calibration-free) with
            "rtn", by Hessian-weighted sensitivity inside GPTQ with "gptq" and "awq+gptq". Their
            bytes count in the plan and in bits per weight. Not with "awq" alone, `act`, or
            `gguf_compatible` (GGUF cannot hold them: the error lists the tensors).
        target_bpw: mixed precision: choose each matrix's qtype among `candidates` (default
            `lowbit.algos.mixed.DEFAULT_CANDIDATES`) so the whole file (every tensor, sidecars
            included) has at most this many bits per weight and the least predicted KL
            divergence: each tensor's sensitivity is measured on the calibration text (the
            packaged text, with a warning, when `calib` is not given; `lowbit.algos.mixed`), also
            in a dry run, which then prints the plan. With any `method`; the candidates are
            quantized with the importance statistics for imatrix, GPTQ and AWQ. ParameterError
            names the feasible range for a target outside it.
        candidates: the qtypes `target_bpw` chooses from (GGUF-compatible: `GGUF_CANDIDATES`).
        sensitivity: a JSON file caching `target_bpw`'s measurement: read when it was written for
            this source, calibration tokens, candidates and method (else measured again, with a
            warning), written otherwise — so several budgets cost one measurement.
        resume: continue the checkpoint `<out>.ckpt/` of an interrupted calibrated run.
        dry_run: plan only; nothing is read beyond headers (except to measure `target_bpw`'s
            sensitivities) and nothing is written.
        overwrite: replace an existing `out` (the new file replaces it atomically at the end).
        progress: show a tqdm bar on stderr.

    Returns a `ConvertReport`; `format_plan(report)` renders it.

    Raises `ParameterError` (unknown type, bad override, `out` missing), `DestinationExistsError`,
    `FormatError`/`UnsupportedError` for bad sources (see `resolve_source`), `InvalidValueError`
    for NaN/Inf weights (naming the tensor). On any error and on Ctrl-C no output file is left.
    """
    recipe = recipe_for(type)
    overrides = parse_tensor_types(tensor_types)
    if method not in METHODS:
        raise ParameterError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method != "rtn" and imatrix is not None:
        raise ParameterError(f"--method {method} computes its own statistics: drop --imatrix")
    if act not in (None, "int8", "int8-dynamic"):
        raise ParameterError(f"act must be 'int8' or 'int8-dynamic', got {act!r}")
    if act is not None and method not in ("rtn", "smoothquant"):
        raise ParameterError(f"int8 activations (--act) go with --method rtn or smoothquant, not {method}")
    if method == "smoothquant" and act is None:
        raise ParameterError("--method smoothquant smooths for int8 activations: add --act int8 (or int8-dynamic)")
    w8 = None
    if act is not None:
        w8 = W8A8Config(
            "static" if act == "int8" else "dynamic", observer, smooth_alpha if method == "smoothquant" else None
        )
        if imatrix is not None:
            raise ParameterError("--act int8 quantizes the linears per channel to int8: drop --imatrix")
        overrides = [(DECODER_LINEAR, W8A8_QTYPE), *overrides]
    frac = 0.0 if outliers is None else parse_fraction(outliers)
    if frac:
        check_method(outlier_method)
        if method == "awq":
            raise ParameterError("outliers are chosen inside GPTQ with AWQ's scales: use --method awq+gptq")
        if act is not None:
            raise ParameterError("W8A8 weights (--act) cannot carry outliers")
        gptq = dataclasses.replace(gptq or GPTQConfig(), outliers=frac)
    if out is None and not dry_run:
        raise ParameterError("an output path is needed (or pass dry_run=True)")
    if out is not None and not dry_run and os.path.exists(out) and not overwrite:
        raise DestinationExistsError(f"{out} exists (pass overwrite=True / --overwrite to replace it)")
    im: Imatrix | None = None
    if isinstance(imatrix, Imatrix):
        im = imatrix
    elif imatrix == "auto" and not dry_run:
        im = compute_imatrix(
            src, calib=calib, n_samples=calib_samples, seq_len=calib_seq_len, seed=seed, progress=progress
        )
    elif imatrix is not None and imatrix != "auto":
        im = load_imatrix(imatrix)
    with resolve_source(src) as source:
        cfg = source.config
        model_type = str(cfg.get("model_type", ""))
        if model_type not in KNOWN_ARCHITECTURES:
            warnings.warn(
                f"model_type {model_type!r} is not one lowbit knows ({', '.join(KNOWN_ARCHITECTURES)}): "
                "converting tensor by tensor with generic rules; the result cannot be evaluated or run yet",
                LowbitWarning,
                stacklevel=2,
            )
        n_layers = int(cfg.get("num_hidden_layers", 0) or 0)
        n_head = int(cfg.get("num_attention_heads", 1) or 1)
        n_gqa = n_head // max(1, int(cfg.get("num_key_value_heads", n_head) or n_head))
        names = {t.name for t in source.tensors}
        tied = bool(cfg.get("tie_word_embeddings", "lm_head.weight" not in names)) and "lm_head.weight" not in names
        plans = [
            make_plan(
                [(t.name, t.shape, t.dtype, t.nbytes) for t in source.tensors],
                recipe,
                n_layers=n_layers,
                n_gqa=n_gqa,
                tied=tied,
                overrides=overrides,
                gguf_compatible=g,
            )
            for g in (gguf_compatible, not gguf_compatible)
        ]
        plan = plans[0]
        gcfg = gptq or GPTQConfig()
        acfg = awq or AWQConfig()
        layered = method != "rtn" or w8 is not None
        if layered or target_bpw is not None:
            check_model(cfg, {t.name: t for t in source.tensors})
            if source.tokenizer_json is None:
                raise ParameterError(f"{source.path}: no tokenizer.json, which the calibration text needs")
            if target_bpw is not None and calib is None:
                warnings.warn(
                    "--target-bpw measures each tensor's sensitivity on calibration text and none was given "
                    "(--calib): using the packaged default text",
                    LowbitWarning,
                    stacklevel=2,
                )
            cal = calibration_tokens(
                source.tokenizer_json, files=calib, n_samples=calib_samples, seq_len=calib_seq_len, seed=seed
            )
        if frac and gguf_compatible:
            carriers = [e.name for e in plan if _carries_outliers(e)]
            raise ParameterError(
                f"--gguf-compatible: GGUF cannot hold outliers, which {len(carriers)} tensor(s) would carry: "
                + ", ".join(carriers)
            )
        mixed: dict[str, Any] | None = None
        if target_bpw is not None:
            plan, mixed = _allocate(
                plan,
                source,
                cal,
                target_bpw,
                candidates=None if candidates is None else tuple(candidates),
                gguf_compatible=gguf_compatible,
                importance=method != "rtn" or im is not None,
                frac=frac,
                cache=None if sensitivity is None else Path(sensitivity),
                progress=progress,
            )
        if frac:
            plan = [_with_sidecar(e, frac) if _carries_outliers(e) else e for e in plan]
        meta = _metadata(source, type, tensor_types, gguf_compatible, im)
        params = json.loads(meta["quantization.params"])
        if frac:
            chooser = "gptq-hessian" if "gptq" in method else outlier_method
            params["outliers"] = {"fraction": frac, "selection": chooser, "tensors": "decoder linears"}
        if mixed is not None:
            params["mixed"] = mixed
        if layered:
            meta["quantization.method"] = method if w8 is None or w8.alpha is not None else "w8a8"
            if w8 is not None:
                params["w8a8"] = asdict(w8)
            if "gptq" in method:
                params["gptq"] = asdict(gcfg)
            if "awq" in method:
                params["awq"] = asdict(acfg)
        if layered or mixed is not None:
            params["calibration"] = cal.to_json()
            meta.update(cal.provenance())
        meta["quantization.params"] = json.dumps(params)
        report = ConvertReport(str(source.path), source.kind, type, plan, dry_run, gguf_compatible=gguf_compatible)
        report.other_tensor_bytes = sum(e.nbytes for e in (plan if frac or mixed else plans[1]))
        report.mixed = mixed
        estimate = sum(_align(e.nbytes) + _INDEX_BYTES_PER_TENSOR + len(e.name) for e in plan)
        report.file_bytes = estimate + sum(len(k) + len(str(v).encode()) + 16 for k, v in meta.items()) + 64
        if dry_run:
            return report
        assert out is not None
        t0 = time.perf_counter()
        tensors = {t.name: t for t in source.tensors}
        state_dir = Path(f"{out}.ckpt")
        stored: set[str] = set()
        if layered:
            linears = {e.name: e.qtype for e in plan if DECODER_LINEAR.match(e.name)}
            fn: LayerFn
            if w8 is not None:
                fn = smooth_method(cfg, w8, cal.seq_len)
            elif method == "gptq":
                fn = gptq_layer(cfg, linears, gcfg, cal.seq_len)
            else:
                fn = awq_method(cfg, linears, acfg, cal.seq_len, gcfg if method == "awq+gptq" else None)
            run_params: dict[str, Any] = {"method": method, "plan": linears, "gptq": asdict(gcfg)}
            run_params.update(awq=asdict(acfg), w8a8=None if w8 is None else asdict(w8))
            run = run_layers(source, cal, fn, run_params, state_dir, resume=resume, progress=progress, desc=method)
            report.linears, report.layers, stored = run.linears, run.layers, run.stored
            params = json.loads(meta["quantization.params"])
            params["layers"] = run.layers
            meta["quantization.params"] = json.dumps(params)
        with LBFWriter(out, metadata=meta, inputs=_inputs(source)) as w:
            with progress_bar(report.src_bytes, progress, f"{Path(source.path).name} → {type}") as bar:
                for k, e in enumerate(plan):
                    x = tensors[e.name].load()
                    if e.name in stored:
                        t = load_quantized(state_dir, e.name)
                        w.add(e.name, t)
                        if isinstance(t, QTensor):
                            if method not in SCALING_METHODS:  # these store weights scaled on purpose
                                report.rel_rmse[e.name] = _rel_rmse(x.reshape(e.shape), dequantize(t))
                            plan[k] = dataclasses.replace(e, nbytes=t.nbytes)  # an act-order permutation counts
                    elif e.qtype == "f32":
                        w.add(e.name, x.reshape(e.shape))
                        report.rel_rmse[e.name] = 0.0
                    else:
                        try:
                            imp = None if im is None else im.importance(e.name)
                            if e.outliers:
                                q = quantize_with_outliers(
                                    x.reshape(e.shape), e.qtype, frac, method=outlier_method, importance=imp
                                )
                                plan[k] = dataclasses.replace(e, nbytes=q.nbytes)
                            else:
                                q = quantize(x.reshape(e.shape), e.qtype, importance=imp)
                        except InvalidValueError as err:
                            raise InvalidValueError(f"tensor {e.name}: {err}", err.index, err.row, err.col) from None
                        w.add(e.name, q)
                        report.rel_rmse[e.name] = _rel_rmse(x.reshape(e.shape), dequantize(q))
                    del x
                    if bar is not None:
                        bar.update(e.src_bytes)
        report.seconds = time.perf_counter() - t0
        report.file_bytes = os.path.getsize(out)
        if layered:
            remove_state(state_dir)
        return report


def _allocate(
    plan: list[PlanEntry],
    source: Source,
    cal: CalibrationSet,
    target_bpw: float,
    *,
    candidates: tuple[str, ...] | None,
    gguf_compatible: bool,
    importance: bool,
    frac: float,
    cache: Path | None,
    progress: bool,
) -> tuple[list[PlanEntry], dict[str, Any]]:
    """The plan with every matrix's qtype chosen by `lowbit.algos.mixed` for `target_bpw` over the
    whole file (vectors and, with `frac`, outlier sidecars count as fixed bytes); and the
    provenance for `quantization.params`. `cache`: a JSON file of the sensitivities, read when it
    matches this source, calibration text and candidates, else measured and written."""
    candidates = candidates or (GGUF_CANDIDATES if gguf_compatible else DEFAULT_CANDIDATES)
    names = [e.name for e in plan if len(e.shape) == 2]
    # every decoder linear gets a candidate type, so each carries a sidecar after the allocation
    sidecars = sum(sidecar_bytes(frac, *e.shape)[1] for e in plan if frac and DECODER_LINEAR.match(e.name))
    fixed = sum(e.nbytes for e in plan if e.name not in names) + sidecars
    n_weights = sum(e.numel for e in plan)
    shapes = {e.name: (e.shape[0], e.shape[1]) for e in plan if e.name in names}
    check_target(
        shapes, candidates, target_bpw, gguf_compatible=gguf_compatible, n_weights=n_weights, fixed_bytes=fixed
    )
    tensors = {t.name: t for t in source.tensors}
    how = {"candidates": list(candidates), "gguf_compatible": gguf_compatible, "importance": importance}
    key = fingerprint(source, cal, {"names": names, **how})
    cached = None
    if cache is not None and cache.exists():
        try:
            got = json.loads(cache.read_text())
            cached = Sensitivity.from_json(got["sensitivity"]) if got.get("fingerprint") == key else None
        except (ValueError, KeyError, TypeError) as err:
            raise FormatError(f"{cache}: not a sensitivity file written by lowbit convert ({err})") from None
        if cached is None:
            warnings.warn(f"{cache} holds another model's, text's or candidates' sensitivities: measuring again",
                          LowbitWarning, stacklevel=3)  # fmt: skip
    sens = cached or measure_sensitivity(
        source.config, tensors, cal, names, candidates=candidates, gguf_compatible=gguf_compatible,
        importance=importance, progress=progress,
    )  # fmt: skip
    if cache is not None and cached is None:
        write_json(cache, {"fingerprint": key, **how, "sensitivity": sens.to_json()})
    alloc = allocate(sens, target_bpw, n_weights=n_weights, fixed_bytes=fixed)
    out = []
    for e in plan:
        o = alloc.chosen.get(e.name)
        if o is None:
            out.append(e)
            continue
        note = f"ragged: rows of {e.shape[1]} are not a multiple of 256" if o.qtype != o.requested else ""
        why = f"--target-bpw {target_bpw:g}"
        out.append(dataclasses.replace(e, requested=o.requested, qtype=o.qtype, nbytes=o.nbytes, reason=why,
                                       fallback=note, predicted=o.predicted))  # fmt: skip
    skipped = {n: t.skipped for n, t in sens.tensors.items() if t.skipped}
    provenance = {
        "target_bpw": target_bpw,
        "candidates": list(candidates),
        "predicted_kld": alloc.predicted_kld,
        "probe_tokens": sens.probe_tokens,
        "tensors": {
            n: {"qtype": alloc.choice[n], "predicted": alloc.chosen[n].predicted, "alpha": t.alpha}
            for n, t in sens.tensors.items()
        },
        "skipped": skipped,
    }
    return out, provenance


def _carries_outliers(e: PlanEntry) -> bool:
    """Whether `--outliers` gives `e` a sidecar: the quantized decoder linears."""
    return bool(DECODER_LINEAR.match(e.name)) and e.qtype not in FLOAT_QTYPES


def _with_sidecar(e: PlanEntry, frac: float) -> PlanEntry:
    """`e` with the outlier budget `frac` and its sidecar's bytes."""
    n, nbytes = sidecar_bytes(frac, e.shape[0], e.shape[1])
    return dataclasses.replace(e, nbytes=e.nbytes + nbytes, outliers=n)


def _align(n: int, a: int = 64) -> int:
    return (n + a - 1) // a * a
