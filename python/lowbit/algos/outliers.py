"""Sparse outliers (SpQR's dense-and-sparse split): a few weights of a quantized tensor are kept
exactly in a sidecar (`lowbit.Outliers`: f16 value, column, CSR row pointers; `formats/LBF.md`
§5), and the tensor's grid is fitted without them, so one extreme weight no longer stretches its
group's range for the other fifteen or hundred.

The stored value of an outlier is the residual `w − deq(q)` at its position (rounded to f16),
added back at dequantization and in the matmul: the weight comes back to within f16 rounding of
the residual, far finer than the grid.

Selection without calibration data (this module), for a budget of `fraction` of the weights:

* **magnitude**: the largest |w| of the tensor;
* **deviation**: the largest |w − mean| / std within the weight's group of 16 consecutive values
  of a row (a weight far out of its own neighbourhood, wherever the row's scale lies).

Ranking by the round-to-nearest error itself does not work: the weights that stretch a group's
range sit at its ends, where the grid is exact. On the demo model (de-gridded, 0.5%, relative
weight error of four linears) magnitude beats deviation for int3-g128 (0.199–0.217 vs
0.210–0.227; none 0.223–0.243) and q3_kr (0.140–0.149 vs 0.143–0.151; none 0.151–0.160): the
default.

With calibration data GPTQ selects inside its column loop by Hessian-weighted sensitivity
(`lowbit.algos.gptq_blocks`).

Then the selected weights are replaced by their group's mean over the others (so the grid's fit,
ranges and scale searches, no longer sees them), the tensor is quantized, and the residuals at
the selected positions become the sidecar.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ParameterError
from ..qtensor import Outliers, QTensor, dequantize, quantize

__all__ = [
    "MAX_FRACTION",
    "OUTLIER_METHODS",
    "check_method",
    "fill_group_mean",
    "outlier_budget",
    "parse_fraction",
    "quantize_with_outliers",
    "select_outliers",
    "sidecar_bytes",
]

OUTLIER_METHODS = ("magnitude", "deviation")
#: The largest budget accepted: beyond a tenth of the weights a sparse sidecar (48 bits each)
#: costs more than a wider type.
MAX_FRACTION = 0.10
#: Values per group of the deviation score and of the refill.
GROUP = 16

_FRACTION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(%?)\s*$")


def parse_fraction(spec: str | float) -> float:
    """The outlier budget as a fraction of the weights: `"0.5%"` → 0.005, `"0.005"` or 0.005 →
    0.005. Must lie in (0, `MAX_FRACTION`]; ParameterError otherwise or when malformed."""
    if isinstance(spec, bool):
        raise ParameterError(f"outlier budget must be a fraction like 0.005 or a percentage like 0.5%, got {spec!r}")
    if isinstance(spec, int | float):
        v = float(spec)
    else:
        m = _FRACTION.match(str(spec))
        if m is None:
            raise ParameterError(f"outlier budget must look like 0.5% or 0.005, got {spec!r}")
        v = float(m.group(1)) / (100.0 if m.group(2) else 1.0)
    if not (math.isfinite(v) and 0.0 < v <= MAX_FRACTION):
        raise ParameterError(f"outlier budget must be in (0, {MAX_FRACTION:.0%}], got {spec!r}")
    return v


def outlier_budget(fraction: float, rows: int, cols: int) -> int:
    """How many weights `fraction` of a (rows, cols) tensor is (rounded down)."""
    return math.floor(fraction * rows * cols + 1e-9)


def _groups(w: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """w (rows, cols) as (rows, ceil(cols / GROUP), GROUP), the last group padded with NaN."""
    rows, cols = w.shape
    pad = -cols % GROUP
    g = np.pad(w, ((0, 0), (0, pad)), constant_values=np.nan) if pad else w
    return g.reshape(rows, -1, GROUP)


def _top(score: npt.NDArray[Any], k: int) -> npt.NDArray[np.bool_]:
    """Mask of the `k` largest entries of `score` (ties: lower flat index)."""
    mask = np.zeros(score.shape, bool)
    if k > 0:
        flat = score.reshape(-1)
        idx = np.argsort(-flat, kind="stable")[:k]
        mask.reshape(-1)[idx] = True
    return mask


def check_method(method: str) -> None:
    """ParameterError unless `method` is one of `OUTLIER_METHODS`."""
    if method not in OUTLIER_METHODS:
        raise ParameterError(f"outlier method must be one of {', '.join(OUTLIER_METHODS)}, got {method!r}")


def sidecar_bytes(fraction: float, rows: int, cols: int) -> tuple[int, int]:
    """(outliers, bytes) of the sidecar of a (rows, cols) tensor with budget `fraction`: the row
    pointers and 6 bytes per outlier (`Outliers`)."""
    n = outlier_budget(fraction, rows, cols)
    return n, 8 * (rows + 1) + 6 * n


def select_outliers(w: npt.NDArray[np.float32], count: int, method: str = "magnitude") -> npt.NDArray[np.bool_]:
    """Mask (rows, cols) of the `count` weights of `w` (float32 (rows, cols)) that `method`
    (`OUTLIER_METHODS`, see the module doc) ranks first."""
    check_method(method)
    rows, cols = w.shape
    if method == "magnitude":
        score = np.abs(w)
    else:
        g = _groups(w)
        mean = np.nanmean(g, axis=2, keepdims=True)
        std = np.nanstd(g, axis=2, keepdims=True)
        dev = np.abs(g - mean) / np.maximum(std, np.finfo(np.float32).tiny)
        score = dev.reshape(rows, -1)[:, :cols]
    return _top(score, min(count, rows * cols))


def fill_group_mean(w: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.float32]:
    """`w` with the masked weights replaced by the mean of the unmasked ones of their group of
    `GROUP` (0 where a whole group is masked). float32 (rows, cols), a copy."""
    rows, cols = w.shape
    g = _groups(np.where(mask, np.float32(np.nan), w))
    n = np.sum(~np.isnan(g), axis=2, keepdims=True)
    mean = np.where(n > 0, np.nansum(g, axis=2, keepdims=True) / np.maximum(n, 1), 0.0)
    fill = np.broadcast_to(mean, g.shape).reshape(rows, -1)[:, :cols]
    return np.where(mask, fill, w).astype(np.float32)


def quantize_with_outliers(
    w: npt.NDArray[np.float32],
    qtype: str,
    fraction: float,
    *,
    method: str = "magnitude",
    importance: npt.NDArray[np.float32] | None = None,
) -> QTensor:
    """Quantize `w` (float32 (rows, cols)) to `qtype` keeping `fraction` of its weights (rounded
    down) as outliers selected by `method`; `importance` (cols,) weights the type's scale search.
    See the module doc."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    mask = select_outliers(w, outlier_budget(fraction, *w.shape), method)
    q = quantize(fill_group_mean(w, mask), qtype, importance=importance)
    r, c = np.nonzero(mask)
    return q.with_outliers(Outliers.from_coo(q.shape[0], r, c, (w - dequantize(q))[r, c]))
