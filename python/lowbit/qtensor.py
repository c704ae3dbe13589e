"""`QTensor`, `quantize` and `dequantize`: the quantized tensor and the calls that make and
read it."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from . import _core
from .errors import ParameterError, ShapeError

__all__ = ["ActQuant", "Outliers", "QTensor", "SourceDType", "dequantize", "quantize"]

SourceDType = Literal["f32", "f16", "bf16"]

ACT_MAX_COLS = 1 << 17
"""Longest row (input features) of a W8A8 weight: the int32 sums of up to 2^17 products of
|q| <= 127 and |c| <= 128 cannot overflow (`formats/LBF.md` §5, `act_quant`)."""

_ACT_MODES = {"static": 1, "dynamic": 2}


@dataclass(frozen=True)
class ActQuant:
    """How a W8A8 weight quantizes the activations it multiplies (`formats/LBF.md` §5,
    `act_quant`): each activation row `x` (cols,) becomes int8 codes
    `q = round_half_even(clip(x / step, -127, 127))` (float32 division), and each output is the
    exact integer sum of `q` times the weight codes, times the row's scale, times `step`.

    Attributes:
        mode: `"static"`: one `step` for every row (a per-tensor scale chosen by a calibration
            observer; values beyond ±127·step clamp); `"dynamic"`: per row (token),
            `step = max|x| / 127` (all codes 0 for a zero row).
        step: static only: float32, finite and > 0 (stored rounded to float32); 0.0 for dynamic.

    Raises:
        ParameterError: an unknown mode, a static step that is not a finite positive float32,
            or a dynamic one that is not 0.
        TypeError: a step that is not a real number.
    """

    mode: Literal["static", "dynamic"]
    step: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in _ACT_MODES:
            raise ParameterError(f"activation mode must be 'static' or 'dynamic', got {self.mode!r}")
        if isinstance(self.step, bool) or not isinstance(self.step, int | float | np.integer | np.floating):
            raise TypeError(f"the activation step must be a real number, got {type(self.step).__name__}")
        with np.errstate(over="ignore"):
            step32 = np.float32(self.step)
        if self.mode == "static" and not (np.isfinite(step32) and step32 > 0):
            raise ParameterError(f"a static activation step must be finite and > 0 in float32, got {self.step!r}")
        if self.mode == "dynamic" and self.step != 0:
            raise ParameterError(f"dynamic activation quantization takes no step (0.0), got {self.step!r}")
        object.__setattr__(self, "step", float(step32))

    def _to_bytes(self) -> npt.NDArray[np.uint8]:
        """The `act_quant` part: u32 mode (1 static, 2 dynamic), f32 step, little-endian."""
        return np.frombuffer(struct.pack("<If", _ACT_MODES[self.mode], self.step), np.uint8)

    @classmethod
    def _from_bytes(cls, b: npt.NDArray[np.uint8]) -> ActQuant:
        """Decode a part the LBF reader has already checked."""
        mode, step = struct.unpack("<If", b.tobytes())
        return cls("static" if mode == 1 else "dynamic", step)

    def _wire(self) -> tuple[str, float]:
        """The form `_core` takes: `(mode, step)`."""
        return (self.mode, self.step)


class Outliers(NamedTuple):
    """A sparse outlier sidecar in CSR form (`formats/LBF.md` §5, parts 2–4): weights kept
    exactly, as a value *added* to the dequantized stored weight (SpQR's dense-and-sparse
    split: `W = deq(Q) + S`).

    Attributes:
        row_ptr: uint64 (rows + 1,): row `r`'s outliers are entries `row_ptr[r] : row_ptr[r+1]`;
            non-decreasing, first 0, last nnz.
        cols: uint32 (nnz,): the *stored* column of each outlier (with an act-order `perm`,
            input column `perm[col]`), `< cols`, strictly increasing within a row.
        vals: float16 (nnz,): finite; what is added to the dequantized value there.

    Bytes stored: `8 · (rows + 1) + 6 · nnz`.
    """

    row_ptr: npt.NDArray[np.uint64]
    cols: npt.NDArray[np.uint32]
    vals: npt.NDArray[np.float16]

    @property
    def nnz(self) -> int:
        """Number of outliers."""
        return int(self.vals.size)

    @property
    def nbytes(self) -> int:
        """Bytes of the three parts."""
        return int(self.row_ptr.nbytes + self.cols.nbytes + self.vals.nbytes)

    @classmethod
    def from_coo(cls, rows: int, row: npt.ArrayLike, col: npt.ArrayLike, vals: npt.ArrayLike) -> Outliers:
        """Build from coordinates in any order (`row`, `col` (nnz,) integers, stored columns;
        `vals` (nnz,) rounded to float16). Duplicated positions raise ParameterError."""
        r = np.asarray(row, dtype=np.int64).reshape(-1)
        c = np.asarray(col, dtype=np.int64).reshape(-1)
        v = np.asarray(vals).reshape(-1)
        if not (r.size == c.size == v.size):
            raise ShapeError(f"outlier rows, cols and vals differ in length: {r.size}, {c.size}, {v.size}")
        if r.size and (r.min() < 0 or r.max() >= rows or c.min() < 0 or c.max() > np.iinfo(np.uint32).max):
            raise ShapeError(f"outlier coordinates outside {rows} rows or the uint32 range")
        order = np.lexsort((c, r))
        r, c = r[order], c[order]
        if r.size > 1 and np.any((r[1:] == r[:-1]) & (c[1:] == c[:-1])):
            raise ParameterError("two outliers at the same position")
        row_ptr = np.zeros(rows + 1, np.uint64)
        np.cumsum(np.bincount(r, minlength=rows), out=row_ptr[1:])
        with np.errstate(over="ignore"):
            v16 = v[order].astype(np.float16)
        return cls(row_ptr, c.astype(np.uint32), v16)

    def coo(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """(row, stored column, value as float32), each (nnz,)."""
        ptr = self.row_ptr.astype(np.int64)
        counts = ptr[1:] - ptr[:-1]
        row = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
        return row, self.cols.astype(np.int64), self.vals.astype(np.float32)


class QTensor:
    """A quantized 2-D tensor: `shape = (rows, cols)` values stored as `data`, a uint8 array of
    shape `(rows, row_bytes)` holding the raw blocks row-major (exactly ggml's bytes for the
    ggml-compatible types; the layout of the group-affine types is in `formats/QUANT_TYPES.md`).

    `qtype` is the canonical type name; for group-affine types it includes the group size and
    symmetry (`"int4-g128"`, `"int3-row-sym"`), also available as `group_size` (0 = whole row)
    and `symmetric`.

    A group-affine tensor may store its columns permuted (GPTQ's act-order): `perm`, uint32
    (cols,), says that stored column `j` holds input column `perm[j]`. `dequantize` returns input
    order, `matmul` and the LBF file honour it, and its bytes count in `nbytes`.

    Any tensor may carry `outliers` (an `Outliers` sidecar: weights kept exactly, added to the
    dequantized values); `dequantize`, `matmul` and the LBF file honour them, and their bytes
    count in `nbytes`.

    A symmetric int8 tensor with one group per row (`int8-row-sym`, at most `ACT_MAX_COLS`
    columns, no `perm`, no outliers) may carry `act`, an `ActQuant`: `matmul` then quantizes the activations
    to int8 too (W8A8); `dequantize` ignores it (weights only); the LBF file stores it (8 bytes,
    counted in `nbytes`).
    """

    __slots__ = ("_act", "_data", "_group_size", "_outliers", "_perm", "_qtype", "_shape", "_symmetric")

    def __init__(
        self,
        qtype: str,
        shape: tuple[int, int],
        data: npt.NDArray[np.uint8],
        *,
        group_size: int | None = None,
        symmetric: bool | None = None,
        perm: npt.ArrayLike | None = None,
        act: ActQuant | None = None,
        outliers: Outliers | tuple[npt.ArrayLike, npt.ArrayLike, npt.ArrayLike] | None = None,
    ) -> None:
        rows, cols = _shape2(shape)
        name, g, s, row_bytes = _core.layout(qtype, rows, cols, group_size, symmetric)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
            raise TypeError("data must be a numpy uint8 array")
        if data.size != rows * row_bytes:
            raise ShapeError(f"{name} tensor of shape {shape} needs {rows * row_bytes} bytes, got {data.size}")
        self._qtype, self._group_size, self._symmetric = name, g, s
        self._shape = (rows, cols)
        self._data = np.ascontiguousarray(data).reshape(rows, row_bytes)
        self._perm = None if perm is None else _check_perm(perm, name, cols)
        self._outliers = None if outliers is None else check_outliers(outliers, rows, cols)
        self._act = _check_act(act, name, g, s, cols, self._perm, self._outliers)

    @classmethod
    def from_bytes(
        cls,
        buf: bytes | bytearray | memoryview | npt.NDArray[np.uint8],
        qtype: str,
        shape: tuple[int, int],
        *,
        group_size: int | None = None,
        symmetric: bool | None = None,
    ) -> QTensor:
        """Wrap raw blocks (no copy where the buffer allows). The length must match exactly."""
        data = buf if isinstance(buf, np.ndarray) else np.frombuffer(buf, dtype=np.uint8)
        return cls(qtype, shape, data.reshape(-1), group_size=group_size, symmetric=symmetric)

    @property
    def qtype(self) -> str:
        """Canonical type name (`"q4_k"`, `"int4-g128"`)."""
        return self._qtype

    @property
    def base_qtype(self) -> str:
        """The type without group-affine parameters (`"int4"`; a `-dq` type is its own base)."""
        return self._qtype if self._group_size is None else self._qtype.split("-")[0]

    @property
    def group_size(self) -> int | None:
        """Columns per group of a group-affine tensor (0 = whole row); None otherwise."""
        return self._group_size

    @property
    def symmetric(self) -> bool | None:
        """Whether a group-affine tensor is symmetric; None otherwise."""
        return self._symmetric

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the dequantized tensor."""
        return self._shape

    @property
    def data(self) -> npt.NDArray[np.uint8]:
        """The raw bytes, shape (rows, row_bytes)."""
        return self._data

    @property
    def perm(self) -> npt.NDArray[np.uint32] | None:
        """The act-order permutation, uint32 (cols,): stored column `j` is input column
        `perm[j]`; None when the columns are stored in input order."""
        return self._perm

    @property
    def act(self) -> ActQuant | None:
        """The activation quantization of a W8A8 weight; None for weight-only quantization."""
        return self._act

    @property
    def outliers(self) -> Outliers | None:
        """The sparse outlier sidecar, or None."""
        return self._outliers

    def with_act(self, act: ActQuant | None) -> QTensor:
        """The same tensor (sharing `data`) with activation quantization `act` (None: weight
        only). Raises as the constructor does for a tensor that cannot carry it."""
        qt = QTensor._view(
            self._qtype, self._shape, self._data, self._group_size, self._symmetric, self._perm, None, self._outliers
        )
        qt._act = _check_act(
            act, self._qtype, self._group_size, self._symmetric, self._shape[1], self._perm, self._outliers
        )
        return qt

    def with_outliers(self, outliers: Outliers | tuple[npt.ArrayLike, npt.ArrayLike, npt.ArrayLike] | None) -> QTensor:
        """The same tensor (sharing `data`) with the sidecar `outliers` (None: without). Raises
        as the constructor does."""
        o = None if outliers is None else check_outliers(outliers, *self._shape)
        _check_act(self._act, self._qtype, self._group_size, self._symmetric, self._shape[1], self._perm, o)
        return QTensor._view(
            self._qtype, self._shape, self._data, self._group_size, self._symmetric, self._perm, self._act, o
        )

    @property
    def nbytes(self) -> int:
        """Bytes stored (codes, scales, zeros, permutation, outliers, act part: everything)."""
        extra = (0 if self._perm is None else int(self._perm.nbytes)) + (0 if self._act is None else 8)
        extra += 0 if self._outliers is None else self._outliers.nbytes
        return int(self._data.nbytes) + extra

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per value, everything counted."""
        return 8.0 * self.nbytes / (self._shape[0] * self._shape[1])

    def dequantize(self, *, isa: str | None = None) -> npt.NDArray[np.float32]:
        """The float32 values, shape `self.shape`."""
        return dequantize(self, isa=isa)

    @classmethod
    def _view(
        cls,
        qtype: str,
        shape: tuple[int, int],
        data: npt.NDArray[np.uint8],
        group_size: int | None,
        symmetric: bool | None,
        perm: npt.NDArray[np.uint32] | None = None,
        act: ActQuant | None = None,
        outliers: Outliers | None = None,
    ) -> QTensor:
        """Wrap bytes (and a permutation, an act mode, outliers) already validated (by the LBF
        reader): no copy, and empty tensors allowed."""
        qt = cls.__new__(cls)
        qt._qtype, qt._group_size, qt._symmetric, qt._shape = qtype, group_size, symmetric, shape
        qt._perm, qt._act, qt._outliers = perm, act, outliers
        qt._data = data.reshape(shape[0], data.size // shape[0] if shape[0] else 0)
        return qt

    def __repr__(self) -> str:
        p = ", act-order" if self._perm is not None else ""
        if self._outliers is not None:
            p += f", {self._outliers.nnz} outliers"
        if self._act is not None:
            p += f", act={self._act.mode}" + (f"(step={self._act.step:.6g})" if self._act.mode == "static" else "")
        return f"QTensor({self._qtype}, shape={self._shape}{p}, {self.nbytes} bytes, {self.bits_per_weight:.4g} bpw)"


def _check_act(
    act: ActQuant | None,
    qtype: str,
    group_size: int | None,
    symmetric: bool | None,
    cols: int,
    perm: npt.NDArray[np.uint32] | None,
    outliers: Outliers | None = None,
) -> ActQuant | None:
    """`act` if a tensor of these parameters may carry it (the rule of the core's
    `QMatrix::with_act`), else the typed error."""
    if act is None:
        return None
    if not isinstance(act, ActQuant):
        raise TypeError(f"act must be an ActQuant or None, got {type(act).__name__}")
    g = group_size or 0
    if not (qtype.split("-")[0] == "int8" and symmetric and (g == 0 or g >= cols)):
        raise ParameterError(
            f"int8 activations need a symmetric int8 weight with one group per row (int8-row-sym), not {qtype} "
            f"on rows of {cols}"
        )
    if perm is not None or outliers is not None:
        raise ParameterError("int8 activations cannot combine with an act-order permutation or outliers")
    if cols > ACT_MAX_COLS:
        raise ShapeError(f"int8 activations need rows of at most {ACT_MAX_COLS} values (int32 sums), got {cols}")
    return act


def check_outliers(o: Outliers | tuple[npt.ArrayLike, npt.ArrayLike, npt.ArrayLike], rows: int, cols: int) -> Outliers:
    """`o` as a validated `Outliers` for a tensor of shape (rows, cols): the rules of
    `formats/LBF.md` §5 (ShapeError for lengths, ParameterError for content, TypeError for
    dtypes)."""
    if not isinstance(o, tuple) or len(o) != 3:
        raise TypeError("outliers must be an Outliers or a tuple (row_ptr, cols, vals)")
    ptr, col, val = (np.asarray(a) for a in o)
    if ptr.dtype.kind not in "iu" or col.dtype.kind not in "iu":
        raise TypeError(f"outlier row pointers and columns must be integer arrays, got {ptr.dtype}, {col.dtype}")
    if val.dtype != np.float16:
        raise TypeError(f"outlier values must be float16, got {val.dtype}")
    if ptr.shape != (rows + 1,) or col.ndim != 1 or val.shape != col.shape:
        raise ShapeError(
            f"outliers of a ({rows}, {cols}) tensor need {rows + 1} row pointers and columns/values of one length "
            f"(nnz,), got shapes {ptr.shape}, {col.shape}, {val.shape}"
        )
    p = ptr.astype(np.int64)
    if p[0] != 0 or p[-1] != col.size or np.any(np.diff(p) < 0):
        raise ParameterError(f"outlier row pointers must rise from 0 to nnz = {col.size} and never decrease")
    c = col.astype(np.int64)
    if c.size and (c.min() < 0 or c.max() >= cols):
        raise ParameterError(f"an outlier column is out of range: outside 0..{cols}")
    first = np.zeros(c.size, bool)
    first[p[:-1][p[:-1] < c.size]] = True  # the first entry of each non-empty row
    if np.any((np.diff(c) <= 0) & ~first[1:]):
        raise ParameterError("outlier columns must increase strictly within a row")
    if not np.isfinite(val).all():
        raise ParameterError("an outlier value is not finite")
    return Outliers(np.ascontiguousarray(p, np.uint64), np.ascontiguousarray(c, np.uint32), np.ascontiguousarray(val))


FLOAT_QTYPES = ("f32", "f16", "bf16")
"""The float storage types (no quantization grid)."""


def is_group_affine(qtype: str) -> bool:
    """Whether `qtype` (a canonical or parametrised name) is a group-affine integer type
    (`int4-g128`, `int3-row-sym`, …): not a ggml block type, float, ragged k-type or dq type."""
    return qtype.startswith("int") and not qtype.endswith("-dq")


def affine_params(qtype: str, rows: int, cols: int) -> tuple[str, int, bool] | None:
    """(base "int4", group size (0: the whole row), symmetric) of a group-affine `qtype` on a
    (rows, cols) tensor; None for the other types."""
    if not is_group_affine(qtype):
        return None
    name, g, sym, _ = _core.layout(qtype, rows, cols, None, None)
    return name.split("-")[0], int(g or 0), bool(sym)


def _check_perm(perm: npt.ArrayLike, qtype: str, cols: int) -> npt.NDArray[np.uint32]:
    arr = np.asarray(perm)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"perm must be an integer array, got {arr.dtype}")
    if not is_group_affine(qtype):
        raise ParameterError(f"only group-affine tensors store a column permutation, not {qtype}")
    if arr.shape != (cols,):
        raise ShapeError(f"perm must have shape ({cols},), got {arr.shape}")
    if not np.array_equal(np.sort(arr), np.arange(cols)):
        raise ParameterError(f"perm is not a permutation of 0..{cols}")
    return np.ascontiguousarray(arr, dtype=np.uint32)


def _shape2(shape: Any) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise ShapeError(f"shape must be (rows, cols), got {shape!r}") from None
    if rows <= 0 or cols <= 0:
        raise ShapeError(f"shape must be positive, got {shape!r}")
    return rows, cols


def _input_matrix(x: Any, source_dtype: SourceDType | None) -> tuple[npt.NDArray[Any], SourceDType]:
    """Check and normalise the input: 2-D, non-empty, float32/float16 (or uint16 bf16 bits),
    C-contiguous, aligned, native byte order. Strided, reversed, Fortran-order, misaligned or
    byte-swapped arrays are copied explicitly (never read through a raw pointer)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy.ndarray, got {type(x).__name__}")
    if x.ndim != 2:
        raise ShapeError(f"x must be 2-D (rows, cols), got {x.ndim}-D with shape {x.shape}")
    if x.size == 0:
        raise ShapeError(f"x is empty (shape {x.shape}): nothing to quantize")
    kind = (x.dtype.kind, x.dtype.itemsize)
    if source_dtype == "bf16":
        if kind != ("u", 2):
            raise TypeError(f"source_dtype='bf16' needs the bf16 bits as a uint16 array, got {x.dtype}")
        tag: SourceDType = "bf16"
    elif source_dtype not in (None, "f32", "f16"):
        raise ParameterError(f"source_dtype must be 'f32', 'f16' or 'bf16', got {source_dtype!r}")
    elif kind == ("f", 4):
        tag = "f32"
    elif kind == ("f", 2):
        tag = "f16"
    else:
        raise TypeError(
            f"x must be float32 or float16 (bfloat16: uint16 bits with source_dtype='bf16'), got {x.dtype}; "
            "convert explicitly, e.g. x.astype(np.float32)"
        )
    if source_dtype is not None and source_dtype != tag:
        raise TypeError(f"source_dtype={source_dtype!r} does not match an array of dtype {x.dtype}")
    native = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16}[tag]
    arr = np.require(x, dtype=native, requirements=["C_CONTIGUOUS", "ALIGNED"])
    if tag != "f32":
        arr = arr.view(np.uint16)
    return arr, tag


