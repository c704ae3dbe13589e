"""`matmul` and `matmul_reference`: `y = x @ W.T` for a weight `W` stored in any qtype."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from . import _core
from .errors import ParameterError, ShapeError
from .qtensor import Outliers, QTensor

__all__ = ["Outliers", "PackedWeight", "matmul", "matmul_reference", "pack"]

OutliersArg = Outliers | tuple[npt.ArrayLike, npt.ArrayLike, npt.ArrayLike]


@dataclass(frozen=True, eq=False)
class PackedWeight:
    """A q4_0 or iq4_nl weight with its rows packed for the GEMV, as the engine packs them at
    load on CPUs with AVX-512 VNNI: four rows interleaved per pair of blocks, so that one load
    holds a block of four rows' codes and one their scales (DEVELOPERS.md, "Packed weights").
    Made by `pack`; `matmul(x, pw)` gives the same bits as `matmul(x, qt)`, faster for few
    rows of `x` where the CPU has the packed kernel (elsewhere the rows are unpacked on the fly).

    Attributes:
        qtype: "q4_0" or "iq4_nl".
        shape: (rows, cols) of the weight.
        data: uint8, the packed rows (rows rounded up to a multiple of 4, the last repeated).
        outliers: the weight's sparse outliers, if any.
    """

    qtype: str
    shape: tuple[int, int]
    data: npt.NDArray[np.uint8]
    outliers: Outliers | None = None


def pack(qt: QTensor) -> PackedWeight:
    """The rows of a q4_0 or iq4_nl `QTensor` packed for the GEMV (see `PackedWeight`).

    Raises:
        TypeError: `qt` is not a QTensor.
        ParameterError: another qtype, or a weight with a permutation or an act mode.
    """
    if not isinstance(qt, QTensor):
        raise TypeError(f"pack takes a QTensor, got {type(qt).__name__}")
    if qt.perm is not None or qt.act is not None:
        raise ParameterError("a weight with a permutation or an act mode is not packed")
    rows, cols = qt.shape
    data = _core.pack_rows(qt.data.reshape(-1), qt.qtype, rows, cols)
    return PackedWeight(qt.qtype, (rows, cols), data, qt.outliers)


def _weight(w: Any) -> QTensor:
    if isinstance(w, QTensor):
        return w
    if isinstance(w, np.ndarray) and w.ndim == 2 and w.dtype == np.float32:
        rows, cols = w.shape
        data = np.ascontiguousarray(w, dtype="<f4").view(np.uint8).reshape(-1)
        return QTensor("f32", (rows, cols), data)
    raise TypeError(f"the weight must be a QTensor or a 2-D float32 numpy array, got {type(w).__name__}")


def _int_array(a: npt.ArrayLike, dtype: type[np.unsignedinteger[Any]], name: str) -> npt.NDArray[Any]:
    arr = np.asarray(a)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got {arr.dtype}")
    if arr.ndim != 1:
        raise ShapeError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > np.iinfo(dtype).max):
        raise ShapeError(f"{name} holds values outside the range of {np.dtype(dtype).name}")
    return np.ascontiguousarray(arr, dtype=dtype)


def _rows_of(x: Any, cols: int, shape: tuple[int, int]) -> npt.NDArray[np.float32]:
    """`x` checked and as C-contiguous float32 rows of `cols` values."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise TypeError(f"x must be a float array (float32, or float16/float64 converted), got {x.dtype}")
    if x.ndim not in (1, 2) or x.shape[-1] != cols:
        raise ShapeError(f"x must have shape ({cols},) or (n, {cols}) for a weight of shape {shape}, got {x.shape}")
    return np.ascontiguousarray(x.reshape(-1, cols), dtype=np.float32)


def _outlier_arrays(o: Outliers | None) -> tuple[Any, Any, Any]:
    """The outliers as the core takes them: row pointers, columns, f16 values as uint16 bits."""
    return (None, None, None) if o is None else (o.row_ptr, o.cols, o.vals.view(np.uint16))


def _call_packed(
    x: Any, pw: PackedWeight, perm: npt.ArrayLike | None, outliers: OutliersArg | None, isa: str | None, reference: bool
) -> npt.NDArray[np.float32]:
    rows, cols = pw.shape
    x2 = _rows_of(x, cols, pw.shape)
    if perm is not None or outliers is not None:
        raise ParameterError("a PackedWeight takes its outliers from pack() and no permutation")
    o = _outlier_arrays(pw.outliers)
    y = _core.matmul(x2, pw.data, pw.qtype, rows, cols, None, None, None, *o, isa, reference, None, True)
    return y.reshape(rows) if x.ndim == 1 else y.reshape(x2.shape[0], rows)


