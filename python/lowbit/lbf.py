"""LBF files: `save` a dict of tensors with typed metadata, `load` it back as zero-copy views.

The format is specified byte for byte in `formats/LBF.md`.

>>> import numpy as np, tempfile, os, lowbit
>>> w = np.random.default_rng(0).standard_normal((64, 256), dtype=np.float32)
>>> path = os.path.join(tempfile.mkdtemp(), "model.lbf")
>>> lowbit.save(path, {"w": lowbit.quantize(w, "q4_k"), "norm": np.ones(256, np.float32)}, {"answer": 42})
>>> with lowbit.load(path) as f:
...     sorted(f), f["w"].qtype, f["norm"].shape, f.metadata["answer"], f.get_int("answer")
(['norm', 'w'], 'q4_k', (256,), 42, 42)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from . import _core
from .errors import (
    ChecksumError,
    ClosedError,
    MetadataTypeError,
    NotFoundError,
    ParameterError,
    ShapeError,
)
from .qtensor import ActQuant, Outliers, QTensor

_OUTLIER_PARTS = ("outlier_rows", "outlier_cols", "outlier_vals")

__all__ = ["LBF_MAGIC", "LBFFile", "PartInfo", "TensorInfo", "load", "save"]

#: The first 8 bytes of every LBF file (formats/LBF.md §2).
LBF_MAGIC = b"\x89LBF\r\n\x1a\n"

_NUMPY_TAGS: dict[np.dtype[Any], str] = {
    np.dtype(np.uint8): "u8",
    np.dtype(np.int8): "i8",
    np.dtype(np.uint16): "u16",
    np.dtype(np.int16): "i16",
    np.dtype(np.uint32): "u32",
    np.dtype(np.int32): "i32",
    np.dtype(np.uint64): "u64",
    np.dtype(np.int64): "i64",
    np.dtype(np.float32): "f32",
    np.dtype(np.float64): "f64",
}
_FLOAT_QTYPES = {"f32": np.float32, "f16": np.float16}
_SCALAR_DTYPES: dict[str, Any] = {t: d.type for d, t in _NUMPY_TAGS.items() if t not in ("i64", "f64")}


def _int_tag(v: int, key: str) -> str:
    if -(2**63) <= v < 2**63:
        return "i64"
    if 0 <= v < 2**64:
        return "u64"
    raise ParameterError(f"metadata {key!r}: integer {v} does not fit in 64 bits")


def _array_wire(v: Any, key: str) -> tuple[str, Any]:
    """A list/tuple/bytes/ndarray as the binding's (elem_tag, payload) pair."""
    if isinstance(v, bytes | bytearray):
        return "u8", np.frombuffer(bytes(v), dtype=np.uint8)
    if isinstance(v, np.ndarray):
        if v.ndim != 1:
            raise ShapeError(f"metadata {key!r}: arrays must be 1-D (nest lists for more), got shape {v.shape}")
        if v.dtype == np.bool_:
            return "bool", [bool(x) for x in v]
        tag = _NUMPY_TAGS.get(v.dtype.newbyteorder("="))
        if tag is None:
            raise TypeError(f"metadata {key!r}: numpy dtype {v.dtype} has no LBF type")
        return tag, np.ascontiguousarray(v, dtype=v.dtype.newbyteorder("="))
    items = list(v)
    if not items:
        return "i64", np.zeros(0, np.int64)
    if all(isinstance(x, bool | np.bool_) for x in items):
        return "bool", [bool(x) for x in items]
    if all(isinstance(x, int | np.integer) and not isinstance(x, bool) for x in items):
        tags = {_int_tag(int(x), key) for x in items}
        if tags == {"i64", "u64"} and any(int(x) < 0 for x in items):
            raise ParameterError(f"metadata {key!r}: integers span more than one 64-bit type")
        tag = "u64" if "u64" in tags else "i64"
        return tag, np.array([int(x) for x in items], dtype=np.uint64 if tag == "u64" else np.int64)
    if all(isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool) for x in items):
        return "f64", np.array(items, dtype=np.float64)
    if all(isinstance(x, str) for x in items):
        return "string", items
    if all(isinstance(x, list | tuple | np.ndarray | bytes | bytearray) for x in items):
        return "array", [_array_wire(x, key) for x in items]
    raise TypeError(f"metadata {key!r}: a list must hold one kind of value (bool, int, float, str or lists)")