def _vector(v: Any, name: str) -> npt.NDArray[np.float32] | None:
    if v is None:
        return None
    arr = np.asarray(v)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a numeric array, got {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32).reshape(-1)


def quantize(
    x: npt.NDArray[Any],
    qtype: str,
    *,
    group_size: int | None = None,
    symmetric: bool | None = None,
    importance: npt.ArrayLike | None = None,
    clip_ratio: float | None = None,
    group_min: npt.ArrayLike | None = None,
    group_max: npt.ArrayLike | None = None,
    source_dtype: SourceDType | None = None,
    isa: str | None = None,
) -> QTensor:
    """Quantize a 2-D weight matrix `x` of shape (rows, cols) to `qtype`.

    Args:
        x: float32 or float16 array; bfloat16 weights as their raw uint16 bits with
            `source_dtype="bf16"`. Any memory layout (copied if not C-contiguous and aligned).
        qtype: a name from `qtypes()`; group-affine types also as `"int4-g128"`, `"int3-row"`,
            `"int4-g64-sym"`.
        group_size: group-affine only: 32, 64, 128 (default) or 256 columns per group, 0 = one
            group per row. The last group of a row may be shorter.
        symmetric: group-affine only: no zero points (default False).
        importance: per-column weights of the squared error (llama.cpp's imatrix: mean x² of
            the layer's input activations), shape (cols,), finite and >= 0. Used by the scale
            searches of the k-quants, iq4_nl, the legacy ggml types (then not bit-identical to
            ggml's reference, which has no importance) and the group-affine clip search.
        clip_ratio: group-affine only: shrink each group's range by this factor in (0, 1].
        group_min, group_max: group-affine only: explicit per-group ranges, shape
            (rows, groups) each (from calibration or GPTQ).
        source_dtype: "f32", "f16" or "bf16"; inferred from the dtype except for bf16.
        isa: force an instruction set for this call ("scalar", "avx2", "avx512", "neon").

    Raises:
        TypeError: wrong array dtype or type.
        ShapeError: not 2-D, empty, a row length the type's blocks do not divide.
        QTypeError: unknown type name.
        ParameterError: an option the type does not take or out of range.
        InvalidValueError: NaN, ±Inf or a magnitude beyond the type's `max_abs`; `.index` is
            the flat index of the first.
        IsaError: `isa` (or `LOWBIT_ISA`) names a level this CPU lacks.
    """
    arr, tag = _input_matrix(x, source_dtype)
    rows, cols = arr.shape
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int | np.integer)):
        raise TypeError(f"group_size must be an int, got {type(group_size).__name__}")
    if group_size is not None and group_size < 0:
        raise ParameterError(f"group_size must be 32, 64, 128, 256 or 0 (whole row), got {group_size}")
    name, g, s, row_bytes, data = _core.quantize(
        arr,
        qtype,
        tag,
        None if group_size is None else int(group_size),
        symmetric,
        _vector(importance, "importance"),
        clip_ratio,
        _vector(group_min, "group_min"),
        _vector(group_max, "group_max"),
        isa,
    )
    return QTensor(name, (rows, cols), data.reshape(rows, row_bytes), group_size=g, symmetric=s)


def dequantize(qt: QTensor, *, isa: str | None = None) -> npt.NDArray[np.float32]:
    """Dequantize `qt` to a float32 array of shape `qt.shape`, columns in input order."""
    if not isinstance(qt, QTensor):
        raise TypeError(f"dequantize takes a QTensor, got {type(qt).__name__}")
    rows, cols = qt.shape
    if rows * cols == 0:
        return np.zeros((rows, cols), np.float32)
    flat = _core.dequantize(qt.data.reshape(-1), qt.qtype, rows, cols, qt.group_size, qt.symmetric, isa)
    stored = flat.reshape(rows, cols)
    if qt.outliers is not None:
        r, c, v = qt.outliers.coo()
        stored[r, c] += v  # positions are unique
    if qt.perm is None:
        return stored
    out = np.empty_like(stored)
    out[:, qt.perm] = stored
    return out
