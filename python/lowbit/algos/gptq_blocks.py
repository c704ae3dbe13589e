"""GPTQ fitted to block quantizers: the ggml k-quants (q2_k … q6_k), their ragged k-types
(q2_kr … q6_kr), the legacy ggml types, iq4_nl and the SpQR-style dq types (int2/3/4-g16-dq) —
so a GPTQ result still exports to GGUF where the type can (beyond AutoGPTQ and llama.cpp, which
fit GPTQ to group-affine integers only).

A row is cut into the type's blocks (256-value super-blocks for k-quants and dq types, then a
ragged or partial tail;
32-value blocks for the legacy types). Columns are visited in order with GPTQ's error feedback
(Frantar et al. 2022, the OBS update with the upper Cholesky factor U of H⁻¹):

- At the start of each block its header (super-block scales d/dmin and the 6-bit sub-block
  scales and mins, or a legacy block's scale) is chosen by lowbit's own quantizer on the
  *current*, error-updated columns, weighted by the Hessian's diagonal (the imatrix). That fixes
  the block's grid: every value is `a_v · c + b_v` for a stored code `c ∈ [0, 2^bits)` (the grid
  is read back by dequantizing the header with all codes 0 and all codes 1).
- In a k-quant super-block each column is then rounded on that grid *after* the updates from the
  columns before it (GPTQ proper), and the codes are packed into the block's bit fields.
- Blocks without a code packer here (ragged tails, legacy types) keep the codes the quantizer
  chose (the whole block quantized jointly); their error is still fed back column by column to
  the rest of the row (the exact OBS update for fixed values).

Every column's error `(w − ŵ) / U[i, i]` updates the columns after it; the bytes are the type's
own, checked against the loop's values by dequantizing them.

The same loop fits the group-affine types when it keeps **outliers** (SpQR, Dettmers et al.
2023): a block is then one group (whose codes are a plain little-endian bit stream), and the
rows' bytes are joined from the groups' (codes, then scales, then zeros). With a budget of `k`
outliers, the threshold `τ` is the `k`-th largest Hessian-weighted leave-one-out gain on the
original weight: how much the group's squared error, each column weighted by `1/[H⁻¹]ᵢᵢ` (its
OBS cost), drops when the weight leaves the group's fit and is kept exactly, measured on a
min-max grid of the type's bits over its group or sub-block (ranking by a weight's own rounding
error would miss exactly the weights that stretch a range: they sit at its ends, where the grid
is exact). At the start of each block the same gain is taken on the current, error-updated columns; the
weights above `τ` (the largest first, while the budget lasts) are kept exactly, the block's
header is refitted without them (each replaced by its 16-group's mean), and in the column loop
such a weight is its grid value plus the f16 residual: its error is (nearly) 0, so it moves no
other column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import _core
from ..errors import InvalidValueError, ParameterError, ShapeError
from ..qtensor import FLOAT_QTYPES, Outliers, QTensor, affine_params, dequantize, is_group_affine, quantize
from .gptq import _damped_ul_factor, output_error
from .outliers import fill_group_mean, outlier_budget

__all__ = ["BlockGPTQResult", "gptq_blocks"]

# Code bit fields of a 256-value super-block: per type, the stored code width and a list of
# (byte index of value v, shift of value v, field width, code bit offset) for v = 0..255, read off
# ggml's block layouts (formats/QUANT_TYPES.md; rust/core/src/blocks/kquants/mod.rs dequantizers).
_V = np.arange(256)
_H, _R = _V // 128, _V % 128
_FIELDS: dict[str, tuple[int, list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], int, int]]]] = {
    "q2_k": (2, [(16 + 32 * _H + _V % 32, 2 * ((_V // 32) % 4), 2, 0)]),
    "q3_k": (3, [(32 + 32 * _H + _V % 32, 2 * ((_V // 32) % 4), 2, 0), (_V % 32, _V // 32, 1, 2)]),
    "q4_k": (4, [(16 + 32 * (_V // 64) + _V % 32, 4 * ((_V // 32) % 2), 4, 0)]),
    "q5_k": (5, [(48 + 32 * (_V // 64) + _V % 32, 4 * ((_V // 32) % 2), 4, 0), (16 + _V % 32, _V // 32, 1, 4)]),
    "q6_k": (6, [(64 * _H + _R % 64, 4 * (_R // 64), 4, 0), (128 + 32 * _H + _R % 32, 2 * (_R // 32), 2, 4)]),
}


def pack_codes(qtype: str, blocks: npt.NDArray[np.uint8], codes: npt.NDArray[np.integer[Any]]) -> npt.NDArray[np.uint8]:
    """Super-blocks `blocks` (rows, block_bytes) of k-quant `qtype` with their code fields
    replaced by `codes` (rows, 256) (stored codes, 0 … 2^bits − 1); headers are kept."""
    _, fields = _FIELDS[qtype]
    out: npt.NDArray[np.uint8] = blocks.copy()
    c = codes.astype(np.uint8)
    for idx, _, _, _ in fields:
        out[:, np.unique(idx)] = 0
    rows = np.arange(out.shape[0])[:, None]
    for idx, shift, width, off in fields:
        vals = (((c >> off) & ((1 << width) - 1)) << shift.astype(np.uint8)).astype(np.uint8)
        np.bitwise_or.at(out, (rows, idx[None, :]), vals)
    return out


def _pack_bits(codes: npt.NDArray[np.integer[Any]], bits: int) -> npt.NDArray[np.uint8]:
    """Codes (rows, n) as a little-endian bit stream of `bits` each (code i at bit `bits · i`):
    the group-affine codes and zeros layout. (rows, ceil(n · bits / 8)) bytes."""
    rows, n = codes.shape
    b = ((codes.astype(np.uint16)[:, :, None] >> np.arange(bits, dtype=np.uint16)) & 1).astype(np.uint8)
    flat = b.reshape(rows, n * bits)
    pad = -flat.shape[1] % 8
    out: npt.NDArray[np.uint8] = np.packbits(np.pad(flat, ((0, 0), (0, pad))), axis=1, bitorder="little")
    return out


def _unpack_bits(data: npt.NDArray[np.uint8], bits: int, n: int) -> npt.NDArray[np.int64]:
    """The inverse of `_pack_bits`: the first `n` codes of each row of `data`."""
    flat = np.unpackbits(data, axis=1, bitorder="little")[:, : n * bits].reshape(data.shape[0], n, bits)
    out: npt.NDArray[np.int64] = (flat.astype(np.int64) << np.arange(bits)).sum(axis=2)
    return out


@dataclass(frozen=True)
class _Affine:
    """A group-affine type as the loop sees it: `qtype` (e.g. "int4"), group and symmetry."""

    base: str
    bits: int
    group: int
    symmetric: bool

    def code_bytes(self, n: int) -> int:
        return n * self.bits // 8

    def pack(self, block: npt.NDArray[np.uint8], codes: npt.NDArray[np.integer[Any]]) -> npt.NDArray[np.uint8]:
        """One group's row bytes (codes, scale, zero) with the codes replaced."""
        out: npt.NDArray[np.uint8] = block.copy()
        nb = self.code_bytes(codes.shape[1])
        out[:, :nb] = _pack_bits(codes, self.bits)
        return out

    def join(self, blocks: list[npt.NDArray[np.uint8]], widths: list[int]) -> npt.NDArray[np.uint8]:
        """Rows of the whole tensor from its groups' one-group rows: all codes, all scales, then
        the zeros re-packed as one bit stream."""
        codes = [b[:, : self.code_bytes(n)] for b, n in zip(blocks, widths, strict=True)]
        scales = [b[:, self.code_bytes(n) : self.code_bytes(n) + 2] for b, n in zip(blocks, widths, strict=True)]
        parts = [*codes, *scales]
        if not self.symmetric:
            zeros = [
                _unpack_bits(b[:, self.code_bytes(n) + 2 :], self.bits, 1) for b, n in zip(blocks, widths, strict=True)
            ]
            parts.append(_pack_bits(np.concatenate(zeros, axis=1), self.bits))
        return np.ascontiguousarray(np.concatenate(parts, axis=1))


