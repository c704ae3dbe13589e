"""Layer-by-layer quantization of a whole model with calibration data (`lowbit convert --method
gptq|awq|awq+gptq|smoothquant`, and static int8 activations), bounded in memory and resumable.

`run_layers` drives a per-layer method (`LayerFn`) over the decoder layers, in order:
1. layer `i`'s float tensors are read from the source; the method gets them with the layer's
   calibration input (the output of layers `0..i-1` *as quantized*, float32
   (samples · seq_len, hidden)), runs the layer with taps on the linear inputs as it needs
   (`lowbit.calib.capture.collect`) and returns the tensors to store: the quantized linears and
   any float vector it changed (AWQ and SmoothQuant fold scales into the norms);
2. the activations run through the layer as stored: they become the next layer's input;
3. a checkpoint is written next to the output (`<out>.ckpt/`): the layer's tensors and report,
   the next layer's input (`x_{i+1}.npy`), then `state.json` (atomically: the commit point) with
   the layers done and a fingerprint of the source, the calibration tokens and the method's
   parameters (the plan included). Every file is written to a temporary name, fsynced, renamed.

After the last layer the LBF file is written tensor by tensor from the checkpoint (what the method
stored) and the source (everything else, by round-to-nearest as in a plain conversion), and the
checkpoint is removed. `resume=True` continues after the last committed layer of a matching
checkpoint; a Ctrl-C or a kill loses at most the layer in progress. Memory holds one layer's
weights, activations and statistics, never the model.

GPTQ's layer (`gptq_layer`): Σ x xᵀ per tap (q/k/v share one Hessian, gate/up another), then
each of the seven linear weights quantized to the plan's qtype by GPTQ: on the group-affine grid
(`lowbit.algos.gptq.gptq_quantize`), or fitted to a ggml block type or ragged k-type
(`lowbit.algos.gptq_blocks`), so a k-quant recipe stays exportable to GGUF.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from ..calib.capture import TAP_LINEARS, check_model, collect, embed, layer_weights
from ..calib.data import CalibrationSet
from ..conversion.source import Source
from ..errors import ParameterError
from ..qtensor import FLOAT_QTYPES, ActQuant, QTensor, affine_params, quantize
from .gptq import gptq_quantize, output_error
from .gptq_blocks import gptq_blocks
from .outliers import MAX_FRACTION

__all__ = [
    "GPTQConfig",
    "LayerFn",
    "LayerRun",
    "LinearReport",
    "gptq_layer",
    "load_quantized",
    "remove_state",
    "run_layers",
]

log = logging.getLogger("lowbit.gptq")

STATE_VERSION = 2

Weight = QTensor | npt.NDArray[np.float32]


@dataclass(frozen=True)
class GPTQConfig:
    """GPTQ's parameters (the qtype, group size and symmetry come from the plan).

    Attributes:
        act_order: quantize columns in decreasing order of the Hessian's diagonal.
        static_groups: group ranges fixed from the unquantized weights before the column loop
            (with act-order the tensor is then stored in input order, no permutation).
        damp: relative damping λ / mean(diag H), raised ×10 when the Cholesky factorisation fails.
        block_size: columns per lazy-batch update.
        outliers: fraction of each weight (0 … `MAX_FRACTION`) kept exactly as sparse outliers,
            chosen inside the column loop by Hessian-weighted sensitivity (SpQR; fitted by
            `gptq_blocks` for every type, without act-order).
    """

    act_order: bool = False
    static_groups: bool = False
    damp: float = 0.01
    block_size: int = 128
    outliers: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.outliers, int | float) and 0.0 <= self.outliers <= MAX_FRACTION):
            raise ParameterError(f"GPTQ outliers must be a fraction in [0, {MAX_FRACTION}], got {self.outliers!r}")
        if self.outliers and self.act_order:
            raise ParameterError("GPTQ with outliers does not take act-order: drop one of them")


@dataclass
class LinearReport:
    """One weight's relative proxy output error tr(ΔW H ΔWᵀ) / tr(W H Wᵀ) on the calibration
    activations, by round-to-nearest (for block types: weighted by the Hessian's diagonal, i.e.
    the imatrix) and by the method used, GPTQ's damping, and what else the method chose (`extra`:
    AWQ's α and clipping, SmoothQuant's activation step)."""

    qtype: str
    method: str
    rtn_error: float
    error: float
    damp: float | None = None
    dead_columns: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def quantize_linear(
    w: npt.NDArray[np.float32], h: npt.NDArray[np.float64], qtype: str, cfg: GPTQConfig
) -> tuple[QTensor, LinearReport]:
    """GPTQ of one weight `w` (float32 (rows, cols)) with `h = Σ x xᵀ` (float64 (cols, cols)) to
    `qtype`: on the group-affine grid, or fitted to a block type (and with `cfg.outliers`, for
    every type); floats are stored as they are."""
    rows, cols = w.shape
    if qtype in FLOAT_QTYPES:
        q = quantize(w, qtype)
        return q, LinearReport(qtype, "float", 0.0, output_error(w, q.dequantize(), h))
    affine = affine_params(qtype, rows, cols)
    if affine is None or cfg.outliers:
        b = gptq_blocks(w, h, qtype, damp=cfg.damp, outliers=cfg.outliers)
        return b.qtensor, LinearReport(b.qtensor.qtype, "gptq", b.rtn_error, b.error, b.damp, b.dead_columns)
    base, g, sym = affine
    r = gptq_quantize(
        w,
        h,
        base,
        group_size=g,
        symmetric=sym,
        act_order=cfg.act_order,
        static_groups=cfg.static_groups,
        block_size=cfg.block_size,
        damp=cfg.damp,
    )
    return r.qtensor, LinearReport(r.qtensor.qtype, "gptq", r.rtn_error, r.error, r.damp, r.dead_columns)


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """`write` the file `path` under a temporary name, fsync it, rename it into place."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    """`obj` as JSON in `path`, atomically (temporary file, fsync, rename)."""
    _atomic_write(path, lambda f: f.write(json.dumps(obj).encode()))


def _pack(t: Weight) -> dict[str, npt.NDArray[Any]]:
    if not isinstance(t, QTensor):
        return {"array": np.asarray(t, np.float32)}
    out: dict[str, npt.NDArray[Any]] = {"data": t.data, "shape": np.array(t.shape, np.int64)}
    out["meta"] = np.frombuffer(
        json.dumps(
            {
                "qtype": t.qtype,
                "group_size": t.group_size,
                "symmetric": t.symmetric,
                "act": None if t.act is None else asdict(t.act),
            }
        ).encode(),
        np.uint8,
    )
    if t.perm is not None:
        out["perm"] = t.perm
    if t.outliers is not None:
        out["outlier_rows"], out["outlier_cols"], out["outlier_vals"] = t.outliers
    return out


def _unpack(z: Mapping[str, npt.NDArray[Any]], prefix: str) -> Weight:
    if prefix + "array" in z:
        return np.array(z[prefix + "array"])
    meta = json.loads(bytes(z[prefix + "meta"]).decode())
    rows, cols = (int(v) for v in z[prefix + "shape"])
    perm = z[prefix + "perm"] if prefix + "perm" in z else None
    parts = ("outlier_rows", "outlier_cols", "outlier_vals")
    outl = tuple(np.array(z[prefix + k]) for k in parts) if prefix + parts[0] in z else None
    return QTensor(
        meta["qtype"],
        (rows, cols),
        np.array(z[prefix + "data"]),
        group_size=meta["group_size"],
        symmetric=meta["symmetric"],
        perm=perm,
        act=None if meta["act"] is None else ActQuant(**meta["act"]),
        outliers=outl,  # type: ignore[arg-type]
    )


def fingerprint(source: Source, cal: CalibrationSet, params: Mapping[str, Any]) -> str:
    """SHA-256 over what determines the result: the source's config and tensor table, the
    calibration tokens and the method's parameters (per-tensor qtypes included)."""
    h = hashlib.sha256()
    h.update(json.dumps(source.config, sort_keys=True).encode())
    for t in source.tensors:
        h.update(f"{t.name}:{t.shape}:{t.dtype}:{t.nbytes};".encode())
    h.update(cal.tokens_sha256.encode())
    h.update(json.dumps(dict(params), sort_keys=True, default=str).encode())
    return h.hexdigest()


