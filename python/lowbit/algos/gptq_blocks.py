"""GPTQ fitted to block quantizers: the ggml k-quants (q2_k … q6_k), their ragged k-types
(q2_kr … q6_kr), the legacy ggml types and iq4_nl — so a GPTQ result still exports to GGUF
(beyond AutoGPTQ and llama.cpp, which fit GPTQ to group-affine integers only).

A row is cut into the type's blocks (256-value super-blocks for k-quants, then a ragged tail;
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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import _core
from ..errors import InvalidValueError, ParameterError, ShapeError
from ..qtensor import QTensor, dequantize, quantize
from .gptq import _damped_ul_factor, output_error

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


def _grid(qtype: str, blocks: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """(a, b) of shape (rows, 256): value v of a row dequantizes to a·c + b for stored code c."""
    rows = blocks.shape[0]
    y = [dequantize(QTensor(qtype, (rows, 256), pack_codes(qtype, blocks, np.full((rows, 256), c)))) for c in (0, 1)]
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


def _segments(qtype: str, cols: int) -> list[tuple[int, int, str]]:
    """The row's blocks as (first column, end, the type to quantize that block with)."""
    info = {t["name"]: t for t in _core.qtypes()}[qtype]
    base = info["ragged_base"]
    if base is not None or qtype in _FIELDS:
        full = cols // 256 * 256
        segs = [(c, c + 256, base or qtype) for c in range(0, full, 256)]
        return segs + ([(full, cols, qtype)] if full < cols else [])
    bs = int(info["block_size"])
    return [(c, min(c + bs, cols), qtype) for c in range(0, cols, bs)]


def gptq_blocks(
    w: npt.NDArray[np.float32], hessian: npt.NDArray[np.floating[Any]], qtype: str, *, damp: float = 0.01
) -> BlockGPTQResult:
    """GPTQ of `w` (float32 (rows, cols)) to a ggml block type or ragged k-type `qtype`, with
    `hessian` (cols, cols) = Σ x xᵀ of the layer's inputs (any positive scale). See the module doc.

    Raises ParameterError (a group-affine or float qtype, damp ≤ 0), ShapeError, and
    InvalidValueError (NaN/Inf in w or H, a Hessian that no damping makes positive definite)."""
    if not isinstance(w, np.ndarray) or w.ndim != 2:
        raise ShapeError("w must be a 2-D float array (rows, cols)")
    rows, cols = w.shape
    h = np.array(hessian, dtype=np.float64)
    if h.shape != (cols, cols):
        raise ShapeError(f"the Hessian must have shape ({cols}, {cols}), got {h.shape}")
    if qtype.startswith("int") or qtype in ("f32", "f16", "bf16"):
        raise ParameterError(f"gptq_blocks fits ggml block types and ragged k-types, not {qtype}")
    if not damp > 0:
        raise ParameterError(f"damp must be positive, got {damp}")
    if not (np.isfinite(w).all() and np.isfinite(h).all()):
        raise InvalidValueError("NaN or Inf in the weight or the Hessian")
    _core.layout(qtype, rows, cols, None, None)  # the row length fits the type
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
    parts: list[npt.NDArray[np.uint8]] = []
    for c0, c1, t in _segments(qtype, cols):
        blk = quantize(np.ascontiguousarray(work[:, c0:c1], dtype=np.float32), t, importance=imp[c0:c1])
        if t in _FIELDS:
            a, b = _grid(t, blk.data)
            cmax = (1 << _FIELDS[t][0]) - 1
            codes = np.zeros((rows, c1 - c0), np.int64)
        else:
            fixed = dequantize(blk).astype(np.float64)
        err = np.zeros((rows, c1 - c0))
        for i in range(c0, c1):
            k = i - c0
            col = work[:, i]
            if t in _FIELDS:
                ak, bk = a[:, k].astype(np.float64), b[:, k].astype(np.float64)
                safe = np.where(ak == 0, 1.0, ak)
                ck = np.clip(np.rint((col - bk) / safe), 0, cmax)
                ck[ak == 0] = 0
                codes[:, k] = ck
                q = ak * ck + bk
            else:
                q = fixed[:, k]
            e = (col - q) / u[i, i]
            work[:, i] = q
            if i + 1 < c1:
                work[:, i + 1 : c1] -= np.outer(e, u[i, i + 1 : c1])
            err[:, k] = e
        if c1 < cols:
            work[:, c1:] -= err @ u[c0:c1, c1:]
        parts.append(pack_codes(t, blk.data, codes) if t in _FIELDS else blk.data)
    qt = QTensor(qtype, (rows, cols), np.ascontiguousarray(np.concatenate(parts, axis=1)))
    w_hat = dequantize(qt)
    if not np.allclose(w_hat, work, rtol=1e-5, atol=1e-6 * float(np.abs(w_hat).max(initial=1e-30))):
        raise RuntimeError("gptq_blocks: the packed bytes do not dequantize to the values the loop chose")
    rtn = dequantize(quantize(w0, qtype, importance=imp))
    hs = np.array(hessian, dtype=np.float64)
    return BlockGPTQResult(qt, damp, int(dead.sum()), output_error(w0, w_hat, hs), output_error(w0, rtn, hs))