def _affine(qtype: str, rows: int, cols: int) -> _Affine | None:
    p = affine_params(qtype, rows, cols)
    return None if p is None else _Affine(p[0], int(p[0][3:]), p[1] or cols, p[2])


def _dq_pack(bits: int, block: npt.NDArray[np.uint8], codes: npt.NDArray[np.integer[Any]]) -> npt.NDArray[np.uint8]:
    """A dq super-block (`formats/QUANT_TYPES.md`: f16 d, f16 m, 3-bit scale codes, zero codes,
    then the value codes as a bit stream) of `codes.shape[1]` values with the codes replaced."""
    n = codes.shape[1] // 16
    at = 4 + (3 * n + 7) // 8 + (bits * n + 7) // 8
    out: npt.NDArray[np.uint8] = block.copy()
    out[:, at:] = _pack_bits(codes, bits)
    return out


def _dq_bits(qtype: str) -> int | None:
    """The code bits of a dq type (`int3-g16-dq` → 3), None for the others."""
    return int(qtype[3]) if qtype.startswith("int") and qtype.endswith("-dq") else None


def _packer(t: str, affine: _Affine | None) -> tuple[Any, int] | None:
    """(`pack(block bytes, codes)`, code bits) for a block of type `t` whose codes the loop
    rounds itself, or None (the block keeps the quantizer's codes)."""
    if affine is not None:
        return affine.pack, affine.bits
    if t in _FIELDS:
        return (lambda blk, codes: pack_codes(t, blk, codes)), _FIELDS[t][0]
    bits = _dq_bits(t)
    if bits is not None:
        return (lambda blk, codes: _dq_pack(bits, blk, codes)), bits
    return None