def _call(
    x: Any, qt: Any, perm: npt.ArrayLike | None, outliers: OutliersArg | None, isa: str | None, reference: bool
) -> npt.NDArray[np.float32]:
    if isinstance(qt, PackedWeight):
        return _call_packed(x, qt, perm, outliers, isa, reference)
    w = _weight(qt)
    rows, cols = w.shape
    x2 = _rows_of(x, cols, w.shape)
    if perm is not None and w.perm is not None:
        raise ParameterError("the QTensor carries its own permutation: do not pass perm as well")
    p = w.perm if perm is None else _int_array(perm, np.uint32, "perm")
    if w.act is not None and (p is not None or outliers is not None):
        raise ParameterError("a W8A8 weight (act) cannot take a permutation or outliers")
    if outliers is not None:
        if w.outliers is not None:
            raise ParameterError("the QTensor carries its own outliers: do not pass outliers as well")
        w = w.with_outliers(outliers)  # checked as the tensor's own
    o = _outlier_arrays(w.outliers)
    act = None if w.act is None else w.act._wire()
    y = _core.matmul(x2, w.data.reshape(-1), w.qtype, rows, cols, w.group_size, w.symmetric, p, *o, isa, reference, act)
    return y.reshape(rows) if x.ndim == 1 else y.reshape(x2.shape[0], rows)


def matmul(
    x: npt.NDArray[np.floating[Any]],
    qt: QTensor | PackedWeight | npt.NDArray[np.float32],
    *,
    perm: npt.ArrayLike | None = None,
    outliers: OutliersArg | None = None,
    isa: str | None = None,
) -> npt.NDArray[np.float32]:
    """`y = x @ W.T` with the quantized weight `W` (rows, cols), without dequantizing it.

    Quantized weights multiply in integer SIMD after quantizing each row of `x` on the fly to
    int8 blocks of 32 values, 256 for the k-quants (relative error about 1/254 of each block's
    largest |x|); float
    weights (f32, f16, bf16) multiply in f32. A W8A8 weight (a QTensor with `act`, see
    `ActQuant`) quantizes each row of `x` with one step (static, or max|x|/127 per row) and sums
    int8 × int8 products exactly; its result is the same bits at every ISA and equals
    `matmul_reference`.

    Args:
        x: activations, shape (cols,) or (n, cols); float32 (float16/float64 are converted).
        qt: a `QTensor` of any qtype, a `PackedWeight` (see `pack`), or a 2-D float32 array
            (an f32 weight).
        perm: group-affine only: act-order permutation, uint32 (cols,): stored column j holds
            input column perm[j]. Default: the QTensor's own `perm` (giving both is an error).
        outliers: sparse outliers (row_ptr uint64 (rows + 1,), cols uint32 (nnz,), vals
            float16 (nnz,)), added to the dequantized stored rows. Default: the QTensor's own
            `outliers` (giving both is an error).
        isa: force an instruction set ("scalar", "avx2", "avx512", "neon").

    Returns:
        float32 array of shape (rows,) for 1-D `x`, else (n, rows).

    Raises:
        TypeError: `x` or `qt` of the wrong type or dtype.
        ShapeError: `x` whose last dimension is not `cols`, parts of the wrong length.
        ParameterError: a permutation that is not one (or on a non-group-affine type), bad
            outlier row pointers, columns or values, a permutation or outliers with a W8A8 weight.
        InvalidValueError: NaN or ±Inf in `x` (`.index`, `.row`, `.col` locate the first).
        IsaError: `isa` names a level this CPU lacks.
    """
    return _call(x, qt, perm, outliers, isa, reference=False)


def matmul_reference(
    x: npt.NDArray[np.floating[Any]],
    qt: QTensor | PackedWeight | npt.NDArray[np.float32],
    *,
    perm: npt.ArrayLike | None = None,
    outliers: OutliersArg | None = None,
    isa: str | None = None,
) -> npt.NDArray[np.float32]:
    """The reference of `matmul` (same arguments and result): every row dequantized by the
    scalar kernels, products summed in float64, rounded once to float32; for a W8A8 weight the
    plain statement of its semantics (see `ActQuant`). `isa` is checked but not used."""
    return _call(x, qt, perm, outliers, isa, reference=True)