LayerResult = tuple[dict[str, Weight], dict[str, dict[str, Any]], dict[str, Any]]
"""What a method does to one layer: the tensors it stores (names under `model.layers.{i}.`:
quantized linears, and the float vectors it changed), a JSON report per linear (full names), and
a JSON report of the layer (e.g. AWQ's α per scale group)."""

LayerFn = Callable[[int, dict[str, npt.NDArray[np.float32]], npt.NDArray[np.float32]], LayerResult]
"""`fn(i, weights, x)`: quantize decoder layer `i` (its float tensors by name under
`model.layers.{i}.`) given its calibration input `x` (float32 (tokens, hidden))."""


@dataclass
class LayerRun:
    """The outcome of `run_layers`: per linear weight (full name) its report, per layer the
    layer's report, and the full names of every tensor the checkpoint holds."""

    linears: dict[str, LinearReport]
    layers: list[dict[str, Any]]
    stored: set[str]


def run_layers(
    source: Source,
    cal: CalibrationSet,
    layer_fn: LayerFn,
    params: Mapping[str, Any],
    state_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    desc: str = "layers",
    isa: str | None = None,
) -> LayerRun:
    """Run `layer_fn` over every decoder layer of `source` in order, the calibration tokens `cal`
    flowing through the layers as quantized, checkpointing into `state_dir` (see the module
    doc); `load_quantized` reads the stored tensors. `params` (JSON-able) enter the checkpoint's
    fingerprint with the source and the tokens.

    Raises ParameterError when `state_dir` holds a checkpoint of another run (different
    fingerprint) with `resume`, or any checkpoint without it."""
    tensors = {t.name: t for t in source.tensors}
    n_layers = check_model(source.config, tensors)
    fp = fingerprint(source, cal, params)
    state_path = state_dir / "state.json"
    done = 0
    if state_path.exists():
        try:
            state = json.loads(state_path.read_text())
        except ValueError:
            raise ParameterError(f"{state_path} is not a readable checkpoint: remove {state_dir}") from None
        if not resume:
            raise ParameterError(
                f"{state_dir} holds a checkpoint ({state.get('layers_done')} layers done): "
                "pass resume=True / --resume to continue it, or remove it"
            )
        if state.get("fingerprint") != fp or state.get("version") != STATE_VERSION:
            raise ParameterError(
                f"{state_dir} holds a checkpoint of a different run (source, calibration, plan or parameters "
                "differ): remove it to start over"
            )
        done = int(state["layers_done"])
        log.info("resuming after %d of %d layers", done, n_layers)
    elif state_dir.exists() and any(state_dir.iterdir()):
        raise ParameterError(f"{state_dir} exists and is not a checkpoint: remove it")
    state_dir.mkdir(parents=True, exist_ok=True)
    x = np.load(state_dir / f"x_{done}.npy") if done else embed(tensors, cal.tokens)
    bar = tqdm(total=n_layers, initial=done, unit="layer", desc=desc, disable=not progress)
    try:
        for i in range(done, n_layers):
            w = layer_weights(tensors, i)
            stored, linears, layer = layer_fn(i, w, x)
            x, _ = collect(source.config, {**w, **stored}, x, cal.seq_len, taps=(), isa=isa)
            arrays = {f"{k}/{part}": v for k, t in stored.items() for part, v in _pack(t).items()}
            _atomic_write(state_dir / f"layer_{i}.npz", partial(np.savez, **arrays))  # type: ignore[arg-type]
            write_json(state_dir / f"report_{i}.json", {"linears": linears, "layer": layer, "stored": list(stored)})
            # the next layer's input, under its own name: until state.json says so it is unused
            _atomic_write(state_dir / f"x_{i + 1}.npy", partial(np.save, arr=x))
            write_json(state_path, {"version": STATE_VERSION, "fingerprint": fp, "layers_done": i + 1})
            (state_dir / f"x_{i}.npy").unlink(missing_ok=True)
            bar.update(1)
    finally:
        bar.close()
    run = LayerRun({}, [], set())
    for i in range(n_layers):
        rep = json.loads((state_dir / f"report_{i}.json").read_text())
        run.linears.update((k, LinearReport(**v)) for k, v in rep["linears"].items())
        run.layers.append(rep["layer"])
        run.stored.update(f"model.layers.{i}.{k}" for k in rep["stored"])
    return run