def _value_wire(key: str, v: Any) -> tuple[str, str, Any]:
    """A Python value as the binding's (key, tag, value) triple, with the natural LBF type:
    bool, int (i64, or u64 above i64), float (f64), str, numpy scalars (their own type), lists,
    tuples, bytes and 1-D numpy arrays (arrays)."""
    if not isinstance(key, str):
        raise TypeError(f"metadata keys must be str, got {type(key).__name__}")
    if isinstance(v, bool | np.bool_):
        return key, "bool", bool(v)
    if isinstance(v, np.integer | np.floating):
        tag = _NUMPY_TAGS.get(v.dtype)
        if tag is None:
            raise TypeError(f"metadata {key!r}: numpy type {v.dtype} has no LBF type")
        return key, tag, v.item()
    if isinstance(v, int):
        return key, _int_tag(v, key), v
    if isinstance(v, float):
        return key, "f64", v
    if isinstance(v, str):
        return key, "string", v
    if isinstance(v, list | tuple | bytes | bytearray | np.ndarray):
        return key, "array", _array_wire(v, key)
    if isinstance(v, dict):
        raise TypeError(f"metadata {key!r}: dicts are not a metadata type; store JSON text (json.dumps) instead")
    raise TypeError(f"metadata {key!r}: unsupported value type {type(v).__name__}")


def _from_wire(type_name: str, v: Any) -> Any:
    """A value from the binding as the Python value `save` would store with the same type: i64,
    f64, bool and string as Python scalars, other widths as numpy scalars (np.uint32, np.float32,
    ...), arrays as numpy arrays or lists."""
    if type_name.startswith("array"):
        return _from_array_wire(v)
    if type_name in _SCALAR_DTYPES:
        return _SCALAR_DTYPES[type_name](v)
    return v


def _from_array_wire(w: tuple[str, Any]) -> Any:
    tag, payload = w
    if tag == "array":
        return [_from_array_wire(x) for x in payload]
    return payload


def _mapped_from(arr: npt.NDArray[Any]) -> str | None:
    """The path of the LBF file an array is a view of, if any."""
    base: Any = arr
    while base is not None:
        if isinstance(base, _core.MapOwner):
            return str(base.path)
        base = getattr(base, "base", None)
    return None


