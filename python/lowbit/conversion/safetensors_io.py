"""Strict safetensors I/O: a validating, memory-mapped reader and a streaming, atomic writer.

The container (https://huggingface.co/docs/safetensors): an 8-byte little-endian u64 header
length N, N bytes of UTF-8 JSON, then the data buffer. The JSON object maps each tensor name to
`{"dtype": str, "shape": [int, ...], "data_offsets": [begin, end]}` (byte offsets relative to the
buffer start) and may hold `"__metadata__"`, an object of str → str. Tensors are stored
C-contiguous, little-endian.

`SafetensorsFile` checks the whole header before any tensor is read: every field and type, that
the byte ranges tile the buffer exactly (sorted, no overlap, no hole, no trailing bytes) and that
each range holds numel × itemsize bytes. Problems raise `FormatError` naming the file, the tensor
and the byte offset in the file. `SafetensorsWriter` writes the header first, then each tensor as
it is given, into a temporary file next to the destination that is renamed into place by
`finish()`; nothing is left behind on error.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import tempfile
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NamedTuple

import numpy as np
import numpy.typing as npt

from ..errors import (
    ClosedError,
    DestinationExistsError,
    FormatError,
    InvalidValueError,
    NotFoundError,
    ParameterError,
    UnsupportedError,
)
from ._files import publish_file, unique_keys
from .source import release_pages

__all__ = ["MAX_DIM", "MAX_HEADER_BYTES", "SafetensorsFile", "SafetensorsWriter", "TensorEntry"]

# A header larger than this is refused before it is read: real headers are a few hundred bytes per
# tensor, so 100 MB (the cap of the reference implementation) is far beyond any model while
# keeping a hostile length field from making us allocate gigabytes.
MAX_HEADER_BYTES = 100_000_000
# Cap on each dimension and on the element count: far beyond any real tensor (2**48 f32 values
# are 1 PiB), so absurd shapes, including ones with a zero dimension, are refused up front.
MAX_DIM = 2**48

# Every dtype of the safetensors format, with its size in bits (sub-byte types are packed).
_DTYPE_BITS = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}
# Floating dtypes `load_f32` decodes: the numpy dtype each is stored as (BF16 as its raw bits).
_FLOAT_STORAGE: dict[str, np.dtype[Any]] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
}
# Dtypes `SafetensorsWriter` produces from float32 input.
_WRITABLE = ("F32", "F16", "BF16")
_ENTRY_FIELDS = frozenset({"dtype", "shape", "data_offsets"})
_META_KEY = "__metadata__"
_LEN = struct.Struct("<Q")


class TensorEntry(NamedTuple):
    """One tensor of the index: safetensors dtype name, shape (numpy order), size in bytes."""

    dtype: str
    shape: tuple[int, ...]
    nbytes: int


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class SafetensorsFile:
    """A safetensors file opened read-only and memory-mapped; validated on open.

    `tensors` maps each name to a `TensorEntry` in file (header) order, `metadata` is the
    `__metadata__` object (empty when absent). Use as a context manager or call `close()`.

    Raises `FormatError` (offset = byte position in the file) for any malformed header or
    layout, `OSError` when the file cannot be opened.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            entries, self.metadata, self._data_start, ranges = self._read_header(f, size)
            self.tensors: dict[str, TensorEntry] = entries
            self._ranges = ranges
            self._map: mmap.mmap | None = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def _fail(self, msg: str, offset: int, name: str | None = None) -> FormatError:
        where = f"tensor {name!r}: " if name is not None else ""
        return FormatError(f"{self.path}: {where}{msg} (at byte {offset})", offset)

    def _read_header(
        self, f: IO[bytes], size: int
    ) -> tuple[dict[str, TensorEntry], dict[str, str], int, dict[str, tuple[int, int]]]:
        if size < _LEN.size:
            raise self._fail(f"file of {size} bytes is too short for the 8-byte header length", 0)
        (n,) = _LEN.unpack(f.read(_LEN.size))
        if n > MAX_HEADER_BYTES:
            raise self._fail(f"header length {n} exceeds the cap of {MAX_HEADER_BYTES} bytes", 0)
        if _LEN.size + n > size:
            raise self._fail(f"header length {n} runs past the end of the {size}-byte file", 0)
        raw = f.read(n)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self._fail(f"header is not valid UTF-8 ({e.reason})", _LEN.size + e.start) from None
        try:
            header = json.loads(text, object_pairs_hook=unique_keys, parse_constant=_reject_constant)
        except json.JSONDecodeError as e:
            pos = _LEN.size + len(text[: e.pos].encode("utf-8"))
            raise self._fail(f"header is not valid JSON: {e.msg}", pos) from None
        except ValueError as e:  # duplicate keys, NaN/Infinity
            raise self._fail(f"header: {e}", _LEN.size) from None
        if not isinstance(header, dict):
            raise self._fail(f"header is a JSON {type(header).__name__}, not an object", _LEN.size)
        data_start = _LEN.size + n
        buf_len = size - data_start
        metadata = self._check_metadata(header.pop(_META_KEY, {}))
        entries: dict[str, TensorEntry] = {}
        ranges: dict[str, tuple[int, int]] = {}
        for name, spec in header.items():
            entries[name], ranges[name] = self._check_entry(name, spec, data_start, buf_len)
        covered = 0
        for name, (begin, end) in sorted(ranges.items(), key=lambda kv: kv[1]):
            if begin < covered:
                raise self._fail(f"data_offsets [{begin}, {end}] overlap the previous tensor", data_start + begin, name)
            if begin > covered:
                raise self._fail(
                    f"hole of {begin - covered} bytes before data_offsets [{begin}, {end}]", data_start + covered, name
                )
            covered = end
        if covered != buf_len:
            raise self._fail(
                f"{buf_len - covered} trailing bytes after the last tensor: the data buffer is not fully covered",
                data_start + covered,
            )
        return entries, metadata, data_start, ranges

    def _check_metadata(self, meta: object) -> dict[str, str]:
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise self._fail("__metadata__ must be an object of string values", _LEN.size)
        return meta

    def _check_entry(self, name: str, e: object, data_start: int, buf_len: int) -> tuple[TensorEntry, tuple[int, int]]:
        at = _LEN.size
        if not isinstance(e, dict):
            raise self._fail(f"entry is a JSON {type(e).__name__}, not an object", at, name)
        if set(e) != _ENTRY_FIELDS:
            unknown, missing = sorted(set(e) - _ENTRY_FIELDS), sorted(_ENTRY_FIELDS - set(e))
            raise self._fail(
                f"entry fields must be {sorted(_ENTRY_FIELDS)}: unknown {unknown}, missing {missing}", at, name
            )
        dtype, shape, offsets = e["dtype"], e["shape"], e["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _DTYPE_BITS:
            raise self._fail(f"unknown dtype {dtype!r} (known: {', '.join(_DTYPE_BITS)})", at, name)
        if not isinstance(shape, list) or not all(_is_int(d) and 0 <= d <= MAX_DIM for d in shape):
            raise self._fail(f"shape {shape!r} must be a list of integers in [0, 2**48]", at, name)
        numel = math.prod(shape)
        if numel > MAX_DIM:
            raise self._fail(f"shape {shape} has {numel} elements, more than the cap of 2**48", at, name)
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) and o >= 0 for o in offsets)):
            raise self._fail(f"data_offsets {offsets!r} must be two non-negative integers", at, name)
        begin, end = offsets
        if begin > end or end > buf_len:
            raise self._fail(
                f"data_offsets [{begin}, {end}] outside the {buf_len}-byte data buffer",
                data_start + min(begin, buf_len),
                name,
            )
        bits = numel * _DTYPE_BITS[dtype]
        if bits % 8 or bits // 8 != end - begin:
            raise self._fail(
                f"{end - begin} bytes for {numel} elements of {dtype} ({_DTYPE_BITS[dtype]} bits each, shape {shape})",
                data_start + begin,
                name,
            )
        return TensorEntry(dtype, tuple(shape), end - begin), (begin, end)

    def load_f32(self, name: str) -> npt.NDArray[np.float32]:
        """The tensor `name` (dtype F64, F32, F16 or BF16) as a new C-contiguous float32 array of
        its shape. F64 values are rounded to float32 (beyond its range: ±inf); F16 and BF16 convert
        exactly.

        Raises `NotFoundError` (unknown name), `UnsupportedError` (another dtype), `ClosedError`.
        """
        if name not in self.tensors:
            raise NotFoundError(f"{self.path}: no tensor {name!r}")
        entry = self.tensors[name]
        storage = _FLOAT_STORAGE.get(entry.dtype)
        if storage is None:
            raise UnsupportedError(
                f"{self.path}: tensor {name!r} has dtype {entry.dtype}; "
                f"only {', '.join(_FLOAT_STORAGE)} load as float32"
            )
        if self._map is None:
            raise ClosedError(f"{self.path} is closed")
        begin = self._data_start + self._ranges[name][0]
        count = entry.nbytes // storage.itemsize
        raw = np.frombuffer(self._map, storage, count, begin) if count else np.empty(0, storage)
        if entry.dtype == "BF16":
            wide = raw.astype(np.uint32)
            np.left_shift(wide, 16, out=wide)
            out = wide.view(np.float32)
        else:
            with np.errstate(over="ignore"):
                out = raw.astype(np.float32)
        del raw
        release_pages(self._map, begin, entry.nbytes)
        return out.reshape(entry.shape)

    def close(self) -> None:
        """Release the memory map (arrays returned by `load_f32` stay valid)."""
        if self._map is not None:
            self._map.close()
            self._map = None

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _discard(f: IO[bytes], tmp: str) -> None:
    """Close and delete a writer's temporary file (also run by the writer's finalizer)."""
    f.close()
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