def gptq_layer(
    config: Mapping[str, Any], plan: Mapping[str, str], cfg: GPTQConfig, seq_len: int, isa: str | None = None
) -> LayerFn:
    """The `LayerFn` of GPTQ: Σ x xᵀ of the layer's four taps on the float layer, then each linear
    quantized by GPTQ to its qtype in `plan` (full name → qtype)."""

    def run(i: int, w: dict[str, npt.NDArray[np.float32]], x: npt.NDArray[np.float32]) -> LayerResult:
        _, stats = collect(config, w, x, seq_len, hessian=True, isa=isa)
        qs: dict[str, Weight] = {}
        reports: dict[str, dict[str, Any]] = {}
        for tap, lins in TAP_LINEARS.items():
            for lin in lins:
                name = f"{lin}.weight"
                qs[name], rep = quantize_linear(w[name], stats.hessian[tap], plan[f"model.layers.{i}.{name}"], cfg)
                reports[f"model.layers.{i}.{name}"] = asdict(rep)
        return qs, reports, {}

    return run


def load_quantized(state_dir: Path, name: str) -> Weight:
    """The stored tensor `name` (`model.layers.{i}.…`, one of `LayerRun.stored`) of a finished
    `run_layers`, read from its checkpoint file (one tensor at a time: the writer never holds
    the model): a QTensor, or a float32 array for a vector a method changed."""
    _, _, rest = name.partition(".layers.")
    i, _, key = rest.partition(".")
    with np.load(state_dir / f"layer_{int(i)}.npz") as z:
        return _unpack(z, f"{key}/")


def remove_state(state_dir: Path) -> None:
    """Delete a finished run's checkpoint."""
    shutil.rmtree(state_dir, ignore_errors=True)