class LBFWriter:
    """Writes an LBF file tensor by tensor: only the tensor being added is in memory.

    >>> import numpy as np, tempfile, os, lowbit
    >>> path = os.path.join(tempfile.mkdtemp(), "m.lbf")
    >>> with lowbit.LBFWriter(path, metadata={"note": "hi"}) as w:
    ...     w.add("norm", np.ones(4, np.float32))
    >>> lowbit.load(path).metadata["note"]
    'hi'

    Args:
        path: destination; replaced only once the new file is complete and fsynced (the data
            goes to an unnamed temporary file in the destination folder meanwhile).
        metadata: as for `save`; converted (and checked) here, written by `finish`.
        inputs: files the tensors are read from; the destination may not be one of them (the
            same file under another name included). Views from `load` are detected by `add`.

    Leaving a `with` block normally calls `finish()`; leaving it by an exception (Ctrl-C
    included) calls `abort()`, which leaves the destination as it was.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        metadata: Mapping[str, Any] | None = None,
        inputs: Iterable[str | os.PathLike[str]] = (),
    ) -> None:
        self._meta = [("lbf.writer", "string", f"lowbit {_core.__version__}")]
        for k, v in (metadata or {}).items():
            if k == "lbf.writer":
                continue
            if isinstance(k, str) and k.startswith("lbf."):
                raise ParameterError(f"metadata key {k!r}: the lbf.* keys are reserved for the format")
            self._meta.append(_value_wire(k, v))
        self._path = os.fspath(path)
        self._inputs = sorted({os.fspath(p) for p in inputs})
        self._w: _core.LbfWriter | None = _core.LbfWriter(self._path, self._inputs)

    def _writer(self) -> _core.LbfWriter:
        if self._w is None:
            raise ClosedError("this LBFWriter is finished or aborted")
        return self._w

    def add(self, name: str, tensor: QTensor | npt.NDArray[Any]) -> None:
        """Append one tensor (a `QTensor`, or a float32/float16 numpy array of any shape) and
        write its bytes. Raises as `save` does; after an I/O error the writer refuses to go on."""
        w = self._writer()
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {type(name).__name__}")
        if not isinstance(tensor, QTensor | np.ndarray):
            raise TypeError(f"tensor {name!r}: expected a QTensor or numpy array, got {type(tensor).__name__}")
        src = _mapped_from(tensor.data if isinstance(tensor, QTensor) else tensor)
        if src is not None and os.path.exists(self._path) and os.path.samefile(src, self._path):
            raise ParameterError(f"tensor {name!r} is a view of {src}, the file being replaced; save elsewhere")
        if isinstance(tensor, QTensor):
            parts = [("data", tensor.data.reshape(-1))]
            if tensor.perm is not None:
                parts.append(("perm", tensor.perm.astype("<u4", copy=False).view(np.uint8)))
            if tensor.outliers is not None:
                row_ptr, cols, vals = tensor.outliers
                parts.append(("outlier_rows", row_ptr.astype("<u8", copy=False).view(np.uint8)))
                parts.append(("outlier_cols", cols.astype("<u4", copy=False).view(np.uint8)))
                parts.append(("outlier_vals", vals.astype("<f2", copy=False).view(np.uint8)))
            if tensor.act is not None:
                parts.append(("act_quant", tensor.act._to_bytes()))
            w.add_tensor(name, tensor.qtype, list(tensor.shape), parts, tensor.group_size, tensor.symmetric)
            return
        qtype = {np.dtype(v): k for k, v in _FLOAT_QTYPES.items()}.get(tensor.dtype.newbyteorder("="))
        if qtype is None:
            raise TypeError(
                f"tensor {name!r}: numpy arrays are stored as float32 or float16, got {tensor.dtype}; "
                "convert explicitly or quantize it"
            )
        if tensor.ndim == 0:
            raise ShapeError(f"tensor {name!r} is a 0-d scalar: store it as metadata")
        native = np.ascontiguousarray(tensor, dtype=tensor.dtype.newbyteorder("="))
        w.add_tensor(name, qtype, list(tensor.shape), [("data", native.reshape(-1).view(np.uint8))])

    def finish(self) -> None:
        """Write the index and metadata, fsync, and move the file into place."""
        w = self._writer()
        self._w = None
        try:
            w.finish(self._meta)
        except BaseException:
            w.abort()
            raise

    def abort(self) -> None:
        """Discard everything written; the destination is left as it was. Idempotent."""
        if self._w is not None:
            self._w.abort()
            self._w = None

    def __enter__(self) -> LBFWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None and self._w is not None:
            self.finish()
        else:
            self.abort()


def save(
    path: str | os.PathLike[str],
    tensors: Mapping[str, QTensor | npt.NDArray[Any]],
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write `tensors` and `metadata` to an LBF file at `path`, atomically (see `LBFWriter` to
    write tensor by tensor).

    Args:
        path: destination; replaced only once the new file is complete and fsynced. A file the
            tensors are mapped from (views from `load`) is refused as a destination.
        tensors: name → `QTensor` (stored in its qtype, shape (rows, cols)) or a numpy float32 /
            float16 array of any shape (stored as f32 / f16; bfloat16 via
            `quantize(x, "bf16")`).
        metadata: key → bool, int, float, str, numpy scalar, bytes, list/tuple (homogeneous,
            nested up to 4 deep) or 1-D numpy array. Python ints are stored as i64 (u64 when
            larger), floats as f64, numpy scalars and arrays in their own type. Keys starting
            with `lbf.` are reserved; `lbf.writer` is set to this lowbit (a given one, e.g. from
            another file's metadata, is replaced). `LBFFile.metadata` gives values back in a form
            that `save` stores with the same types, so metadata can be copied between files.

    Raises:
        TypeError: a tensor or value of an unsupported type.
        ShapeError: a tensor that does not fit its type (checked again by the writer).
        ParameterError: invalid, duplicate or reserved names; the destination is an input.
        OSError: the destination folder is missing or not writable, or the disk is full. In
            every error case (and on Ctrl-C) the destination is left as it was.
    """
    inputs = set()
    for t in tensors.values():
        if isinstance(t, QTensor | np.ndarray) and (src := _mapped_from(t.data if isinstance(t, QTensor) else t)):
            inputs.add(src)
    with LBFWriter(path, metadata=metadata, inputs=inputs) as w:
        for name, t in tensors.items():
            w.add(name, t)