def _grid(
    qtype: str, blocks: npt.NDArray[np.uint8], width: int, pack: Any
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """(a, b) of shape (rows, width): value v of a row dequantizes to a·c + b for stored code c."""
    rows = blocks.shape[0]
    y = [dequantize(QTensor(qtype, (rows, width), pack(blocks, np.full((rows, width), c)))) for c in (0, 1)]
    return y[1] - y[0], y[0]


@dataclass(frozen=True)
class BlockGPTQResult:
    """`qtensor` of the requested type; `damp` the relative damping used; `error` and `rtn_error`
    the relative proxy output error tr(ΔW H ΔWᵀ)/tr(W H Wᵀ) of the result and of round-to-nearest
    weighted by the Hessian's diagonal (the imatrix result it improves on)."""

    qtensor: QTensor
    damp: float
    dead_columns: int
    error: float
    rtn_error: float


def _segments(qtype: str, cols: int, affine: _Affine | None) -> list[tuple[int, int, str]]:
    """The row's blocks as (first column, end, the type to quantize that block with)."""
    if affine is not None:
        t = f"{affine.base}-row" + ("-sym" if affine.symmetric else "")
        return [(c, min(c + affine.group, cols), t) for c in range(0, cols, affine.group)]
    info = {t["name"]: t for t in _core.qtypes()}[qtype]
    base = info["ragged_base"]
    if base is not None or qtype in _FIELDS or _dq_bits(qtype) is not None:
        full = cols // 256 * 256
        segs = [(c, c + 256, base or qtype) for c in range(0, full, 256)]
        return segs + ([(full, cols, qtype)] if full < cols else [])
    bs = int(info["block_size"])
    return [(c, min(c + bs, cols), qtype) for c in range(0, cols, bs)]


def _loo_shape(qtype: str, affine: _Affine | None) -> tuple[int, int]:
    """(bits, values per scale) of the min-max grid that stands in for `qtype` when ranking
    outliers: the group-affine group, a k-quant's sub-block, a legacy block."""
    if affine is not None:
        return affine.bits, affine.group
    dq = _dq_bits(qtype)
    if dq is not None:
        return dq, 16
    base = qtype.removesuffix("r")
    bits = 4 if base == "iq4_nl" else int(base[1])
    return bits, 32 if base in ("q4_k", "q5_k") or not base.endswith("_k") else 16


def _loo_gain(
    w: npt.NDArray[np.float64], bits: int, group: int, cw: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Leave-one-out gain of keeping each weight of `w` (rows, n) exactly (SpQR): the drop of its
    group's squared error, column-weighted by `cw` (n,), on a min-max grid of `2^bits` levels
    when that weight leaves the group's fit. A weight inside the range gains its own error; the
    group's minimum or maximum gains what the narrower range saves on all the others."""
    rows, n = w.shape
    pad = -n % group
    g = np.pad(w, ((0, 0), (0, pad)), constant_values=np.nan).reshape(rows, -1, group)
    c = np.pad(cw, (0, pad)).reshape(1, -1, group)
    levels = float(2**bits - 1)

    def err(lo: npt.NDArray[np.float64], hi: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        step = (hi - lo) / levels
        safe = np.where(step > 0, step, 1.0)
        q = np.clip(np.rint((g - lo) / safe), 0, levels) * step + lo
        e: npt.NDArray[np.float64] = np.nan_to_num((g - q) ** 2) * c
        return e

    lo, hi = np.nanmin(g, axis=2, keepdims=True), np.nanmax(g, axis=2, keepdims=True)
    e = err(lo, hi)
    gain = e.copy()
    base = e.sum(axis=2, keepdims=True)
    for pick in (np.argmin, np.argmax):
        at = pick(np.where(np.isnan(g), np.inf if pick is np.argmin else -np.inf, g), axis=2)[..., None]
        others = g.copy()
        np.put_along_axis(others, at, np.nan, axis=2)
        lo2, hi2 = np.nanmin(others, axis=2, keepdims=True), np.nanmax(others, axis=2, keepdims=True)
        e2 = err(np.where(np.isnan(lo2), lo, lo2), np.where(np.isnan(hi2), hi, hi2))
        np.put_along_axis(e2, at, 0.0, axis=2)
        np.put_along_axis(gain, at, base - e2.sum(axis=2, keepdims=True), axis=2)
    out: npt.NDArray[np.float64] = gain.reshape(rows, -1)[:, :n]
    return out


def gptq_blocks(
    w: npt.NDArray[np.float32],
    hessian: npt.NDArray[np.floating[Any]],
    qtype: str,
    *,
    damp: float = 0.01,
    outliers: float = 0.0,
) -> BlockGPTQResult:
    """GPTQ of `w` (float32 (rows, cols)) to a ggml block type, ragged k-type or (to keep
    outliers) group-affine type `qtype`, with `hessian` (cols, cols) = Σ x xᵀ of the layer's
    inputs (any positive scale), keeping a fraction `outliers` (0 … 0.1) of the weights exactly
    (the tensor's `outliers`). See the module doc.

    Raises ParameterError (a float qtype, a group-affine one without outliers, damp ≤ 0),
    ShapeError, and InvalidValueError (NaN/Inf in w or H, a Hessian that no damping makes
    positive definite)."""
    if not isinstance(w, np.ndarray) or w.ndim != 2:
        raise ShapeError("w must be a 2-D float array (rows, cols)")
    rows, cols = w.shape
    h = np.array(hessian, dtype=np.float64)
    if h.shape != (cols, cols):
        raise ShapeError(f"the Hessian must have shape ({cols}, {cols}), got {h.shape}")
    if qtype in FLOAT_QTYPES or (is_group_affine(qtype) and not outliers):
        raise ParameterError(
            f"gptq_blocks fits ggml block types and ragged k-types (group-affine ones with outliers), not {qtype}"
        )
    if not damp > 0:
        raise ParameterError(f"damp must be positive, got {damp}")
    if not (np.isfinite(w).all() and np.isfinite(h).all()):
        raise InvalidValueError("NaN or Inf in the weight or the Hessian")
    _core.layout(qtype, rows, cols, None, None)  # the row length fits the type
    affine = _affine(qtype, rows, cols)
    w0 = np.ascontiguousarray(w, dtype=np.float32)
    work = w0.astype(np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    work[:, dead] = 0.0
    imp = np.diag(h).astype(np.float32)
    # H + λI = R Rᵀ with R upper triangular, so H⁻¹ = Uᵀ U with U = R⁻¹: the upper Cholesky
    # factor of the (damped) inverse that GPTQ's column updates use.
    r, damp, _ = _damped_ul_factor(h, damp)
    u = np.linalg.solve(r, np.eye(cols))
    ud = np.diagonal(u).copy()
    segments = _segments(qtype, cols, affine)
    budget = outlier_budget(outliers, rows, cols) if outliers else 0
    tau = np.inf
    bits, group = _loo_shape(qtype, affine)
    cw = 1.0 / ud**2  # the OBS weight 1 / [H⁻¹]ᵢᵢ of each column
    if budget:
        sens = _loo_gain(work, bits, group, cw)
        tau = float(np.partition(sens.reshape(-1), sens.size - budget)[sens.size - budget])
        del sens
    o_row: list[npt.NDArray[np.int64]] = []
    o_col: list[npt.NDArray[np.int64]] = []
    o_val: list[npt.NDArray[np.float16]] = []
    parts: list[npt.NDArray[np.uint8]] = []
    for c0, c1, t in segments:
        seg = np.ascontiguousarray(work[:, c0:c1], dtype=np.float32)
        keep = np.zeros((rows, c1 - c0), bool)
        if budget:
            s = _loo_gain(work[:, c0:c1], bits, group, cw[c0:c1])
            cand = np.flatnonzero(s.reshape(-1) >= tau)
            cand = cand[np.argsort(-s.reshape(-1)[cand], kind="stable")][:budget]
            keep.reshape(-1)[cand] = True
            budget -= cand.size
            if cand.size:
                seg = fill_group_mean(seg, keep)
        blk = quantize(seg, t, importance=imp[c0:c1])
        packer = _packer(t, affine)
        own = packer is not None
        if packer is not None:
            pack, code_bits = packer
            a, b = _grid(t, blk.data, c1 - c0, pack)
            cmax = (1 << code_bits) - 1
            codes = np.zeros((rows, c1 - c0), np.int64)
        else:
            fixed = dequantize(blk).astype(np.float64)
        err = np.zeros((rows, c1 - c0))
        for i in range(c0, c1):
            k = i - c0
            col = work[:, i]
            if own:
                ak, bk = a[:, k].astype(np.float64), b[:, k].astype(np.float64)
                safe = np.where(ak == 0, 1.0, ak)
                ck = np.clip(np.rint((col - bk) / safe), 0, cmax)
                ck[ak == 0] = 0
                codes[:, k] = ck
                q = ak * ck + bk
            else:
                q = fixed[:, k].copy()
            kr = np.flatnonzero(keep[:, k])
            if kr.size:
                res = (col[kr] - q[kr]).astype(np.float16)
                q[kr] += res.astype(np.float64)
                o_row.append(kr)
                o_col.append(np.full(kr.size, i, np.int64))
                o_val.append(res)
            e = (col - q) / u[i, i]
            work[:, i] = q
            if i + 1 < c1:
                work[:, i + 1 : c1] -= np.outer(e, u[i, i + 1 : c1])
            err[:, k] = e
        if c1 < cols:
            work[:, c1:] -= err @ u[c0:c1, c1:]
        parts.append(pack(blk.data, codes) if own else blk.data)
    if affine is not None:
        data = affine.join(parts, [c1 - c0 for c0, c1, _ in segments])
    else:
        data = np.ascontiguousarray(np.concatenate(parts, axis=1))
    qt = QTensor(qtype, (rows, cols), data)
    if o_val:
        cat = np.concatenate
        qt = qt.with_outliers(Outliers.from_coo(rows, cat(o_row), cat(o_col), cat(o_val)))
    w_hat = dequantize(qt)
    if not np.allclose(w_hat, work, rtol=1e-5, atol=1e-6 * float(np.abs(w_hat).max(initial=1e-30))):
        raise RuntimeError("gptq_blocks: the packed bytes do not dequantize to the values the loop chose")
    rtn = dequantize(quantize(w0, qtype, importance=imp))
    hs = np.array(hessian, dtype=np.float64)
    return BlockGPTQResult(qt, damp, int(dead.sum()), output_error(w0, w_hat, hs), output_error(w0, rtn, hs))
