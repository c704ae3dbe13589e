"""GPTQ: the per-matrix numerical core (Frantar et al., "GPTQ: Accurate Post-Training Quantization
for Generative Pre-trained Transformers", 2022, Algorithm 1), onto lowbit's group-affine grid
(`formats/QUANT_TYPES.md` §"Group-affine integers").

GPTQ quantizes the columns of a weight `W` (rows, cols) one at a time and, after each, moves the
not yet quantized columns so as to minimise the proxy output error `tr(ΔW H ΔWᵀ)`, `H = Σ x xᵀ`
over the calibration inputs `x` of the layer (`ΔW = Ŵ − W`).

Formulation. The paper updates the remaining columns with rows of `U`, the upper Cholesky factor
of `H⁻¹`. Here the same algorithm is written with `R = U⁻¹`, the upper-triangular factor of
`H = R Rᵀ` itself (one Cholesky of `H` with its index order reversed), which saves the O(cols³)
inversion and the second factorisation. With `Δ_k = w_k − q_k` the final error of column `k`
(original minus rounded), the value column `l` holds when it is rounded is

    x_l = w_l + Σ_{k<l} Δ_k · R[k, l] / R[l, l]

(the paper's `W[:, l:] −= err·U[k, l:]` summed up, since `W − Q = E U` with `E = (W − Q) R`;
this is GPTQ read as Babai's nearest-plane algorithm). The paper's lazy batches become: each
batch of `block_size` columns first receives all earlier batches' corrections in one GEMM
(left-looking), then its columns are rounded one by one with rank-1 corrections inside sub-blocks
of `_SUB` columns and one GEMM per sub-block for the rest of the batch. The working array holds
the original columns still to do and the errors `Δ` of the columns done, in place. `err_l =
(x_l − q_l)·R[l, l]` are the paper's scaled errors and `Σ err² = tr(ΔW (H + λI) ΔWᵀ)`, which
gives the output error without another product with `H`.

With groups taken from the updated weights, a group's range needs the paper's working values of
the group's columns when its first column is reached, which are not the partial sums above; see
`_paper_state`.

Precision: the factorisation runs in float64; the column loop runs in float32 (see `_LOOP_DTYPE`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InvalidValueError, ParameterError, ShapeError
from ..qtensor import QTensor, dequantize, quantize

__all__ = ["GPTQResult", "gptq_quantize", "output_error", "quad_error"]

log = logging.getLogger("lowbit.gptq")

#: Bits of the group-affine types GPTQ quantizes to.
BITS = {"int2": 2, "int3": 3, "int4": 4, "int8": 8}
#: Group sizes of the group-affine types (0 = the whole row is one group).
GROUP_SIZES = (0, 32, 64, 128, 256)
#: Times the damping is multiplied by 10 after a failed Cholesky before giving up. A rank-deficient
#: H (fewer calibration tokens than columns) accumulated in float32 has eigenvalues slightly below
#: 0 from rounding (about −1e−6 of the mean diagonal measured at 256 columns), which damp ≥ 1e−6
#: covers; eight decades take any reasonable damp past that. A matrix that still fails is not a
#: Hessian.
MAX_DAMP_RETRIES = 8
#: Columns per sub-block of the rank-1 updates inside a batch; divides every group size.
_SUB = 16
#: dtype of the column loop (corrections, errors); rounding is always float32 like the Rust grid.
#: Measured at 256×4096 (H from 2048 correlated tokens): float64 takes 1.75× the loop time; float32
#: gives the same error figure to 1e−3 relative, the codes of at most 3 of 256 rows differ (a
#: near-tie rounded the other way, after which the rest of that row is compensated differently).
_LOOP_DTYPE = np.float32


@dataclass(frozen=True)
class GPTQResult:
    """What `gptq_quantize` returns.

    Attributes:
        qtensor: the quantized weight (rows, cols), group-affine `int{bits}-g{group}[-sym]`,
            carrying its act-order permutation when its columns are stored permuted (`perm`);
            `dequantize`, `matmul` and LBF files honour it.
        damp: the relative damping finally used (λ / mean(diag H)), `damp` or a power-of-ten
            multiple of it after Cholesky retries.
        dead_columns: input columns with diag(H) == 0 (never active: weight set to 0).
        error: relative proxy output error tr(ΔW H ΔWᵀ) / tr(W H Wᵀ), ΔW = Ŵ − W (input order).
        rtn_error: the same for plain round-to-nearest (`lowbit.quantize`) at the same type.
    """

    qtensor: QTensor
    damp: float
    dead_columns: int
    error: float
    rtn_error: float

    @property
    def perm(self) -> npt.NDArray[np.uint32] | None:
        """uint32 (cols,): stored column j holds input column perm[j]; None when the stored order
        is the input order (the tensor's own `perm`)."""
        return self.qtensor.perm


def gptq_quantize(
    w: npt.NDArray[np.floating[Any]],
    hessian: npt.NDArray[np.floating[Any]],
    qtype: str = "int4",
    *,
    group_size: int = 128,
    symmetric: bool = False,
    act_order: bool = False,
    static_groups: bool = False,
    block_size: int = 128,
    damp: float = 0.01,
) -> GPTQResult:
    """Quantize one linear layer's weight with GPTQ.

    Args:
        w: float32 (float16/float64 are converted) weight (rows, cols) = (out_features,
            in_features), `cols` a multiple of 8. Not modified.
        hessian: float32/float64 (cols, cols), symmetric positive semi-definite: `Σ x xᵀ` over the
            layer's calibration inputs `x` (cols,). Any positive multiple gives the same result
            (damping is relative, the error a ratio), so `2/n · Σ x xᵀ` is as good.
        qtype: "int2", "int3", "int4" or "int8" (lowbit's group-affine types).
        group_size: 32, 64, 128, 256 or 0 (one group per row); the last group may be shorter.
        symmetric: no zero points (zero point 2^(bits−1)).
        act_order: process columns by decreasing diag(H). Groups are then contiguous in that
            order, the tensor is stored in it and carries that permutation (unless `static_groups` or
            `group_size` 0, where the stored order is the input order).
        static_groups: group ranges from the original W, groups in input column order (the
            default takes each group's range from its error-updated columns when the group's
            first column is reached).
        block_size: columns per lazy batch (the paper's B; speed only). Batches end on group
            boundaries, so with larger groups a batch is rounded up to a whole group.
        damp: relative damping: λ = damp · mean(diag H) is added to diag(H); multiplied by 10
            while the Cholesky factorisation fails (at most `MAX_DAMP_RETRIES` times).

    Returns:
        A `GPTQResult`; `lowbit.dequantize(result.qtensor)` is exactly the loop's Ŵ (checked), in
        input column order.

    Raises:
        TypeError: `w` or `hessian` not a float numpy array.
        ShapeError: `w` not 2-D and non-empty with cols a multiple of 8, `hessian` not (cols, cols).
        ParameterError: unknown `qtype`, bad `group_size`, `block_size` or `damp`.
        InvalidValueError: NaN/±Inf in `w` or `hessian` (`.index`, `.row`, `.col` locate the
            first), a magnitude beyond the type's range, a negative diagonal entry in `hessian` or
            a `hessian` whose Cholesky still fails after the retries (not positive semi-definite).
    """
    w32 = _check_inputs(w, hessian)
    bits = _check_params(qtype, group_size, block_size, damp)
    cols = w32.shape[1]
    g = group_size or cols

    dead = np.diagonal(hessian) == 0
    if act_order:
        order = np.argsort(-np.diagonal(hessian), kind="stable")
        hp = hessian[np.ix_(order, order)].astype(np.float64)
        a = w32[:, order].astype(_LOOP_DTYPE)
    else:
        order = np.arange(cols)
        hp = np.array(hessian, dtype=np.float64)
        a = np.array(w32, dtype=_LOOP_DTYPE)
    dead_p = dead[order]
    hp[dead_p, dead_p] = 1.0
    a[:, dead_p] = 0.0
    r, used_damp, lam = _damped_ul_factor(hp, damp)
    del hp
    static = _group_ranges(np.where(dead, np.float32(0), w32), g) if static_groups else None
    vals, w_hat, gmin, gmax, err_sq = _loop(a, r, bits, symmetric, g, static, order, block_size)

    stored_permuted = act_order and not static_groups and group_size != 0
    if act_order and not stored_permuted:
        inv = np.argsort(order)
        vals, w_hat = vals[:, inv], w_hat[:, inv]
    stored = quantize(vals, qtype, group_size=group_size, symmetric=symmetric, group_min=gmin, group_max=gmax)
    deq = dequantize(stored)
    if not np.array_equal(deq, w_hat):
        bad = np.flatnonzero(deq != w_hat)
        row, col = divmod(int(bad[0]), cols)
        raise RuntimeError(
            f"internal error: the GPTQ grid and lowbit.quantize disagree at {bad.size} values, first "
            f"(row {row}, stored column {col}): {w_hat.flat[bad[0]]!r} vs {deq.flat[bad[0]]!r}"
        )

    den = _quad(w32, hessian)
    # Σ err² = tr(ΔW (H + λI) ΔWᵀ) over the processed (dead-zeroed) columns; `a` now holds ΔW.
    num = max(err_sq - lam * float(np.einsum("ij,ij->", a, a, dtype=np.float64)), 0.0)
    rtn = dequantize(quantize(w32, qtype, group_size=group_size, symmetric=symmetric))
    perm = order.astype(np.uint32) if stored_permuted else None
    qt = QTensor(
        stored.qtype, stored.shape, stored.data, group_size=stored.group_size, symmetric=stored.symmetric, perm=perm
    )
    return GPTQResult(
        qtensor=qt,
        damp=used_damp,
        dead_columns=int(dead.sum()),
        error=_ratio(num, den),
        rtn_error=_ratio(_quad(rtn - w32, hessian), den),
    )


def output_error(
    w: npt.NDArray[np.floating[Any]],
    w_hat: npt.NDArray[np.floating[Any]],
    hessian: npt.NDArray[np.floating[Any]],
) -> float:
    """Relative proxy output error `tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`, `ΔW = w_hat − w`.

    With `H = Σ x xᵀ` this is `Σ ‖Δy‖² / Σ ‖y‖²` over the calibration inputs, `y = W x`.
    `w`, `w_hat`: (rows, cols); `hessian`: (cols, cols). Products in float32, sums in float64
    (relative precision about 1e−5). 0.0 when both traces are 0, inf when only the denominator is.
    """
    w = np.asarray(w, dtype=np.float32)
    w_hat = np.asarray(w_hat, dtype=np.float32)
    h = np.asarray(hessian)
    if w.ndim != 2 or w_hat.shape != w.shape or h.shape != (w.shape[1], w.shape[1]):
        raise ShapeError(f"w {w.shape}, w_hat {w_hat.shape} and hessian {h.shape} do not match")
    return _ratio(_quad(w_hat - w, h), _quad(w, h))


def quad_error(delta: npt.NDArray[np.float32], h: npt.NDArray[Any]) -> float:
    """tr(Δ H Δᵀ) for Δ (rows, cols), H (cols, cols): float32 products, float64 sum (the
    output error of a weight change Δ over inputs with Σ x xᵀ = H)."""
    return float(np.einsum("ij,ij->", delta @ h, delta, dtype=np.float64))


def _quad(a: npt.NDArray[np.float32], h: npt.NDArray[Any]) -> float:
    """tr(a h aᵀ) = Σ h ⊙ (aᵀa): one symmetric rank-k product (rows·cols² flops)."""
    gram = a.T @ a
    return float(np.einsum("ij,ij->", gram, h, dtype=np.float64))


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return 0.0 if num == 0 else math.inf


def _check_inputs(w: Any, hessian: Any) -> npt.NDArray[np.float32]:
    """Types, shapes and finiteness of the inputs; returns w as float32."""
    for name, v in (("w", w), ("hessian", hessian)):
        if not isinstance(v, np.ndarray) or v.dtype.kind != "f":
            raise TypeError(f"{name} must be a float numpy array, got {getattr(v, 'dtype', type(v).__name__)}")
        if v.ndim != 2 or v.size == 0:
            raise ShapeError(f"{name} must be a non-empty 2-D array, got shape {v.shape}")
    cols = w.shape[1]
    if cols % 8:
        raise ShapeError(f"w's row length must be a multiple of 8, got {cols}")
    if hessian.shape != (cols, cols):
        raise ShapeError(f"hessian must be ({cols}, {cols}) for w of shape {w.shape}, got {hessian.shape}")
    for name, v in (("w", w), ("hessian", hessian)):
        bad = ~np.isfinite(v)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            r, c = divmod(i, v.shape[1])
            raise InvalidValueError(f"{name} has a non-finite value at ({r}, {c}): {v.flat[i]}", i, r, c)
    neg = np.flatnonzero(np.diagonal(hessian) < 0)
    if neg.size:
        i = int(neg[0])
        raise InvalidValueError(f"hessian has a negative diagonal entry at ({i}, {i})", i * (cols + 1), i, i)
    return np.asarray(w, dtype=np.float32)


def _check_params(qtype: Any, group_size: Any, block_size: Any, damp: Any) -> int:
    if qtype not in BITS:
        raise ParameterError(f"GPTQ quantizes to {', '.join(BITS)} (group size and symmetry as options), got {qtype!r}")
    if isinstance(group_size, bool) or group_size not in GROUP_SIZES:
        raise ParameterError(f"group_size must be 32, 64, 128, 256 or 0 (whole row), got {group_size!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int | np.integer) or block_size < 1:
        raise ParameterError(f"block_size must be a positive int, got {block_size!r}")
    if isinstance(damp, bool) or not isinstance(damp, float | int) or not (0 < damp < math.inf):
        raise ParameterError(f"damp must be a positive finite number, got {damp!r}")
    return BITS[qtype]


def _damped_ul_factor(h: npt.NDArray[np.float64], damp: float) -> tuple[npt.NDArray[np.float64], float, float]:
    """Upper-triangular R with `h + λI = R Rᵀ`, λ = damp · mean(diag h), in float64 (a view of
    the lower factor of h with its index order reversed). Raises damp tenfold while the
    factorisation fails. `h`'s diagonal is overwritten. Returns R, the damp and λ used."""
    base = np.diagonal(h).copy()
    mean = float(np.mean(base))
    diag = np.einsum("ii->i", h)  # writable view of the diagonal
    for attempt in range(MAX_DAMP_RETRIES + 1):
        d = damp * 10.0**attempt
        diag[:] = base + d * mean
        try:
            low = np.linalg.cholesky(h[::-1, ::-1]).astype(np.float64, copy=False)
        except np.linalg.LinAlgError:
            log.warning("Cholesky of the damped Hessian failed with damp %.3g; retrying with %.3g", d, 10 * d)
            continue
        return low[::-1, ::-1], d, d * mean
    raise InvalidValueError(
        f"hessian is not positive semi-definite: its Cholesky factorisation failed up to damp "
        f"{damp * 10.0**MAX_DAMP_RETRIES:.3g}"
    )


class _Grid:
    """The per-row grid of one group (formats/QUANT_TYPES.md): scale, divisor and zero point,
    float32 vectors, computed exactly as the Rust `group_params` from the range [lo, hi]."""

    __slots__ = ("div", "maxq", "scale", "zero")

    def __init__(self, gmin: npt.NDArray[np.float32], gmax: npt.NDArray[np.float32], bits: int, symmetric: bool):
        f32 = np.float32
        self.maxq = f32(2**bits - 1)
        lo = np.minimum(gmin, f32(0)) + f32(0)
        hi = np.maximum(gmax, f32(0)) + f32(0)
        s = (np.maximum(-lo, hi) * f32(2) if symmetric else hi - lo) / self.maxq
        s = np.minimum(s, f32(65504))  # f16 max: the Rust saturates there (beyond `max_abs`)
        h = s.astype(np.float16)
        up = (h.astype(f32) < s).astype(np.uint16)  # round the scale up to the next f16
        self.scale = (h.view(np.uint16) + up).view(np.float16).astype(f32)
        self.div = np.where(self.scale == 0, f32(1), self.scale)
        if symmetric:
            self.zero = np.full_like(self.scale, 2 ** (bits - 1))
        else:
            self.zero = np.clip(np.rint(-lo / self.div), f32(0), self.maxq)

    def __getitem__(self, k: int) -> _Grid:
        """The grid of group k, for grids built from (groups, rows) ranges."""
        g = _Grid.__new__(_Grid)
        g.maxq, g.scale, g.div, g.zero = self.maxq, self.scale[k], self.div[k], self.zero[k]
        return g

    def round(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Dequantized codes of x: scale · (clamp(rint(x / div) + zero, 0, maxq) − zero)."""
        c: npt.NDArray[np.float32] = np.rint(x / self.div)
        c += self.zero
        np.clip(c, 0, self.maxq, out=c)
        c -= self.zero
        c *= self.scale
        return c


def _group_ranges(w: npt.NDArray[np.float32], g: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Per-group (min, max) of each row of w (rows, cols), shapes (groups, rows)."""
    starts = np.arange(0, w.shape[1], g)
    return np.minimum.reduceat(w, starts, axis=1).T.copy(), np.maximum.reduceat(w, starts, axis=1).T.copy()


def _paper_state(w: npt.NDArray[Any], x: npt.NDArray[Any], r: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """The paper's working values of a group's columns when its first column `t` is reached.

    `w` (g, rows): the original columns; `x` (g, rows): `w_j + Σ_{k<t} Δ_k R[k, j] / R[j, j]`;
    `r`: R's diagonal block of the group. The paper's state is `w + C U_gg` with
    `C_j = Σ_{k<t} Δ_k R[k, j]` and `U_gg = R_gg⁻¹` (the same block of the upper factor of H⁻¹),
    i.e. `w + (x − w) R̃_gg⁻¹` with `R̃_gg = R_gg / diag` (unit upper triangular). Float32."""
    rt_inv = np.linalg.inv(r / np.diagonal(r))
    state: npt.NDArray[np.float32] = (w + rt_inv.T.astype(w.dtype) @ (x - w)).astype(np.float32, copy=False)
    return state


def _loop(
    a: npt.NDArray[Any],
    r: npt.NDArray[np.float64],
    bits: int,
    symmetric: bool,
    g: int,
    static: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None,
    order: npt.NDArray[np.intp],
    block_size: int,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32], float]:
    """The column loop over `a` (rows, cols): the original (dead-zeroed) weight in processing
    order, overwritten with the errors Δ = w − q. `r`: the upper factor of the damped Hessian in
    processing order. Returns the values at rounding time and Ŵ (rows, cols, float32, processing
    order), the group ranges for `lowbit.quantize` (rows, groups: the processing order's groups,
    or the input order's with `static` ranges (groups, rows)), and Σ err² (float64)."""
    rows, cols = a.shape
    dt = a.dtype
    rd = np.diagonal(r).copy()
    rt = (r / rd).astype(dt)  # R[k, l] / R[l, l], unit diagonal
    vals = np.empty((rows, cols), np.float32)
    w_hat = np.empty((rows, cols), np.float32)
    if static is not None:
        gmin, gmax = static
        grids = _Grid(gmin, gmax, bits, symmetric)
    else:
        gmin = np.empty((-(-cols // g), rows), np.float32)
        gmax = np.empty_like(gmin)
    grid = None
    err_sq = 0.0
    i1 = 0
    while i1 < cols:
        i2 = min(cols, i1 + block_size)
        if static is None:
            i2 = min(cols, -(-i2 // g) * g)  # a batch never ends inside a group
        a_blk = a[:, i1:i2].T.copy()  # (columns, rows): one column per contiguous row
        x_blk = a_blk.copy() if i1 == 0 else a_blk + rt[:i1, i1:i2].T @ a[:, :i1].T
        v_blk = np.empty(a_blk.shape, np.float32)
        q_blk = np.empty(a_blk.shape, np.float32)
        j1 = i1
        while j1 < i2:
            j2 = min(i2, (j1 // _SUB + 1) * _SUB)
            for col in range(j1, j2):
                k = col - i1
                if static is not None:
                    grid = grids[int(order[col]) // g]
                elif col % g == 0:
                    ge = min(col + g, cols) - i1
                    cur = _paper_state(a_blk[k:ge], x_blk[k:ge], r[col : i1 + ge, col : i1 + ge])
                    gmin[col // g], gmax[col // g] = cur.min(axis=0), cur.max(axis=0)
                    grid = _Grid(gmin[col // g], gmax[col // g], bits, symmetric)
                assert grid is not None
                x = x_blk[k]
                v_blk[k] = x
                q = grid.round(v_blk[k])
                q_blk[k] = q
                a_blk[k] -= q
                e = x - q
                err_sq += float(np.dot(e, e)) * rd[col] ** 2
                if col + 1 < j2:
                    x_blk[k + 1 : j2 - i1] += np.outer(rt[col, col + 1 : j2], a_blk[k])
            if j2 < i2:
                x_blk[j2 - i1 :] += rt[j1:j2, j2:i2].T @ a_blk[j1 - i1 : j2 - i1]
            j1 = j2
        a[:, i1:i2] = a_blk.T
        vals[:, i1:i2] = v_blk.T
        w_hat[:, i1:i2] = q_blk.T
        i1 = i2
    return vals, w_hat, np.ascontiguousarray(gmin.T), np.ascontiguousarray(gmax.T), err_sq
