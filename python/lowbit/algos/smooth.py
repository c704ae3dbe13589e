"""SmoothQuant (Xiao et al., 2022) and int8 activations (W8A8), one decoder layer at a time
(`lowbit convert --method smoothquant --act int8`, or `--act int8` alone for W8A8 without
smoothing).

For each scale group of the layer (`lowbit.algos.scaling`), with `X_j` the calibration
activations of input channel `j` and `W_j` the readers' weights of that channel:

1. **Smoothing** (with `alpha`): `s_j = max|X_j|^α / max|W_j|^(1−α)` migrates the activation
   outliers into the weights; `s_j = 1` where either maximum is 0 (a dead channel). The scale is
   folded exactly into the producer (norm, v rows, up rows) and the readers' columns.
2. **Weights**: each linear to int8, symmetric, one scale per output channel (`int8-row-sym`).
3. **Activations**: int8 with one *static* step per tensor, `step = max(|lo|, |hi|) / 127` from
   a calibration observer (`lowbit.calib.observers`: min-max, moving-average min-max, percentile,
   KL, MSE) run over the smoothed activations of the float layer, or dynamically one step per
   token (`act="dynamic"`). The step travels with the weight (`lowbit.ActQuant`, LBF's
   `act_quant` part) and the engine runs the product as int8 × int8 with int32 accumulation.

Each linear's report gives the relative output error `‖y − ŷ‖² / ‖y‖²` of the W8A8 product on the
layer's first calibration chunk, smoothed (`error`) and unsmoothed with min-max static steps
(`rtn_error`), both through `lowbit.matmul`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..calib.capture import TAP_LINEARS, TAPS, collect, layer_forward
from ..calib.observers import OBSERVER_NAMES, make_observer
from ..errors import LowbitWarning, ParameterError
from ..matmul import matmul
from ..qtensor import ActQuant, quantize
from .scaling import ScaleGroup, fold, scale_groups
from .sequential import LayerFn, LayerResult, LinearReport, Weight

__all__ = ["W8A8_QTYPE", "W8A8Config", "act_step", "smooth_method", "smooth_scale"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

W8A8_QTYPE = "int8-row-sym"
"""The weight type of a W8A8 linear: int8, symmetric, one f16 scale per output channel."""

_ERROR_TOKENS = 2048


@dataclass(frozen=True)
class W8A8Config:
    """Int8 activations, with or without SmoothQuant.

    Attributes:
        act: "static" (one step per tensor from `observer`) or "dynamic" (one step per token).
        observer: the calibration observer of static steps (`OBSERVER_NAMES`).
        alpha: SmoothQuant's migration strength in [0, 1]; None: no smoothing.
    """

    act: str = "static"
    observer: str = "minmax"
    alpha: float | None = 0.5

    def __post_init__(self) -> None:
        if self.act not in ("static", "dynamic"):
            raise ParameterError(f"act must be 'static' or 'dynamic', got {self.act!r}")
        if self.observer not in OBSERVER_NAMES:
            raise ParameterError(f"unknown observer {self.observer!r}; known: {', '.join(OBSERVER_NAMES)}")
        if self.alpha is not None and not (isinstance(self.alpha, float | int) and 0.0 <= self.alpha <= 1.0):
            raise ParameterError(f"SmoothQuant's alpha must be in [0, 1], got {self.alpha!r}")


def smooth_scale(
    group: ScaleGroup, readers: Mapping[str, F32], max_abs: npt.ArrayLike, alpha: float
) -> tuple[F64, int]:
    """SmoothQuant's per-channel scale of `group`.

    `readers`: the group's weights, float32 (rows, cols); `max_abs`: max |x| per input column
    (cols,) over the calibration tokens. Returns the scale, float64 (channels,), and the number
    of dead channels (scale 1 because the activation or the weight column is all zero)."""
    x = group.reduce(np.asarray(max_abs, np.float64), "max")
    w = group.reduce(np.max([np.abs(v).max(axis=0) for v in readers.values()], axis=0), "max")
    dead = (x <= 0) | (w <= 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(dead, 1.0, np.power(x, alpha) / np.power(w, 1.0 - alpha))
    return s, int(dead.sum())


def act_step(lo: float, hi: float) -> float:
    """The static int8 step of an observed range: `max(|lo|, |hi|) / 127`."""
    return max(abs(lo), abs(hi)) / 127.0


def _rel_err(y: F32, y_hat: F32) -> float:
    ref = float(np.einsum("ij,ij->", y, y, dtype=np.float64))
    d = y_hat - y
    return float(np.einsum("ij,ij->", d, d, dtype=np.float64)) / ref if ref > 0 else 0.0


def smooth_method(config: Mapping[str, Any], cfg: W8A8Config, seq_len: int, isa: str | None = None) -> LayerFn:
    """The `LayerFn` (`lowbit.algos.sequential.run_layers`) of W8A8 with or without SmoothQuant:
    max |x| per tap on the float layer, the smoothing fold, the observers over the smoothed
    activations (static steps), then the seven linears as `W8A8_QTYPE` with their activation
    quantization. Layer report: `alpha`, the dead channels and the steps per tap."""

    def run(i: int, w: dict[str, F32], x: F32) -> LayerResult:
        sample = x[: max(seq_len, _ERROR_TOKENS // seq_len * seq_len)]
        _, raw = layer_forward(config, w, sample, seq_len, TAPS, isa=isa)
        folded: dict[str, F32] = {}
        row_scale: dict[str, F64] = {}  # a producer linear's rows are divided by its group's scale
        layer: dict[str, Any] = {"alpha": cfg.alpha, "dead_channels": {}, "skipped": {}}
        if cfg.alpha is not None:
            _, stats = collect(config, w, x, seq_len, isa=isa)
            for g in scale_groups(config, w):
                if g.skip:
                    msg = f"SmoothQuant leaves {g.tap} unsmoothed: {g.skip}"
                    warnings.warn(msg, LowbitWarning, stacklevel=2)
                    layer["skipped"][g.tap] = g.skip
                    continue
                current = {**w, **folded}
                readers = {n: current[f"{n}.weight"] for n in g.linears}
                s, dead = smooth_scale(g, readers, stats.max_abs[g.tap], cfg.alpha)
                folded.update(fold(current, g, s))
                if g.prev.endswith("_proj"):
                    row_scale[f"{g.prev}.weight"] = s
                layer["dead_channels"][g.tap] = dead
        smoothed = {**w, **folded}
        steps: dict[str, float] = {}
        if cfg.act == "static":
            observers = {t: make_observer(cfg.observer, bits=8, symmetric=True) for t in TAPS}
            collect(config, smoothed, x, seq_len, isa=isa, observers=observers)
            for t, o in observers.items():
                lo, hi = o.range()
                steps[t] = act_step(float(lo), float(hi))
                if not steps[t] > 0 or not math.isfinite(steps[t]):
                    warnings.warn(
                        f"layer {i} {t}: the calibration activations are all zero; static step 1.0 stored",
                        LowbitWarning,
                        stacklevel=2,
                    )
                    steps[t] = 1.0
        layer["steps"] = steps
        _, acts = layer_forward(config, smoothed, sample, seq_len, TAPS, isa=isa) if folded else (None, raw)
        stored: dict[str, Weight] = {k: v for k, v in folded.items() if v.ndim == 1}
        reports: dict[str, dict[str, Any]] = {}
        for tap, lins in TAP_LINEARS.items():
            act = ActQuant("static", steps[tap]) if cfg.act == "static" else ActQuant("dynamic")
            amax = float(np.abs(raw[tap]).max())  # the baseline: unsmoothed, min-max step of the sample
            base_act = ActQuant("static", act_step(0.0, amax) if amax > 0 else 1.0) if cfg.act == "static" else act
            for lin in lins:
                name = f"{lin}.weight"
                q = quantize(smoothed[name], W8A8_QTYPE).with_act(act)
                stored[name] = q
                y = raw[tap] @ w[name].T
                rtn = quantize(w[name], W8A8_QTYPE).with_act(base_act)
                reports[f"model.layers.{i}.{name}"] = asdict(
                    LinearReport(
                        q.qtype,
                        "smoothquant" if cfg.alpha is not None else "w8a8",
                        _rel_err(y, matmul(raw[tap], rtn)),
                        _rel_err(y, matmul(acts[tap], q) * row_scale.get(name, 1.0)),
                        extra={"act": cfg.act, "step": steps.get(tap)},
                    )
                )
        return stored, reports, layer

    return run
