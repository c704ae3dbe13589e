"""AWQ, activation-aware weight quantization (Lin et al., 2023), for one decoder layer at a time
(`lowbit convert --method awq`, or `awq+gptq`).

For each scale group of the layer (`lowbit.algos.scaling`: input norm → q,k,v; v → o;
post-attention norm → gate,up; up → down):

1. **Scale search.** With `a` the mean |x| of each input channel over the calibration tokens,
   the candidates are `s = a^α` for `α = i / grid`, `i = 0 … grid − 1` (floored at 1e-4 and
   normalised so that `max(s) · min(s) = 1`, as llm-awq does). For each, every reader `W` is
   quantized as `Q(W · diag(s)) · diag(s)⁻¹` and the group's loss is the squared error of the
   readers' outputs over the calibration tokens, `Σ_W tr(ΔW H ΔWᵀ)` with `H = Σ x xᵀ` — the
   exact output MSE of the group's linear layers, from the statistics the layer-by-layer capture
   already gathers (llm-awq runs the block forward per candidate instead; for the q,k,v group it
   measures the attention output, here the q, k, v outputs). `α = 0` is plain round-to-nearest,
   so the chosen scale never increases this loss.
2. **Fold.** The scale is folded into the producer (norm weight or linear rows) and the readers'
   columns: the float layer computes the same function (exactly in real arithmetic).
3. **Clip search** (group-affine types, all readers except q and k, as in the paper): per
   (row, group) the range `r · [min, max]` for `r = 1 − k · max_shrink / clip_grid`,
   `k = 0 … clip_grid − 1`, keeping the `r` of smallest output error of that group's slice,
   `δ H_gg δᵀ` (llm-awq's per-group measure). k-quant and other block types search their own
   scales: they are quantized with the input channels' mean x² (H's diagonal) as importance.
4. **Quantization** of the scaled readers: round-to-nearest with the chosen ranges, or GPTQ on
   the scaled weights with the scaled Hessian `diag(s)⁻¹ H diag(s)⁻¹` (`awq+gptq`).

A group whose shapes do not allow the fold (`ScaleGroup.skip`), or whose readers are all stored
as floats, is left unscaled; the reason is logged, warned and reported.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import _core
from ..calib.capture import TAP_LINEARS, collect, linear_names
from ..errors import LowbitWarning, ParameterError
from ..qtensor import FLOAT_QTYPES, QTensor, is_group_affine, quantize
from .gptq import output_error, quad_error
from .scaling import ScaleGroup, fold, scale_groups
from .sequential import GPTQConfig, LayerFn, LayerResult, LinearReport, Weight, quantize_linear

__all__ = ["AWQConfig", "GroupReport", "awq_layer", "awq_method", "quantize_scaled", "search_clip", "search_scale"]

log = logging.getLogger("lowbit.awq")

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
NO_CLIP = ("self_attn.q_proj", "self_attn.k_proj")


@dataclass(frozen=True)
class AWQConfig:
    """AWQ's parameters.

    Attributes:
        grid: scale exponents α tried: `i / grid` for `i = 0 … grid − 1`.
        clip: search clipping ratios (group-affine readers other than q and k).
        clip_grid, max_shrink: ratios `1 − k · max_shrink / clip_grid`, `k = 0 … clip_grid − 1`.
    """

    grid: int = 20
    clip: bool = True
    clip_grid: int = 20
    max_shrink: float = 0.5

    def __post_init__(self) -> None:
        if not 1 <= self.grid <= 1000 or not 1 <= self.clip_grid <= 1000:
            raise ParameterError(f"AWQ grids must be 1…1000 points, got {self.grid} and {self.clip_grid}")
        if not 0.0 <= self.max_shrink < 1.0:
            raise ParameterError(f"max_shrink must be in [0, 1), got {self.max_shrink}")


@dataclass
class GroupReport:
    """What the search chose for one scale group: `alpha` (None when unscaled), the loss
    `Σ tr(ΔW H ΔWᵀ)` per candidate α (per token, float), and why it was skipped."""

    tap: str
    alpha: float | None
    losses: list[float]
    skip: str = ""


def _rtn(w: F32, qtype: str, importance: F32 | None) -> QTensor:
    """Round-to-nearest of `w` to `qtype`; block types weight their scale search by `importance`."""
    if is_group_affine(qtype) or qtype in FLOAT_QTYPES:
        return quantize(w, qtype)
    return quantize(w, qtype, importance=importance)


def search_scale(
    readers: Mapping[str, F32],
    qtypes: Mapping[str, str],
    h: F32,
    mean_abs: F64,
    group: ScaleGroup,
    grid: int = 20,
) -> tuple[float, F64, list[float]]:
    """The AWQ scale of one group.

    Args:
        readers: the group's weights, float32 (rows, cols) by linear name.
        qtypes: their target qtypes by the same names.
        h: float32 (cols, cols), `Σ x xᵀ / tokens` of the group's input.
        mean_abs: float64 (channels,), mean |x| per channel (`group.reduce` of the columns').
        group: the group (column → channel map).
        grid: number of α candidates.

    Returns `(alpha, s, losses)`: the chosen exponent, the per-channel scale float64
    (channels,), and the loss of each candidate."""
    losses: list[float] = []
    best = (math.inf, 0.0, np.ones_like(mean_abs))
    diag = np.diag(h).astype(np.float32)
    for i in range(grid):
        alpha = i / grid
        s = np.maximum(mean_abs, 1e-4) ** alpha
        s = s / math.sqrt(float(s.max()) * float(s.min()))
        c = group.columns(s)
        loss = 0.0
        for lin, w in readers.items():
            q = _rtn(w * c[None, :], qtypes[lin], diag / (c * c))
            loss += quad_error(q.dequantize() / c[None, :] - w, h)
        losses.append(loss)
        if loss < best[0]:
            best = (loss, alpha, s)
    return best[1], best[2], losses


def _group_blocks(m: F32, gs: int, n_groups: int) -> F32:
    """The diagonal blocks (n_groups, gs, gs) of a (cols, cols) matrix, zero-padded to whole groups."""
    cols = m.shape[0]
    pad = n_groups * gs - cols
    mp = np.pad(m, ((0, pad), (0, pad))) if pad else m
    return np.stack([mp[g * gs : (g + 1) * gs, g * gs : (g + 1) * gs] for g in range(n_groups)])


def search_clip(w: F32, qtype: str, h: F32, clip_grid: int = 20, max_shrink: float = 0.5) -> tuple[F32, F32, F32]:
    """AWQ's clipping search for a group-affine `qtype`.

    `w`: float32 (rows, cols) (already scaled); `h`: float32 (cols, cols), `Σ x xᵀ / tokens` of
    its input. Returns `(group_min, group_max, ratio)`, float32 (rows, groups) each: the ranges
    to quantize with and the chosen shrink ratio per group."""
    rows, cols = w.shape
    gs = int(_core.layout(qtype, rows, cols, None, None)[1] or cols)
    n_groups = -(-cols // gs)
    pad = n_groups * gs - cols
    wp = np.pad(w, ((0, 0), (0, pad))) if pad else w
    wg = wp.reshape(rows, n_groups, gs)
    # each group's own range widened to include 0 (the quantizer's rule)
    lo = np.minimum(wg.min(axis=2), 0.0).astype(np.float32)
    hi = np.maximum(wg.max(axis=2), 0.0).astype(np.float32)
    hb = _group_blocks(h, gs, n_groups)
    best = np.full((rows, n_groups), np.inf)
    ratio = np.ones((rows, n_groups), np.float32)
    for k in range(clip_grid):
        r = np.float32(1.0 - k * max_shrink / clip_grid)
        d = quantize(w, qtype, group_min=lo * r, group_max=hi * r).dequantize() - w
        dp = (np.pad(d, ((0, 0), (0, pad))) if pad else d).reshape(rows, n_groups, gs).transpose(1, 0, 2)
        err = np.einsum("grb,grb->rg", dp @ hb, dp, dtype=np.float64)
        better = err < best
        best[better] = err[better]
        ratio[better] = r
    return lo * ratio, hi * ratio, ratio


def awq_layer(
    config: Mapping[str, Any],
    weights: Mapping[str, Any],
    hessian: Mapping[str, F64],
    sum_abs: Mapping[str, F64],
    tokens: int,
    qtypes: Mapping[str, str],
    cfg: AWQConfig,
) -> tuple[dict[str, F32], dict[str, tuple[F32, F32]], list[GroupReport]]:
    """Search and fold AWQ's scales for one decoder layer.

    Args:
        config: the model's config.json.
        weights: the layer's float tensors by their names under `model.layers.{i}.`.
        hessian: tap → Σ x xᵀ, float64 (cols, cols); sum_abs: tap → Σ |x|, float64 (cols,);
            tokens: the number of calibration tokens they sum over.
        qtypes: linear weight name (`self_attn.q_proj.weight`, …) → target qtype.
        cfg: the search parameters.

    Returns `(folded, scales, reports)`: the changed float tensors (norms, linear weights and
    biases; the others unchanged); per linear weight `(r, c)`, float32 (rows,) and (cols,), with
    `folded = diag(r)⁻¹ · W · diag(c)` (ones where unscaled; the quantizer's Hessian becomes
    `H / (c cᵀ)`); and one report per group."""
    w: dict[str, Any] = dict(weights)
    scales = {n: (np.ones(weights[n].shape[0], np.float32), np.ones(weights[n].shape[1], np.float32)) for n in qtypes}
    reports: list[GroupReport] = []
    for g in scale_groups(config, weights):
        names = [f"{lin}.weight" for lin in g.linears]
        skip = g.skip
        if not skip and all(qtypes[n] in FLOAT_QTYPES for n in names):
            skip = "its readers are stored as floats"
        if skip:
            msg = f"AWQ leaves {g.tap} unscaled: {skip}"
            log.warning(msg)
            warnings.warn(msg, LowbitWarning, stacklevel=2)
            reports.append(GroupReport(g.tap, None, [], skip))
            continue
        h = (hessian[g.tap] / max(tokens, 1)).astype(np.float32)
        mean_abs = g.reduce(sum_abs[g.tap] / max(tokens, 1))
        quantized = {n: np.asarray(w[n], np.float32) for n in names if qtypes[n] not in FLOAT_QTYPES}
        alpha, s, losses = search_scale(quantized, qtypes, h, mean_abs, g, cfg.grid)
        w.update(fold(w, g, s))
        for n in names:
            scales[n] = (scales[n][0], g.columns(s))
        if g.prev.endswith("_proj"):
            prev = f"{g.prev}.weight"
            scales[prev] = (s.astype(np.float32), scales[prev][1])
        reports.append(GroupReport(g.tap, alpha, losses))
    folded = {k: v for k, v in w.items() if v is not weights.get(k)}
    return folded, scales, reports


def quantize_scaled(w: F32, qtype: str, h: F32, clip: AWQConfig | None, lin: str) -> tuple[QTensor, F32 | None]:
    """Round-to-nearest of a scaled reader `w` (float32 (rows, cols)) to `qtype`: with clipping
    ranges searched on `h` (float32 (cols, cols), `Σ x xᵀ / tokens` of the scaled input) for
    group-affine types when `clip` asks and `lin` is not q or k; block types use `diag(h)` as
    importance. Returns the tensor and the clip ratios (None when not searched)."""
    if is_group_affine(qtype) and clip is not None and clip.clip and not lin.startswith(NO_CLIP):
        lo, hi, ratio = search_clip(w, qtype, h, clip.clip_grid, clip.max_shrink)
        return quantize(w, qtype, group_min=lo, group_max=hi), ratio
    return _rtn(w, qtype, np.diag(h).astype(np.float32)), None


def relative_error(w: F32, q: QTensor, r: F32, c: F32, h: F32) -> float:
    """Relative output error of a scaled weight's quantization against the original weight:
    `Ŵ = diag(r) · dequantize(q) · diag(c)⁻¹` vs `w` (float32 (rows, cols), unscaled) on `h`."""
    return output_error(w, q.dequantize() * r[:, None] / c[None, :], h)


def awq_method(
    config: Mapping[str, Any],
    plan: Mapping[str, str],
    cfg: AWQConfig,
    seq_len: int,
    gptq: GPTQConfig | None = None,
    isa: str | None = None,
) -> LayerFn:
    """The `LayerFn` of AWQ (`lowbit.algos.sequential.run_layers`): the layer's tap statistics on
    the float layer, the scale search and fold (`awq_layer`), then each scaled linear quantized
    to its qtype in `plan` (full name → qtype) by `quantize_scaled`, or by GPTQ with `gptq`
    (awq+gptq: scales only, no clipping). Each linear's report compares the relative output error
    with round-to-nearest of the unscaled weight (block types weighted by H's diagonal)."""

    def run(i: int, w: dict[str, F32], x: F32) -> LayerResult:
        _, stats = collect(config, w, x, seq_len, hessian=True, isa=isa)
        qtypes = {n: plan[f"model.layers.{i}.{n}"] for n in linear_names()}
        folded, scales, groups = awq_layer(config, w, stats.hessian, stats.sum_abs, stats.tokens, qtypes, cfg)
        scaled = {**w, **folded}
        stored: dict[str, Weight] = {k: v for k, v in folded.items() if v.ndim == 1}
        reports: dict[str, dict[str, Any]] = {}
        alpha = {g.tap: g.alpha for g in groups}
        for tap, lins in TAP_LINEARS.items():
            h_raw = stats.hessian[tap]
            h = (h_raw / max(stats.tokens, 1)).astype(np.float32)
            for lin in lins:
                name = f"{lin}.weight"
                r, c = scales[name]
                h_scaled = h / np.outer(c, c)
                extra: dict[str, Any] = {"alpha": alpha[tap]}
                if gptq is not None:
                    q, rep = quantize_linear(scaled[name], h_raw / np.outer(c, c), qtypes[name], gptq)
                    damp: float | None = rep.damp
                else:
                    q, ratio = quantize_scaled(scaled[name], qtypes[name], h_scaled, cfg, lin)
                    damp = None
                    if ratio is not None:
                        extra.update(clip_mean=float(ratio.mean()), clipped=float((ratio < 1).mean()))
                stored[name] = q
                base = _rtn(w[name], qtypes[name], np.diag(h).astype(np.float32)) if q.qtype not in FLOAT_QTYPES else q
                reports[f"model.layers.{i}.{name}"] = asdict(
                    LinearReport(
                        q.qtype,
                        "awq+gptq" if gptq is not None else "awq",
                        output_error(w[name], base.dequantize(), h),
                        relative_error(w[name], q, r, c, h),
                        damp,
                        extra=extra,
                    )
                )
        clip = {n.rsplit(".", 2)[-2]: r["extra"]["clip_mean"] for n, r in reports.items() if "clip_mean" in r["extra"]}
        return stored, reports, {"alpha": alpha, "clip": clip, "skipped": {g.tap: g.skip for g in groups if g.skip}}

    return run