def _to_bf16_bits(a: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]:
    """float32 → bfloat16 bit patterns, rounding to nearest, ties to even. NaNs stay NaN (the
    quiet bit is set so a payload held only in the dropped low bits cannot turn into ±Inf)."""
    u = a.view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return np.where(np.isnan(a), (u >> 16) | 0x40, rounded).astype(np.uint16)


class SafetensorsWriter:
    """Streaming writer of one safetensors file.

    `specs` lists every tensor as (name, dtype, shape) in the order they will be written; dtype is
    one of F32, F16, BF16. The header is written at once (padded with spaces to a multiple of
    8 bytes, as the reference implementation does), the data buffer follows in spec order. Call
    `write(name, array)` once per tensor, in order, with a float32 array of that shape (it is
    converted to the dtype: F16 with numpy's round-to-nearest-even, BF16 likewise), then
    `finish()`, which fsyncs and renames the temporary file to `path`.

    Used as a context manager, the writer finishes on a clean exit and aborts on an exception.
    Any exception inside `write`/`finish` (including KeyboardInterrupt), `abort()` or garbage
    collection of an unfinished writer deletes the temporary file; `path` is never half-written.

    Raises `ParameterError` (bad specs, metadata, name, order, shape or array dtype),
    `InvalidValueError` (a finite float32 value that overflows F16/BF16), `UnsupportedError` (a
    safetensors dtype this writer cannot produce), `DestinationExistsError` (`path` exists and
    `overwrite` is false), `ClosedError` (use after finish/abort), `OSError`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        specs: Sequence[tuple[str, str, Sequence[int]]],
        metadata: dict[str, str] | None = None,
        *,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        self._overwrite = overwrite
        self._specs = [self._check_spec(s) for s in specs]
        names = [s[0] for s in self._specs]
        if len(set(names)) != len(names):
            raise ParameterError(f"duplicate tensor names in specs: {sorted({n for n in names if names.count(n) > 1})}")
        if metadata is not None and not (
            isinstance(metadata, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
        ):
            raise ParameterError("metadata must be a dict of str → str")
        if self.path.exists() and not overwrite:
            raise DestinationExistsError(f"{self.path} exists (pass overwrite=True to replace it)")
        header: dict[str, Any] = {_META_KEY: metadata} if metadata else {}
        offset = 0
        for name, dtype, shape, nbytes in self._specs:
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        raw = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        if len(raw) > MAX_HEADER_BYTES:
            raise ParameterError(f"header of {len(raw)} bytes exceeds the cap of {MAX_HEADER_BYTES} bytes")
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self._file: IO[bytes] = os.fdopen(fd, "wb")
        self._finalizer = weakref.finalize(self, _discard, self._file, self._tmp)
        self._next = 0
        self._guard(lambda: self._file.write(_LEN.pack(len(raw)) + raw))

    @staticmethod
    def _check_spec(spec: tuple[str, str, Sequence[int]]) -> tuple[str, str, tuple[int, ...], int]:
        name, dtype, shape = spec
        if not isinstance(name, str) or name == _META_KEY:
            raise ParameterError(f"tensor name {name!r} must be a str other than {_META_KEY!r}")
        if dtype not in _WRITABLE:
            if dtype in _DTYPE_BITS:
                raise UnsupportedError(
                    f"tensor {name!r}: writing dtype {dtype} is not supported (use {', '.join(_WRITABLE)})"
                )
            raise ParameterError(f"tensor {name!r}: unknown dtype {dtype!r} (use {', '.join(_WRITABLE)})")
        dims = tuple(shape)
        if not all(_is_int(d) and 0 <= d <= MAX_DIM for d in dims) or math.prod(dims) > MAX_DIM:
            raise ParameterError(
                f"tensor {name!r}: shape {dims!r} must be integers in [0, 2**48], at most 2**48 elements"
            )
        return name, dtype, dims, math.prod(dims) * _DTYPE_BITS[dtype] // 8

    def _guard(self, step: Callable[[], object]) -> None:
        try:
            step()
        except BaseException:
            self.abort()
            raise

    def write(self, name: str, array: npt.NDArray[np.float32]) -> None:
        """Append tensor `name` (the next one in spec order): a float32 array of its shape, any
        memory layout. Converted to the spec's dtype; a finite value that overflows it raises."""
        if not self._finalizer.alive:
            raise ClosedError(f"{self.path}: writer is closed")
        self._guard(lambda: self._write(name, array))

    def _write(self, name: str, array: npt.NDArray[np.float32]) -> None:
        if self._next >= len(self._specs):
            raise ParameterError(f"{self.path}: tensor {name!r} is beyond the {len(self._specs)} tensors in specs")
        want, dtype, shape, _ = self._specs[self._next]
        if name != want:
            raise ParameterError(f"{self.path}: expected tensor {want!r} next (spec order), got {name!r}")
        if not isinstance(array, np.ndarray) or array.dtype != np.float32:
            got = (
                array.dtype if isinstance(array, np.ndarray) else f"{type(array).__module__}.{type(array).__qualname__}"
            )
            raise ParameterError(f"{self.path}: tensor {name!r} must be a float32 numpy array, got {got}")
        if array.shape != shape:
            raise ParameterError(f"{self.path}: tensor {name!r} has shape {array.shape}, specs say {shape}")
        a = np.ascontiguousarray(array, dtype="<f4")
        out: npt.NDArray[Any] = a
        if dtype == "F16":
            with np.errstate(over="ignore"):
                out = a.astype("<f2")
            inf = np.isinf(out)
        elif dtype == "BF16":
            out = _to_bf16_bits(a).astype("<u2", copy=False)
            inf = (out & 0x7FFF) == 0x7F80
        if out is not a and (bad := np.flatnonzero(inf & np.isfinite(a))).size:
            i = int(bad[0])
            raise InvalidValueError(
                f"{self.path}: tensor {name!r}: value {a.flat[i]} at flat index {i} overflows {dtype}", index=i
            )
        if out.size:  # write the array's own buffer, no copy (memoryview cannot cast empty shapes)
            self._file.write(out.data.cast("B"))
        self._next += 1

    def finish(self) -> Path:
        """Check every tensor was written, fsync, rename into place; returns `path`."""
        if not self._finalizer.alive:
            raise ClosedError(f"{self.path}: writer is closed")
        self._guard(self._finish)
        return self.path

    def _finish(self) -> None:
        if self._next != len(self._specs):
            missing = [s[0] for s in self._specs[self._next :]]
            raise ParameterError(f"{self.path}: {len(missing)} tensors not written: {missing[:5]}")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        publish_file(Path(self._tmp), self.path, self._overwrite)
        self._finalizer.detach()

    def abort(self) -> None:
        """Discard the temporary file; `path` is untouched. Idempotent."""
        self._finalizer()

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()
