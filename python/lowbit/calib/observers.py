"""Range observers: they watch float tensors (weights once, activations batch after batch) and
return the `(lo, hi)` range a quantizer should use, per tensor, per channel or per group.

Methods (`make_observer(name)`): `"minmax"` (exact extremes), `"ema"` (moving average of each
batch's extremes), `"percentile"` (clip the tails), `"kl"` (TensorRT-style entropy calibration) and
`"mse"` (the clip ratio with the least quantize-dequantize error on lowbit's own group-affine grid).

Every range contains 0 (`lo <= 0 <= hi`), as lowbit's group-affine grid does (it widens explicit
ranges to include 0, `formats/QUANT_TYPES.md`): a range that skips 0 would be widened anyway.
All-zero input gives `(0, 0)`, which `lowbit.quantize` stores as scale 0.

>>> import numpy as np, lowbit
>>> w = np.random.default_rng(0).standard_t(3, (64, 320)).astype(np.float32)
>>> obs = make_observer("mse", granularity="group", group_size=128, bits=4)
>>> obs.update(w)
>>> lo, hi = obs.range()
>>> lo.shape  # (rows, ceil(320 / 128))
(64, 3)
>>> qt = lowbit.quantize(w, "int4-g128", group_min=lo, group_max=hi)
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from enum import Enum
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InvalidValueError, ParameterError, ShapeError

__all__ = [
    "OBSERVER_NAMES",
    "EntropyObserver",
    "Granularity",
    "MSEObserver",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "Observer",
    "PercentileObserver",
    "make_observer",
]

F64 = npt.NDArray[np.float64]
Floats = npt.NDArray[np.floating[Any]]
Range = tuple[F64, F64]
# One part of an input: a 2-D array (slices, values of a slice) and the flat output index of each slice.
Part = tuple[Floats, npt.NDArray[np.intp]]

BITS = (2, 3, 4, 8)
# Largest f16, the cap of lowbit's stored scales.
F16_MAX = 65504.0
# Weight of the uniform distribution mixed into the KL calibration's quantized Q (see `_kl_threshold_bins`).
KL_SMOOTHING = 1e-4
# Fewest values per histogram bin (on average) the KL calibration works with (see `_kl_threshold`).
KL_MIN_COUNT = 16


class Granularity(str, Enum):
    """How many ranges an observer keeps (see `Observer` for the shapes)."""

    TENSOR = "tensor"
    CHANNEL = "channel"
    GROUP = "group"


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or bits not in BITS:
        raise ParameterError(f"bits must be one of {BITS}, got {bits!r}")
    return int(bits)


def _check_int(value: int, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ParameterError(f"{name} must be >= {low}, got {value}")
    return int(value)


def _check_float(value: float, name: str, low: float, high: float, *, low_open: bool, high_open: bool) -> float:
    v = float(value)
    ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:  # also NaN
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ParameterError(f"{name} must be in {interval}, got {value!r}")
    return v


class Observer(ABC):
    """Base of the observers: `update(x)` any number of times, then `range()`.

    Granularity (the shapes of `lo` and `hi`):
      - `"tensor"`: `x` of any shape (ndim >= 1); one range over all values; shape `()`.
        Updates may differ in shape.
      - `"channel"`: `x` of shape `(..., C)`; one range per index of the last axis (an activation's
        feature, a weight's input column), over all leading axes; shape `(C,)`. Updates may differ
        in their leading axes (e.g. the number of tokens), not in `C`. Per *output* channel (per row
        of a weight) is `"group"` with `group_size=0`.
      - `"group"`: `x` of shape `(rows, cols)`; each row cut into `G = ceil(cols / group_size)`
        groups of `group_size` columns, the last one shorter when `group_size` does not divide
        `cols`, `group_size=0` meaning one group per row; shape `(rows, G)`, exactly the
        `group_min`/`group_max` that `lowbit.quantize(x, "int4-g{group_size}")` takes. Every update
        must have the same shape; updates combine slice by slice.

    `x` is any real array (float16/32/64 or integer; float64 is kept, the rest read as float32).
    The ranges are float64 arrays with `lo <= 0 <= hi`, in the units of `x`.

    Raises (from `update`): TypeError for a non-numeric array, ShapeError for an empty array, the
    wrong number of dimensions or a shape that does not match the earlier updates,
    InvalidValueError for NaN or ±Inf (`index` is the flat index of the first, `row`/`col` its
    position in `x` seen as `(-1, x.shape[-1])`). `range()` before any `update()` is a ShapeError
    (nothing observed). Bad constructor arguments are ParameterError.
    """

    def __init__(self, granularity: Granularity | str = Granularity.TENSOR, group_size: int | None = None) -> None:
        try:
            self.granularity = Granularity(granularity)
        except ValueError:
            names = ", ".join(repr(g.value) for g in Granularity)
            raise ParameterError(f"granularity must be one of {names}, got {granularity!r}") from None
        if self.granularity is Granularity.GROUP:
            self.group_size = 128 if group_size is None else _check_int(group_size, "group_size", 0)
        elif group_size is not None:
            raise ParameterError(f"group_size needs granularity 'group', not {self.granularity.value!r}")
        else:
            self.group_size = 0
        self._shape: tuple[int, ...] | None = None  # the shape of `range()`
        self._key: tuple[int, ...] = ()  # what every update's shape must agree on

    def update(self, x: npt.ArrayLike) -> None:
        """Observe one batch `x` (shapes: see the class doc)."""
        arr = np.asarray(x)
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"observers take a real numeric array, got dtype {arr.dtype}")
        if arr.dtype != np.float64:
            arr = arr.astype(np.float32)
        if arr.ndim == 0 or (self.granularity is Granularity.GROUP and arr.ndim != 2):
            need = "2-D (rows, cols)" if self.granularity is Granularity.GROUP else "at least 1-D"
            raise ShapeError(f"{self.granularity.value} observer needs a {need} array, got shape {arr.shape}")
        if arr.size == 0:
            raise ShapeError(f"empty array of shape {arr.shape}")
        finite = np.isfinite(arr)
        if not finite.all():
            index = int(np.argmin(finite.reshape(-1)))
            row, col = divmod(index, arr.shape[-1])
            value = arr.reshape(-1)[index]
            raise InvalidValueError(
                f"non-finite value {value} at index {index} (row {row}, col {col})", index, row, col
            )
        key = {Granularity.TENSOR: (), Granularity.CHANNEL: arr.shape[-1:], Granularity.GROUP: arr.shape}
        if self._shape is not None and key[self.granularity] != self._key:
            raise ShapeError(f"shape {arr.shape} does not match the earlier updates (which had {self._key})")
        parts = self._parts(arr)
        if self._shape is None:
            self._key = key[self.granularity]
            self._shape = self._out_shape(arr.shape)
            self._start(sum(len(ids) for _, ids in parts))
        self._observe(parts, arr.size)

    def range(self) -> Range:
        """The observed ranges `(lo, hi)`: float64 arrays of the granularity's shape, `lo <= 0 <= hi`."""
        if self._shape is None:
            raise ShapeError("nothing observed yet: call update() before range()")
        lo, hi = self._result()
        return lo.reshape(self._shape), hi.reshape(self._shape)

    def _out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.granularity is Granularity.TENSOR:
            return ()
        if self.granularity is Granularity.CHANNEL:
            return shape[-1:]
        rows, cols = shape
        return (rows, -(-cols // self.group_size) if self.group_size else 1)

    def _parts(self, x: Floats) -> list[Part]:
        """`x` as 2-D parts, each row one slice (one output range) and its flat output index."""
        if self.granularity is Granularity.TENSOR:
            return [(x.reshape(1, -1), np.zeros(1, np.intp))]
        if self.granularity is Granularity.CHANNEL:
            c = x.shape[-1]
            return [(x.reshape(-1, c).T, np.arange(c, dtype=np.intp))]
        rows, cols = x.shape
        g = self.group_size or cols
        full, groups = cols // g, -(-cols // g)
        base = np.arange(rows, dtype=np.intp)[:, None] * groups
        parts: list[Part] = []
        if full:
            parts.append((x[:, : full * g].reshape(rows * full, g), (base + np.arange(full)).reshape(-1)))
        if full < groups:
            parts.append((x[:, full * g :], base[:, 0] + full))
        return parts

    @abstractmethod
    def _start(self, slices: int) -> None:
        """Allocate the state for `slices` ranges (called on the first update)."""

    @abstractmethod
    def _observe(self, parts: list[Part], n: int) -> None:
        """Fold one update (`n` values in all) into the state."""

    @abstractmethod
    def _result(self) -> Range:
        """Flat `(lo, hi)`, one entry per slice."""


def _extremes(parts: list[Part], slices: int) -> Range:
    """Per slice `(min(min x, 0), max(max x, 0))`, flat float64."""
    lo, hi = np.zeros(slices), np.zeros(slices)
    for v, ids in parts:
        lo[ids] = np.minimum(v.min(axis=1), 0)
        hi[ids] = np.maximum(v.max(axis=1), 0)
    return lo, hi


class MinMaxObserver(Observer):
    """The exact extremes of everything observed (widened to include 0); several updates give
    the same range as one update of their concatenation."""

    def _start(self, slices: int) -> None:
        self._lo, self._hi = np.zeros(slices), np.zeros(slices)

    def _observe(self, parts: list[Part], n: int) -> None:
        lo, hi = _extremes(parts, len(self._lo))
        np.minimum(self._lo, lo, out=self._lo)
        np.maximum(self._hi, hi, out=self._hi)

    def _result(self) -> Range:
        return self._lo.copy(), self._hi.copy()


class MovingAverageMinMaxObserver(Observer):
    """An exponential moving average of each update's extremes (widened to include 0): the first
    update sets the range, each later one moves it by `momentum` towards its own,
    `lo ← lo + momentum · (batch_lo − lo)` (the same for `hi`), in float64.

    `momentum` in (0, 1) is the weight of the newest batch (0.1: a batch's influence halves
    after about 7 later batches)."""

    def __init__(
        self, granularity: Granularity | str = Granularity.TENSOR, group_size: int | None = None, momentum: float = 0.1
    ) -> None:
        super().__init__(granularity, group_size)
        self.momentum = _check_float(momentum, "momentum", 0, 1, low_open=True, high_open=True)

    def _start(self, slices: int) -> None:
        self._lo, self._hi, self._first = np.zeros(slices), np.zeros(slices), True

    def _observe(self, parts: list[Part], n: int) -> None:
        lo, hi = _extremes(parts, len(self._lo))
        if self._first:
            self._lo, self._hi, self._first = lo, hi, False
        else:
            self._lo += self.momentum * (lo - self._lo)
            self._hi += self.momentum * (hi - self._hi)

    def _result(self) -> Range:
        return self._lo.copy(), self._hi.copy()


class _BatchMeanObserver(Observer):
    """Ranges that are computed on each update and averaged over the updates, weighted by their
    number of values (a running mean in float64; one update's range is kept exactly)."""

    def _start(self, slices: int) -> None:
        self._lo, self._hi, self._n = np.zeros(slices), np.zeros(slices), 0

    def _observe(self, parts: list[Part], n: int) -> None:
        lo, hi = np.zeros(len(self._lo)), np.zeros(len(self._lo))
        for v, ids in parts:
            lo[ids], hi[ids] = self._batch_range(v)
        self._n += n
        self._lo += n / self._n * (lo - self._lo)
        self._hi += n / self._n * (hi - self._hi)

    @abstractmethod
    def _batch_range(self, v: Floats) -> Range:
        """The range of each row of `v` (slices, values)."""

    def _result(self) -> Range:
        return self._lo.copy(), self._hi.copy()


class PercentileObserver(_BatchMeanObserver):
    """Clips both tails: `hi` is the `percentile`-th percentile of the values, `lo` the
    `(100 − percentile)`-th (numpy's linear interpolation), each widened to include 0.
    `percentile` in (0, 100]; 100 is min-max.

    One update (a weight) gives the exact percentiles. Over several updates (activations) the
    per-update percentiles are averaged, weighted by size: exact at any outlier magnitude (a
    streaming histogram's resolution is set by the largest value seen, the very outlier this
    method is meant to ignore) and O(ranges) memory. It estimates the percentile of all the data
    well when each update has many more than `100 / (100 − percentile)` values per range; with
    fewer, each update's percentile is close to its extreme and the average drifts towards the
    mean of the per-batch extremes."""

    def __init__(
        self,
        granularity: Granularity | str = Granularity.TENSOR,
        group_size: int | None = None,
        percentile: float = 99.99,
    ) -> None:
        super().__init__(granularity, group_size)
        self.percentile = _check_float(percentile, "percentile", 0, 100, low_open=True, high_open=False)

    def _batch_range(self, v: Floats) -> Range:
        q = self.percentile / 100
        lo, hi = np.quantile(v, [1 - q, q], axis=1)
        return np.minimum(lo, 0), np.maximum(hi, 0)


def _xlogx(x: F64) -> F64:
    """`x · ln x` with `0 · ln 0 = 0`."""
    return np.where(x > 0, x * np.log(np.where(x > 0, x, 1)), 0.0)


def _kl_threshold_bins(hist: F64, levels: int) -> int:
    """The number of bins `i` (the threshold `i · bin width`) of the histogram `hist` (counts,
    total `N > 0`) whose clipping loses the least information at `levels` levels: TensorRT's
    entropy calibration (Migacz, "8-bit Inference with TensorRT", GTC 2017), scored for all
    candidates `i` from `levels` to the last nonzero bin at once.

    Candidate `i`: the reference P is `hist[:i]` with the clipped tail (the mass of all later
    bins) added to bin `i − 1`, over `N`. The quantized Q merges the *unclipped* `hist[:i]` into
    `levels` chunks (chunk `c` is bins `c·i // levels` to `(c+1)·i // levels`) and spreads each
    chunk's mass evenly over the chunk's bins where P is nonzero, over `hist[:i].sum()`; so Q
    misses the tail that P piles up at the threshold, and clipping too much costs as much as too
    coarse a grid. Q is mixed with `KL_SMOOTHING` of the uniform distribution on P's nonzero bins,
    which keeps KL(P ‖ Q) finite where the tail lands in a chunk that `hist[:i]` leaves empty (an
    isolated outlier) — the common implementations smooth likewise. Every sum is a difference of
    prefix sums: with chunk masses `M_c` of P and `Q`'s value `q_c` on the chunk's nonzero bins,
    `KL = Σ_j p_j log p_j − Σ_c (M_c / N) log q_c`. The least KL wins (ties: the larger `i`)."""
    used, total = int(np.flatnonzero(hist)[-1]) + 1, hist.sum()
    mass = np.concatenate([[0.0], np.cumsum(hist)])
    nonzero = np.concatenate([[0], np.cumsum(hist > 0)])
    ent = np.concatenate([[0.0], np.cumsum(_xlogx(hist))])
    cand = np.arange(levels, max(used, levels) + 1)
    last = total - mass[cand - 1]  # P's bin i − 1: hist[i − 1] plus the clipped tail
    edges = np.arange(levels + 1) * cand[:, None] // levels  # (candidates, levels + 1)
    body = np.diff(mass[edges], axis=1)  # chunk masses of the unclipped hist[:i]
    p_mass = body.copy()
    p_mass[:, -1] += total - mass[cand]
    z = nonzero[edges]
    z[:, -1] = nonzero[cand - 1] + (last > 0)
    count = np.diff(z, axis=1)  # P's nonzero bins per chunk
    support = z[:, -1:]
    q = (1 - KL_SMOOTHING) * body / (np.maximum(count, 1) * np.maximum(mass[cand, None], 1)) + KL_SMOOTHING / support
    p_ent = (ent[cand - 1] + _xlogx(last)) / total - np.log(total)
    kl = p_ent - (p_mass / total * np.log(q)).sum(axis=1)
    best = len(kl) - 1 - int(np.argmin(kl[::-1]))
    return int(cand[best])


def _kl_threshold(hist: F64, top: float, levels: int) -> float:
    """The KL threshold of the |x| histogram `hist` over `[0, top]`, its bins first merged in
    pairs (exactly) while the bins up to the largest value average fewer than `KL_MIN_COUNT`
    values, down to `2 · levels` bins: a sparse histogram is no density estimate, and KL on it
    degenerates (with every bin holding 0 or 1 value, clipping at the first nonzero bin
    scores KL = 0)."""
    if top == 0:
        return 0.0
    used, total = int(np.flatnonzero(hist)[-1]) + 1, hist.sum()
    merge = 1
    while used > merge * max(total / KL_MIN_COUNT, 2 * levels) and len(hist) // merge > 2 * levels:
        merge *= 2
    coarse = hist.reshape(-1, merge).sum(axis=1)
    return _kl_threshold_bins(coarse, levels) * top / len(coarse)


class EntropyObserver(MinMaxObserver):
    """TensorRT-style KL (entropy) calibration: a histogram of |x| with `bins` bins over
    `[0, top]`, then the threshold `t` whose clipped distribution, quantized to `2^(bits−1)`
    levels (one sign of a symmetric `bits`-bit grid), is closest in KL divergence to the
    clipped one (see `_kl_threshold_bins`). The range is `(max(−t, min), min(t, max))` of the
    observed extremes (widened to include 0, kept as `MinMaxObserver` does), so one-signed data
    keeps its unused side at 0.

    Streaming without a second pass: the first nonzero update sets `top` to its largest |x|; a
    later larger value doubles `top` (as often as needed) and merges bins pairwise, which is
    exact, so at least `bins / 2` bins cover the data. The candidate thresholds are whole bins,
    from `2^(bits−1)` bins up to the bin of the largest |x|, so `t >= 2^(bits−1) · top / bins`
    (about max|x| / 16 for int8 with 2048 bins): an extreme outlier coarsens the histogram for
    everything else, as in TensorRT.

    A histogram with fewer than `KL_MIN_COUNT` values per bin is coarsened first (see
    `_kl_threshold`), so few values per range (a weight's groups) give coarse thresholds; the
    method is meant for many values per range (activations, per tensor).

    `bits` in {2, 3, 4, 8}; `bins` a power of two, at least `2^bits` and at most 65536. Memory:
    `bins` float64 per range; time per range O(bins · 2^(bits−1)), about 4 ms at int8 with 2048
    bins (one core), so per-group ranges of a large weight want fewer bins or fewer bits."""

    def __init__(
        self,
        granularity: Granularity | str = Granularity.TENSOR,
        group_size: int | None = None,
        bits: int = 8,
        bins: int = 2048,
    ) -> None:
        super().__init__(granularity, group_size)
        self.bits = _check_bits(bits)
        self.bins = _check_int(bins, "bins", 1 << self.bits)
        if self.bins & (self.bins - 1) or self.bins > 1 << 16:
            raise ParameterError(f"bins must be a power of two <= 65536, got {bins}")

    def _start(self, slices: int) -> None:
        super()._start(slices)
        self._hist = np.zeros((slices, self.bins))
        self._top = np.zeros(slices)  # 0: nothing nonzero seen yet (all mass is in bin 0)

    def _grow(self, ids: npt.NDArray[np.intp], amax: F64) -> None:
        """Make `top >= amax` for the slices `ids`, doubling and merging bins pairwise."""
        top = self._top[ids]
        new = top == 0
        self._top[ids[new]] = amax[new]
        grow = ~new & (amax > top)
        if not grow.any():
            return
        k = np.ceil(np.log2(amax[grow]) - np.log2(top[grow])).astype(np.intp)
        k += np.ldexp(top[grow], k) < amax[grow]  # guard the rounding of log2
        for kk in np.unique(k):
            sel = ids[grow][k == kk]
            step = 1 << min(int(kk), self.bins.bit_length() - 1)
            merged = self._hist[sel].reshape(len(sel), self.bins // step, step).sum(axis=2)
            self._hist[sel] = 0
            self._hist[sel, : self.bins // step] = merged
            self._top[sel] = np.ldexp(self._top[sel], int(kk))

    def _observe(self, parts: list[Part], n: int) -> None:
        super()._observe(parts, n)
        for v, ids in parts:
            a = np.abs(v).astype(np.float64)
            self._grow(ids, a.max(axis=1))
            width = self._top[ids] / self.bins
            # bin j holds (j·width, (j+1)·width] (bin 0 also 0): a doubled width maps bin j to j // 2 exactly
            idx = np.clip(np.ceil(a / np.where(width > 0, width, 1)[:, None]) - 1, 0, self.bins - 1).astype(np.intp)
            idx += np.arange(len(ids))[:, None] * self.bins
            self._hist[ids] += np.bincount(idx.reshape(-1), minlength=len(ids) * self.bins).reshape(len(ids), -1)

    def _result(self) -> Range:
        lo, hi = super()._result()
        levels = 1 << (self.bits - 1)
        t = np.array([_kl_threshold(h, top, levels) for h, top in zip(self._hist, self._top, strict=True)])
        return np.maximum(lo, -t), np.minimum(hi, t)


def _f16_up(s: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The smallest f16 `>= s` (capped at 65504) as float32, for finite `s >= 0`: lowbit's
    stored group-affine scale."""
    c = np.minimum(s, np.float32(F16_MAX))
    h = c.astype(np.float16)
    up: npt.NDArray[np.float16] = np.where(h.astype(np.float32) < c, np.nextafter(h, np.float16(np.inf)), h)
    return up.astype(np.float32)


def _fake_quant(
    v: npt.NDArray[np.float32], lo: npt.NDArray[np.float32], hi: npt.NDArray[np.float32], bits: int, symmetric: bool
) -> npt.NDArray[np.float32]:
    """Quantize and dequantize each row of `v` (slices, values) with its range `[lo, hi]`
    (`lo <= 0 <= hi`, float32) by lowbit's group-affine rule (`formats/QUANT_TYPES.md`), in float32."""
    maxq = np.float32((1 << bits) - 1)
    if symmetric:
        amax = np.maximum(-lo, hi)
        scale = _f16_up((amax + amax) / maxq)
    else:
        scale = _f16_up((hi - lo) / maxq)
    div = np.where(scale == 0, np.float32(1), scale)
    if symmetric:
        zero = np.full_like(lo, 1 << (bits - 1))
    else:
        zero = np.clip(np.rint(-lo / div), 0, maxq)
    codes = np.clip(np.rint(v / div[:, None]) + zero[:, None], 0, maxq)
    out: npt.NDArray[np.float32] = scale[:, None] * (codes - zero[:, None])
    return out


class MSEObserver(_BatchMeanObserver):
    """The range `r · (min, max)` (min-max widened to include 0) whose quantize-dequantize error
    `Σ |dequant(quant(x)) − x|^norm` is least, over the shrink ratios `r = 1 − k / grid`,
    `k = 0 .. floor(max_shrink · grid)` (GPTQ's MSE grid: 1.0, 0.99, ..., 0.2 by default; ties
    keep the larger `r`), on exactly lowbit's group-affine grid at `bits` and `symmetric`
    (f16 scale rounded up, zero point, round half to even; `formats/QUANT_TYPES.md`). The search
    runs in float32 like lowbit, the errors are summed in float64, and the range returned is the
    float32 one that was scored, so for a weight (one update) `lowbit.quantize` with
    `group_min=lo, group_max=hi` makes exactly the error minimised here, never more than with the
    plain min-max range. Each slice (group, channel, tensor) is one quantization group.

    Over several updates (activations) each update's best range is averaged, weighted by size
    (as `PercentileObserver`; a running search would need every batch kept).

    `bits` in {2, 3, 4, 8}; `grid >= 1`; `max_shrink` in [0, 1); `norm` > 0 (GPTQ uses 2.4).
    Cost per update: `floor(max_shrink · grid) + 1` passes over `x`."""

    def __init__(
        self,
        granularity: Granularity | str = Granularity.TENSOR,
        group_size: int | None = None,
        bits: int = 8,
        symmetric: bool = False,
        grid: int = 100,
        max_shrink: float = 0.8,
        norm: float = 2.0,
    ) -> None:
        super().__init__(granularity, group_size)
        self.bits = _check_bits(bits)
        self.symmetric = bool(symmetric)
        self.grid = _check_int(grid, "grid", 1)
        self.max_shrink = _check_float(max_shrink, "max_shrink", 0, 1, low_open=False, high_open=True)
        self.norm = _check_float(norm, "norm", 0, math.inf, low_open=True, high_open=True)

    def _batch_range(self, v: Floats) -> Range:
        v32 = v.astype(np.float32)
        lo = np.minimum(v32.min(axis=1), np.float32(0))
        hi = np.maximum(v32.max(axis=1), np.float32(0))
        best_lo, best_hi = lo.copy(), hi.copy()
        best_err = np.full(len(v32), np.inf)
        for k in range(int(self.max_shrink * self.grid) + 1):
            r = np.float32(1 - k / self.grid)
            clo, chi = lo * r, hi * r
            diff = np.abs(_fake_quant(v32, clo, chi, self.bits, self.symmetric) - v32)
            err: F64 = np.sum(diff * diff if self.norm == 2 else diff**self.norm, axis=1, dtype=np.float64)
            better = err < best_err
            best_err[better], best_lo[better], best_hi[better] = err[better], clo[better], chi[better]
        return best_lo.astype(np.float64), best_hi.astype(np.float64)


OBSERVER_NAMES = ("minmax", "ema", "percentile", "kl", "mse")


def make_observer(
    name: str,
    *,
    granularity: Granularity | str = Granularity.TENSOR,
    group_size: int | None = None,
    bits: int = 8,
    symmetric: bool = False,
    **params: Any,
) -> Observer:
    """The observer called `name` (one of `OBSERVER_NAMES`, as a CLI's `--observer NAME`).

    `bits` and `symmetric` describe the target grid: always validated, used by the methods that
    need it (`"kl"` takes `bits`, `"mse"` both). `params` are the method's own options:
    `momentum` ("ema"), `percentile`, `bins` ("kl"), `grid`, `max_shrink`, `norm` ("mse"); an
    option the method does not take is a TypeError, as for any call."""
    _check_bits(bits)
    if name == "minmax":
        return MinMaxObserver(granularity, group_size, **params)
    if name == "ema":
        return MovingAverageMinMaxObserver(granularity, group_size, **params)
    if name == "percentile":
        return PercentileObserver(granularity, group_size, **params)
    if name == "kl":
        return EntropyObserver(granularity, group_size, bits=bits, **params)
    if name == "mse":
        return MSEObserver(granularity, group_size, bits=bits, symmetric=symmetric, **params)
    raise ParameterError(f"unknown observer {name!r}; known: {', '.join(OBSERVER_NAMES)}")