@dataclass(frozen=True)
class PartInfo:
    """One stored part of a tensor: `kind` ("data", "perm", "outlier_rows", ...), absolute
    byte `offset`, `length` in bytes, and its CRC-32."""

    kind: str
    offset: int
    length: int
    crc32: int


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's index entry: `shape` as stored (outermost first; the last dimension is the
    row length), `qtype` the canonical type name, `nbytes` all parts counted."""

    name: str
    qtype: str
    shape: tuple[int, ...]
    group_size: int | None
    symmetric: bool | None
    parts: tuple[PartInfo, ...]

    @property
    def numel(self) -> int:
        """Number of values."""
        return int(np.prod(self.shape, dtype=object))

    @property
    def nbytes(self) -> int:
        """Bytes stored, all parts counted."""
        return sum(p.length for p in self.parts)

    @property
    def bits_per_weight(self) -> float:
        """8 × nbytes / numel (0 for an empty tensor)."""
        return 8.0 * self.nbytes / self.numel if self.numel else 0.0

    @property
    def row_layout(self) -> dict[str, tuple[int, int]] | None:
        """Group-affine tensors: the byte ranges `[start, end)` of the codes, f16 scales and
        packed zeros inside each row of the `data` part (`formats/LBF.md` §5; zeros is empty
        when symmetric). None for the other types, whose rows are whole blocks."""
        if self.group_size is None:
            return None
        bits = int(self.qtype.split("-")[0][3:])
        cols = self.shape[-1]
        groups = -(-cols // (self.group_size or cols)) if cols else 0
        codes = cols * bits // 8
        scales = codes + 2 * groups
        zeros = scales + (0 if self.symmetric else -(-groups * bits // 8))
        return {"codes": (0, codes), "scales": (codes, scales), "zeros": (scales, zeros)}


class LBFFile(Mapping[str, "QTensor | npt.NDArray[Any]"]):
    """An open LBF file: a read-only mapping of tensor name → `QTensor` (quantized and bf16
    tensors, shape (rows, cols)) or numpy array (f32/f16 tensors, their stored shape). Both are
    zero-copy, read-only views of the memory-mapped file.

    A tensor's checksums are verified the first time it is read (`ChecksumError` if they do not
    match); `verify()` checks all of them. Views stay valid after `close()` (they keep the map
    alive); reading new tensors from a closed file raises `ClosedError`. Any number of threads
    may read at once. Use as a context manager, or call `close()`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.fspath(path)
        self._reader: Any = _core.LbfReader(self._path)
        self._header: dict[str, Any] = self._reader.header()
        meta = self._reader.metadata()
        self._types: dict[str, str] = {k: t for k, t, _ in meta}
        self._metadata: dict[str, Any] = {k: _from_wire(t, v) for k, t, v in meta}
        self._infos: dict[str, TensorInfo] = {}
        for name, qtype, g, s, dims, parts in self._reader.tensors():
            self._infos[name] = TensorInfo(
                name, qtype, tuple(dims), g, s, tuple(PartInfo(k, o, n, c) for k, o, n, c in parts)
            )

    @property
    def path(self) -> str:
        """The file's path."""
        return self._path

    @property
    def header(self) -> dict[str, Any]:
        """The fixed header's fields (`version`, `index_offset`, `file_len`, ...)."""
        return dict(self._header)

    @property
    def metadata(self) -> dict[str, Any]:
        """Key → value: Python int/float/bool/str for i64/f64/bool/string, numpy scalars for the
        other widths (np.uint32, np.float32, ...), numpy arrays for numeric arrays, lists for
        bool, string and nested arrays, bytes for a type from a newer format version. Passing it
        to `save` stores the same types, except that an empty list has no element type (saved
        as array[i64]) and f32 values pass through Python floats (a signalling NaN comes back
        quiet)."""
        return dict(self._metadata)

    @property
    def metadata_types(self) -> dict[str, str]:
        """Key → LBF type name (`"u32"`, `"string"`, `"array[f32]"`)."""
        return dict(self._types)

    @property
    def tensors(self) -> list[TensorInfo]:
        """The index entries, in file order."""
        return list(self._infos.values())

    def info(self, name: str) -> TensorInfo:
        """The index entry of a tensor (`NotFoundError` if absent)."""
        try:
            return self._infos[name]
        except KeyError:
            raise NotFoundError(f"no tensor named {name!r}") from None

    @property
    def closed(self) -> bool:
        """Whether `close()` was called."""
        return bool(self._reader.closed)

    def parts(self, name: str) -> dict[str, npt.NDArray[np.uint8]]:
        """Every stored part of a tensor as a read-only uint8 view, by kind name; the checksums
        and the perm/outlier/act_quant contents are verified first (once)."""
        self.info(name)
        return dict(self._reader.parts(name))

    def __getitem__(self, name: str) -> QTensor | npt.NDArray[Any]:
        info = self.info(name)
        parts = self.parts(name)  # parts of a kind this version does not know are refused here
        data = parts["data"]
        if info.qtype in _FLOAT_QTYPES and len(parts) == 1:  # a float tensor with a sidecar is a QTensor
            return data.view(_FLOAT_QTYPES[info.qtype]).reshape(info.shape)
        cols = info.shape[-1]
        rows = int(np.prod(info.shape[:-1], dtype=np.int64))
        perm = parts["perm"].view("<u4").astype(np.uint32, copy=False) if "perm" in parts else None
        act = ActQuant._from_bytes(parts["act_quant"]) if "act_quant" in parts else None
        outl = None
        if "outlier_rows" in parts:  # the reader checked them (all three, and their content)
            ptr, ocols, ovals = (parts[k].view(d) for k, d in zip(_OUTLIER_PARTS, ("<u8", "<u4", "<f2"), strict=True))
            outl = Outliers(ptr.astype(np.uint64, copy=False), ocols.astype(np.uint32, copy=False), ovals)
        return QTensor._view(info.qtype, (rows, cols), data, info.group_size, info.symmetric, perm, act, outl)

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    def __len__(self) -> int:
        return len(self._infos)

    def __contains__(self, name: object) -> bool:
        return name in self._infos

    def _typed(self, key: str, expected: str, ok: Any) -> Any:
        if key not in self._metadata:
            raise NotFoundError(f"no metadata key {key!r}")
        v = self._metadata[key]
        if not ok(self._types[key]):
            raise MetadataTypeError(f"metadata {key!r} is {self._types[key]}, not {expected}")
        return v

    def get_str(self, key: str) -> str:
        """A string value (`MetadataTypeError` for another type, `NotFoundError` if absent)."""
        return str(self._typed(key, "string", lambda t: t == "string"))

    def get_int(self, key: str) -> int:
        """An integer value of any width."""
        return int(self._typed(key, "an integer", lambda t: t[0] in "ui" and t[1:].isdigit()))

    def get_float(self, key: str) -> float:
        """An f32 or f64 value."""
        return float(self._typed(key, "a float", lambda t: t in ("f32", "f64")))

    def get_bool(self, key: str) -> bool:
        """A bool value."""
        return bool(self._typed(key, "bool", lambda t: t == "bool"))

    def get_array(self, key: str) -> npt.NDArray[Any] | list[Any]:
        """An array value (numpy array for numeric elements, list otherwise)."""
        v: npt.NDArray[Any] | list[Any] = self._typed(key, "an array", lambda t: t.startswith("array"))
        return v

    def verify(self) -> None:
        """Check every tensor's checksums (in parallel, GIL released); `ChecksumError` listing
        every tensor that fails."""
        bad = self._reader.verify()
        if bad:
            lines = "\n".join(f"  {msg}" for _, msg in bad)
            raise ChecksumError(f"{self._path}: {len(bad)} tensor(s) fail their checksum:\n{lines}", 0)

    def close(self) -> None:
        """Release this handle (views already handed out stay valid)."""
        self._reader.close()

    def __enter__(self) -> LBFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self)} tensors, {len(self._metadata)} metadata keys"
        return f"LBFFile({self._path!r}, {state})"


def load(path: str | os.PathLike[str]) -> LBFFile:
    """Open an LBF file: the header, metadata and index are read and validated now (`FormatError`,
    `VersionError` or `ChecksumError` if anything is wrong, `OSError` if it cannot be opened);
    tensor data is mapped, not read, until used."""
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    return LBFFile(path)
