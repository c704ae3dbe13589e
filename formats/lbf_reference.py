"""Reference reader and writer of LBF 1.3 (formats/LBF.md), pure Python, standard library only.

This is the executable form of the spec and a test oracle for lowbit's Rust implementation: it
favours plainness over speed and checks everything §7 lists. Section numbers refer to LBF.md.

Metadata values are ``TypedValue`` pairs ``(type_name, python_value)`` so that the exact LBF type
round-trips:

* scalars: ``("u8", 255)`` … ``("i64", -1)`` (int), ``("f32", 1.5)``/``("f64", x)`` (float; NaN
  bit patterns, signalling ones included, are preserved), ``("bool", True)``, ``("string", "x")``;
* arrays: ``("array", (element_type, elements))``, e.g. ``("array", ("u8", [1, 2]))``. When the
  element type is ``"array"``, each element is itself an ``(element_type, elements)`` pair:
  ``("array", ("array", [("i64", [1]), ("i64", [])]))``;
* a value of a type this reader does not know (only accepted in files of a newer minor version,
  §9): ``("unknown", UnknownValue(type_id, raw_bytes))``.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from math import prod
from typing import BinaryIO, TypeAlias

MAGIC = b"\x89LBF\r\n\x1a\n"
MAJOR, MINOR = 1, 3
BYTE_ORDER = 0x0A0B0C0D
HEADER_SIZE = 64
ALIGN = 64
U64_MAX = 2**64 - 1
MAX_DEPTH = 4
MAX_KEY_BYTES, MAX_NAME_BYTES = 256, 512
# §3: magic, major, minor, byte_order, index_offset, index_len, n_metadata, n_tensors, file_len, flags, header_crc
HEADER = struct.Struct("<8sHHIQQQQQII")
PART = struct.Struct("<IIQQ")  # kind, crc32, offset, length

# §4 value types: name -> (id, struct format or "" for the variable-length ones)
VALUE_TYPES: dict[str, tuple[int, str]] = {
    "u8": (0, "<B"), "i8": (1, "<b"), "u16": (2, "<H"), "i16": (3, "<h"),
    "u32": (4, "<I"), "i32": (5, "<i"), "u64": (6, "<Q"), "i64": (7, "<q"),
    "f32": (8, "<I"), "f64": (9, "<Q"), "bool": (10, "<B"), "string": (11, ""), "array": (12, ""),
}  # fmt: skip
VALUE_TYPE_NAMES = {tid: name for name, (tid, _) in VALUE_TYPES.items()}
INT_TYPES = {"u8", "i8", "u16", "i16", "u32", "i32", "u64", "i64"}


@dataclass(frozen=True)
class UnknownValue:
    """A metadata value of a type unknown to this 1.3 reader (newer-minor files only)."""

    type_id: int
    raw: bytes


Scalar: TypeAlias = int | float | bool | str
ArrayValue: TypeAlias = tuple[str, Sequence[Scalar] | Sequence["ArrayValue"]]
TypedValue: TypeAlias = tuple[str, Scalar | ArrayValue | UnknownValue]


@dataclass(frozen=True)
class QType:
    """§5 storage type: ``bits`` is set for the group-affine types (block = 8 values / bits bytes);
    ``tail`` for the ragged k-types: bytes of a final partial block of u units of 32 values =
    ``tail[0] * u + tail[1]``; ``dq`` (value bits) for the ``-dq`` types: super-blocks of 256 values (16
    groups of 16), the last holding the ``(cols mod 256) / 16`` remaining groups; ``minor``: the minor
    version that introduced the type."""

    id: int
    name: str
    block_values: int
    block_bytes: int
    bits: int = 0
    tail: tuple[int, int] | None = None
    dq: int = 0
    minor: int = 0


QTYPES: dict[int, QType] = {
    q.id: q
    for q in [
        QType(0, "f32", 1, 4), QType(1, "f16", 1, 2), QType(2, "bf16", 1, 2), QType(3, "q8_0", 32, 34),
        QType(4, "q4_0", 32, 18), QType(5, "q4_1", 32, 20), QType(6, "q5_0", 32, 22), QType(7, "q5_1", 32, 24),
        QType(8, "q2_k", 256, 84), QType(9, "q3_k", 256, 110), QType(10, "q4_k", 256, 144),
        QType(11, "q5_k", 256, 176), QType(12, "q6_k", 256, 210), QType(13, "iq4_nl", 32, 18),
        QType(14, "int2", 8, 2, 2), QType(15, "int3", 8, 3, 3), QType(16, "int4", 8, 4, 4), QType(17, "int8", 8, 8, 8),
        QType(18, "q2_kr", 256, 84, tail=(10, 4), minor=1), QType(19, "q3_kr", 256, 110, tail=(14, 2), minor=1),
        QType(20, "q4_kr", 256, 144, tail=(18, 4), minor=1), QType(21, "q5_kr", 256, 176, tail=(22, 4), minor=1),
        QType(22, "q6_kr", 256, 210, tail=(26, 2), minor=1),
        QType(23, "int2-g16-dq", 256, 78, dq=2, minor=3), QType(24, "int3-g16-dq", 256, 112, dq=3, minor=3),
        QType(25, "int4-g16-dq", 256, 146, dq=4, minor=3),
    ]
}  # fmt: skip
QTYPE_BY_NAME = {q.name: q for q in QTYPES.values()}
GROUP_SIZES = (0, 32, 64, 128, 256)
PART_DATA, PART_PERM, PART_OUTLIER_ROWS, PART_OUTLIER_COLS, PART_OUTLIER_VALS, PART_ACT_QUANT = 0, 1, 2, 3, 4, 5
PART_NAMES = {0: "data", 1: "perm", 2: "outlier_rows", 3: "outlier_cols", 4: "outlier_vals", 5: "act_quant"}
PART_MINOR = {PART_ACT_QUANT: 2}  # the minor version that introduced a part kind (§9); 0 if absent
# §5 act_quant: u32 mode (ACT_STATIC: finite f32 step > 0; ACT_DYNAMIC: step +0.0), on int8-row-sym rows ≤ 2^17
ACT_QUANT = struct.Struct("<If")
ACT_STATIC, ACT_DYNAMIC = 1, 2
ACT_MAX_COLS = 1 << 17


class LBFRefError(ValueError):
    """Any violation of LBF.md; the message names the byte offset where it was found."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        self.offset = offset
        super().__init__(message if offset is None else f"{message} (at byte offset {offset})")


@dataclass
class RefTensor:
    """A tensor to write: parts are ``(kind, bytes)``, in increasing kind order."""

    name: str
    qtype: str
    dims: tuple[int, ...]
    parts: list[tuple[int, bytes]]
    group_size: int = 0
    symmetric: bool = False


@dataclass(frozen=True)
class RefPart:
    kind: int
    crc: int
    offset: int
    length: int


@dataclass
class RefTensorEntry:
    """A tensor entry as read; ``qtype`` is None for an id unknown to this reader (newer minor)."""

    name: str
    qtype_id: int
    qtype: str | None
    group_size: int
    flags: int
    dims: tuple[int, ...]
    parts: list[RefPart]
    parts_offset: int = 0  # file offset of the first part record, for error messages

    @property
    def symmetric(self) -> bool:
        return bool(self.flags & 1)

    @property
    def rows(self) -> int:
        return prod(self.dims[:-1])

    @property
    def cols(self) -> int:
        return self.dims[-1]


@dataclass
class RefFile:
    major: int
    minor: int
    byte_order: int
    index_offset: int
    index_len: int
    n_metadata: int
    n_tensors: int
    file_len: int
    flags: int
    header_crc: int
    metadata: list[tuple[str, TypedValue]] = field(default_factory=list)
    tensors: list[RefTensorEntry] = field(default_factory=list)


def align64(x: int) -> int:
    return (x + ALIGN - 1) // ALIGN * ALIGN


# ---------------------------------------------------------------------------------------- sizes (§5)


def row_bytes(qtype: QType, cols: int, group_size: int, symmetric: bool) -> int:
    """Bytes of one row of ``cols`` values. Group-affine: codes, f16 scales, zeros (asymmetric).
    Ragged k-types: the full blocks, then a tail of ``ceil((cols % 256) / 32)`` units (if any). ``-dq`` types:
    super-blocks of n_g groups of 16 take ``4 + ceil(3 n_g / 8) + ceil(b n_g / 8) + 2 b n_g`` bytes."""
    if qtype.dq:
        if cols % 16:
            raise LBFRefError(f"{qtype.name}: cols {cols} is not a multiple of 16")
        b, n_g = qtype.dq, cols % 256 // 16
        tail = 4 + -(-3 * n_g // 8) + -(-b * n_g // 8) + 2 * b * n_g if n_g else 0
        return cols // 256 * qtype.block_bytes + tail
    if qtype.tail:
        units = -(-(cols % qtype.block_values) // 32)
        tail = qtype.tail[0] * units + qtype.tail[1] if units else 0
        return cols // qtype.block_values * qtype.block_bytes + tail
    if cols % qtype.block_values:
        raise LBFRefError(f"{qtype.name}: cols {cols} is not a multiple of the block size {qtype.block_values}")
    if not qtype.bits:
        return cols // qtype.block_values * qtype.block_bytes
    group = group_size or cols
    n_groups = -(-cols // group) if group else 0  # a row of 0 columns has no group
    zeros = 0 if symmetric else -(-n_groups * qtype.bits // 8)
    return cols * qtype.bits // 8 + 2 * n_groups + zeros


def data_length(qtype: QType, dims: tuple[int, ...], group_size: int, symmetric: bool) -> int:
    """Length of the data part (kind 0): ``rows × row_bytes``."""
    return prod(dims[:-1]) * row_bytes(qtype, dims[-1], group_size, symmetric)


# ------------------------------------------------------------------------------- value encoding (§4)


def _f32_bits(x: float) -> int:
    """binary32 bits of x; a NaN keeps its sign and the top 23 bits of its binary64 payload."""
    if x != x:
        d: int = struct.unpack("<Q", struct.pack("<d", x))[0]
        payload = (d >> 29) & 0x7FFFFF
        return (d >> 63) << 31 | 0x7F800000 | (payload or 0x400000)
    try:
        bits: int = struct.unpack("<I", struct.pack("<f", x))[0]
    except OverflowError as e:
        raise LBFRefError(f"f32 value {x!r} out of range") from e
    return bits


def _f32_from_bits(bits: int) -> float:
    if bits & 0x7F800000 == 0x7F800000 and bits & 0x7FFFFF:  # NaN: widen exactly, payload kept
        d = (bits >> 31) << 63 | 0x7FF << 52 | (bits & 0x7FFFFF) << 29
        return float(struct.unpack("<d", struct.pack("<Q", d))[0])
    return float(struct.unpack("<f", struct.pack("<I", bits))[0])


def float_bits(type_name: str, x: float) -> int:
    """The stored bits of an f32 or f64 value (used for exact comparisons and JSON)."""
    bits: int = _f32_bits(x) if type_name == "f32" else struct.unpack("<Q", struct.pack("<d", x))[0]
    return bits


def float_from_bits(type_name: str, bits: int) -> float:
    return _f32_from_bits(bits) if type_name == "f32" else float(struct.unpack("<d", struct.pack("<Q", bits))[0])


def _encode_string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _encode_element(type_name: str, v: object, depth: int) -> bytes:
    if type_name == "string":
        if not isinstance(v, str):
            raise LBFRefError(f"string value expected, got {v!r}")
        return _encode_string(v)
    if type_name == "array":
        if not (isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], (list, tuple))):
            raise LBFRefError(f"array value must be (element_type, [elements]), got {v!r}")
        elem_type, elements = v
        if elem_type not in VALUE_TYPES:
            raise LBFRefError(f"unknown array element type {elem_type!r}")
        if elem_type == "array" and depth + 1 >= MAX_DEPTH:  # this array is level depth + 1
            raise LBFRefError(f"array nesting deeper than {MAX_DEPTH}")
        out = struct.pack("<IQ", VALUE_TYPES[elem_type][0], len(elements))
        return out + b"".join(_encode_element(elem_type, e, depth + 1) for e in elements)
    if type_name not in VALUE_TYPES:
        raise LBFRefError(f"unknown value type {type_name!r}")
    if type_name == "bool":
        if not isinstance(v, bool):
            raise LBFRefError(f"bool value expected, got {v!r}")
    elif type_name in INT_TYPES:
        if not isinstance(v, int) or isinstance(v, bool):
            raise LBFRefError(f"{type_name} value expected, got {v!r}")
    elif not isinstance(v, (float, int)) or isinstance(v, bool):
        raise LBFRefError(f"{type_name} value expected, got {v!r}")
    else:
        v = float_bits(type_name, float(v))
    try:
        return struct.pack(VALUE_TYPES[type_name][1], v)
    except struct.error as e:
        raise LBFRefError(f"{type_name} value {v!r} out of range") from e


def encode_value(value: TypedValue) -> tuple[int, bytes]:
    """(value_type id, value bytes) of a typed metadata value."""
    raw = _encode_element(value[0], value[1], 0)  # refuses unknown types
    return VALUE_TYPES[value[0]][0], raw


def value_to_json(value: TypedValue) -> object:
    """JSON form used by vectors.json: floats as hex bits ("0x7fc00001"), arrays as
    ``{"element_type": t, "elements": [...]}`` with nested arrays in the same form."""

    def conv(type_name: str, v: object) -> object:
        if type_name in ("f32", "f64"):
            assert isinstance(v, float)
            return f"0x{float_bits(type_name, v):0{8 if type_name == 'f32' else 16}x}"
        if type_name == "array":
            assert isinstance(v, tuple)
            return {"element_type": v[0], "elements": [conv(v[0], e) for e in v[1]]}
        if isinstance(v, UnknownValue):
            return {"type_id": v.type_id, "raw": v.raw.hex()}
        return v

    return conv(value[0], value[1])


def value_from_json(type_name: str, j: object) -> TypedValue:
    """Inverse of value_to_json."""

    def conv(t: str, v: object) -> object:
        if t in ("f32", "f64"):
            assert isinstance(v, str)
            return float_from_bits(t, int(v, 16))
        if t == "array":
            assert isinstance(v, dict)
            return (v["element_type"], [conv(v["element_type"], e) for e in v["elements"]])
        return v

    return (type_name, conv(type_name, j))  # type: ignore[return-value]


# ------------------------------------------------------------------------------------- writer (§2, §8)


def write_lbf(
    dest: str | os.PathLike[str] | BinaryIO | None,
    metadata: list[tuple[str, TypedValue]],
    tensors: list[RefTensor],
    *,
    check: bool = True,
) -> bytes:
    """Build the canonical LBF 1.x bytes (dense layout, zero padding, CRCs, header last), write them
    to ``dest`` (a path or a binary file; None: don't write) and return them. With ``check`` the
    result is read back with ``read_lbf`` and ``verify``, so invalid input is refused."""
    data = bytearray(HEADER_SIZE)  # the header is filled in last
    index = bytearray()
    for key, value in metadata:
        type_id, raw = encode_value(value)
        index += _encode_string(key) + struct.pack("<IQ", type_id, len(raw)) + raw
    for t in tensors:
        if t.qtype not in QTYPE_BY_NAME:
            raise LBFRefError(f"tensor {t.name!r}: unknown qtype {t.qtype!r}")
        index += _encode_string(t.name)
        index += struct.pack("<IIII", QTYPE_BY_NAME[t.qtype].id, t.group_size, int(t.symmetric), len(t.dims))
        index += b"".join(struct.pack("<Q", d) for d in t.dims) + struct.pack("<I", len(t.parts))
        for kind, payload in t.parts:
            offset = align64(len(data))
            data += bytes(offset - len(data)) + payload
            index += PART.pack(kind, zlib.crc32(payload), offset, len(payload))
    index_offset = align64(len(data))
    data += bytes(index_offset - len(data)) + index
    # The lowest minor version that has every qtype and part kind used (§9), so older readers open what they can.
    minor = max((QTYPE_BY_NAME[t.qtype].minor for t in tensors), default=0)
    minor = max([minor] + [PART_MINOR.get(kind, 0) for t in tensors for kind, _ in t.parts])
    fields = (MAGIC, MAJOR, minor, BYTE_ORDER, index_offset, len(index), len(metadata), len(tensors), len(data), 0)
    head = HEADER.pack(*fields, 0)[:60]
    data[:HEADER_SIZE] = head + struct.pack("<I", zlib.crc32(head + index))
    out = bytes(data)
    if check:
        verify(out)
    if isinstance(dest, (str, os.PathLike)):
        with open(dest, "wb") as f:
            f.write(out)
    elif dest is not None:
        dest.write(out)
    return out


# ------------------------------------------------------------------------------------- reader (§7, §9)


class _Cursor:
    """Reads the index (file bytes ``pos .. end``); every length is checked before it is used."""

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data, self.pos, self.end = data, pos, end

    def left(self) -> int:
        return self.end - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.left():
            raise LBFRefError(f"{what}: {n} bytes needed, {self.left()} left in the index", self.pos)
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def unpack(self, fmt: str, what: str) -> int:
        value: int = struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]
        return value

    def text(self, what: str, max_bytes: int | None = None) -> str:
        """A string; with ``max_bytes``, a key or name: 1 to max_bytes bytes, no NUL."""
        at = self.pos
        n = self.unpack("<Q", f"{what} length")
        raw = self.take(n, what)
        if max_bytes is not None and not 0 < n <= max_bytes:
            raise LBFRefError(f"{what} must have 1 to {max_bytes} bytes, has {n}", at)
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise LBFRefError(f"{what} is not valid UTF-8", at) from e
        if max_bytes is not None and "\0" in s:
            raise LBFRefError(f"{what} {s!r} contains NUL", at)
        return s


class _Unknown(Exception):
    """An unknown value type inside an array: the whole metadata value is reported as unknown."""


# smallest encoding of one array element (§7.5): scalars their size, strings 8, arrays 12
_MIN_ELEMENT = {name: struct.calcsize(fmt) if fmt else 8 for name, (_, fmt) in VALUE_TYPES.items()} | {"array": 12}


def _decode_element(c: _Cursor, type_name: str, depth: int) -> object:
    at = c.pos
    if type_name == "string":
        return c.text("string value")
    if type_name == "array":
        elem_id = c.unpack("<I", "array element type")
        if elem_id not in VALUE_TYPE_NAMES:
            raise _Unknown(elem_id)
        elem = VALUE_TYPE_NAMES[elem_id]
        if elem == "array" and depth + 1 >= MAX_DEPTH:
            raise LBFRefError(f"array nesting deeper than {MAX_DEPTH}", at)
        count_at, count = c.pos, c.unpack("<Q", "array count")
        if count > c.left() // _MIN_ELEMENT[elem]:
            raise LBFRefError(f"array count {count} exceeds the bytes left", count_at)
        return (elem, [_decode_element(c, elem, depth + 1) for _ in range(count)])
    raw = c.unpack(VALUE_TYPES[type_name][1], f"{type_name} value")
    if type_name == "bool":
        if raw > 1:
            raise LBFRefError(f"bool byte must be 0 or 1, is {raw}", at)
        return bool(raw)
    return float_from_bits(type_name, raw) if type_name in ("f32", "f64") else raw


def _read_metadata(c: _Cursor, newer: bool) -> tuple[str, TypedValue]:
    key = c.text("metadata key", MAX_KEY_BYTES)
    type_at, type_id = c.pos, c.unpack("<I", "value type")
    len_at, value_len = c.pos, c.unpack("<Q", "value length")
    if value_len > c.left():
        raise LBFRefError(f"metadata {key!r}: value length {value_len} exceeds the bytes left", len_at)
    start = c.pos
    sub = _Cursor(c.data, start, start + value_len)
    c.pos += value_len
    unknown: TypedValue = ("unknown", UnknownValue(type_id, c.data[start : c.pos]))
    if type_id not in VALUE_TYPE_NAMES:
        if newer:
            return key, unknown
        raise LBFRefError(f"metadata {key!r}: unknown value type {type_id}", type_at)
    type_name = VALUE_TYPE_NAMES[type_id]
    try:
        value = _decode_element(sub, type_name, 0)
    except _Unknown as e:
        if newer:
            return key, unknown
        raise LBFRefError(f"metadata {key!r}: unknown array element type {e.args[0]}", start) from None
    if sub.pos != sub.end:
        raise LBFRefError(f"metadata {key!r}: value is {sub.pos - start} bytes, value_len says {value_len}", sub.pos)
    return key, (type_name, value)  # type: ignore[return-value]


def _read_tensor_entry(c: _Cursor, newer: bool) -> RefTensorEntry:
    name = c.text("tensor name", MAX_NAME_BYTES)
    qtype_at, qtype_id = c.pos, c.unpack("<I", "qtype")
    qtype = QTYPES.get(qtype_id)
    if qtype is None and not newer:
        raise LBFRefError(f"tensor {name!r}: unknown qtype id {qtype_id}", qtype_at)
    group_at, group_size = c.pos, c.unpack("<I", "group_size")
    flags_at, flags = c.pos, c.unpack("<I", "tensor flags")
    if qtype is not None:  # an unknown qtype defines its own group size and flags
        if group_size not in (GROUP_SIZES if qtype.bits else (0,)):
            raise LBFRefError(f"tensor {name!r}: group_size {group_size} invalid for {qtype.name}", group_at)
        if flags & ~(1 if qtype.bits else 0):
            raise LBFRefError(f"tensor {name!r}: flags 0x{flags:x} invalid for {qtype.name}", flags_at)
    ndims_at, n_dims = c.pos, c.unpack("<I", "n_dims")
    if not 1 <= n_dims <= 8:
        raise LBFRefError(f"tensor {name!r}: n_dims {n_dims} not in 1..8", ndims_at)
    dims_at = c.pos
    dims = tuple(c.unpack("<Q", "dim") for _ in range(n_dims))
    nparts_at, n_parts = c.pos, c.unpack("<I", "n_parts")
    if not 1 <= n_parts <= 8:
        raise LBFRefError(f"tensor {name!r}: n_parts {n_parts} not in 1..8", nparts_at)
    parts_at = c.pos
    parts = [RefPart(*PART.unpack(c.take(PART.size, "part"))) for _ in range(n_parts)]
    t = RefTensorEntry(name, qtype_id, qtype.name if qtype else None, group_size, flags, dims, parts, parts_at)
    kinds = [p.kind for p in parts]
    if kinds[0] != PART_DATA or any(a >= b for a, b in pairwise(kinds)):
        raise LBFRefError(f"tensor {name!r}: part kinds {kinds} must start with 0 and increase", parts_at)
    if not newer and kinds[-1] > PART_ACT_QUANT:
        raise LBFRefError(f"tensor {name!r}: unknown part kind {kinds[-1]}", parts_at)
    if len({2, 3, 4} & set(kinds)) not in (0, 3):
        raise LBFRefError(f"tensor {name!r}: outlier parts 2, 3 and 4 must come together", parts_at)
    if PART_PERM in kinds and qtype is not None and not qtype.bits:
        raise LBFRefError(f"tensor {name!r}: perm part on non-group-affine {qtype.name}", parts_at)
    if PART_ACT_QUANT in kinds and qtype is not None:
        _check_act_target(t, qtype, parts_at)
    # §7.7 sizes, with 64-bit limits
    rows, cols = t.rows, t.cols
    if rows * cols > U64_MAX:
        raise LBFRefError(f"tensor {name!r}: rows × cols overflows u64", dims_at)
    by_kind = {p.kind: p for p in parts}
    expected: dict[int, int] = {PART_PERM: 4 * cols, PART_OUTLIER_ROWS: 8 * (rows + 1), PART_ACT_QUANT: ACT_QUANT.size}
    if qtype is not None:
        try:
            expected[PART_DATA] = data_length(qtype, dims, group_size, bool(flags & 1))
        except LBFRefError as e:
            raise LBFRefError(f"tensor {name!r}: {e}", dims_at) from None
    if PART_OUTLIER_VALS in by_kind:
        nnz = by_kind[PART_OUTLIER_VALS].length // 2
        expected[PART_OUTLIER_VALS], expected[PART_OUTLIER_COLS] = 2 * nnz, 4 * nnz
    for i, p in enumerate(parts):
        want = expected.get(p.kind)
        if want is not None and (want > U64_MAX or p.length != want):
            at = parts_at + i * PART.size + 16
            raise LBFRefError(f"tensor {name!r}: {PART_NAMES[p.kind]} part is {p.length} bytes, must be {want}", at)
    return t


def _check_act_target(t: RefTensorEntry, qtype: QType, at: int) -> None:
    """§5: an act_quant part only on int8, symmetric, one group per row, no perm or outliers, cols ≤ 2^17."""
    one_group = t.group_size == 0 or t.group_size >= t.cols
    if not (qtype.name == "int8" and t.symmetric and one_group):
        what = f"{qtype.name} group_size {t.group_size} flags 0x{t.flags:x} on rows of {t.cols}"
        raise LBFRefError(f"tensor {t.name!r}: act_quant part needs int8, symmetric, one group per row, not {what}", at)
    if {p.kind for p in t.parts} & {PART_PERM, PART_OUTLIER_ROWS}:
        raise LBFRefError(f"tensor {t.name!r}: act_quant part cannot combine with perm or outlier parts", at)
    if t.cols > ACT_MAX_COLS:
        raise LBFRefError(f"tensor {t.name!r}: act_quant part needs cols ≤ {ACT_MAX_COLS}, has {t.cols}", at)


def _read_header(data: bytes) -> RefFile:
    if len(data) < HEADER_SIZE:
        raise LBFRefError(f"file is {len(data)} bytes, shorter than the 64-byte header", 0)
    magic, *fields = HEADER.unpack_from(data)
    h = RefFile(*fields)
    if magic != MAGIC:
        raise LBFRefError(f"bad magic {magic.hex()}", 0)
    if h.byte_order != BYTE_ORDER:
        swapped = h.byte_order == 0x0D0C0B0A
        raise LBFRefError("byte-swapped (big-endian) file" if swapped else f"bad byte order 0x{h.byte_order:08x}", 12)
    if h.major != MAJOR:
        raise LBFRefError(f"file is LBF {h.major}.{h.minor}, this reader reads LBF {MAJOR}.{MINOR}", 8)
    if h.minor <= MINOR and h.flags != 0:
        raise LBFRefError(f"header flags 0x{h.flags:x} must be 0", 56)
    if h.file_len != len(data):
        raise LBFRefError(f"header file_len {h.file_len} != real size {len(data)}", 48)
    if h.index_offset % ALIGN or h.index_offset < HEADER_SIZE:
        raise LBFRefError(f"index_offset {h.index_offset} not a multiple of 64 ≥ 64", 16)
    if h.index_offset + h.index_len != h.file_len:  # Python ints: no overflow, so this is the exact check
        raise LBFRefError(f"index_offset + index_len = {h.index_offset + h.index_len} != file_len {h.file_len}", 24)
    crc = zlib.crc32(data[:60] + data[h.index_offset :])
    if crc != h.header_crc:
        raise LBFRefError(f"header_crc 0x{h.header_crc:08x} != computed 0x{crc:08x}", 60)
    return h


def read_lbf(data: bytes) -> RefFile:
    """Parse and validate a whole LBF file (§7), without reading tensor data (see read_tensor)."""
    data = bytes(data)
    f = _read_header(data)
    newer = f.minor > MINOR
    c = _Cursor(data, f.index_offset, f.file_len)
    if f.n_metadata > c.left() // 21:
        raise LBFRefError(f"n_metadata {f.n_metadata} exceeds what the index can hold", 32)
    keys: set[str] = set()
    for _ in range(f.n_metadata):
        at = c.pos
        key, value = _read_metadata(c, newer)
        if key in keys:
            raise LBFRefError(f"duplicate metadata key {key!r}", at)
        keys.add(key)
        f.metadata.append((key, value))
    if f.n_tensors > c.left() // 61:
        raise LBFRefError(f"n_tensors {f.n_tensors} exceeds what the rest of the index can hold", 40)
    names: set[str] = set()
    for _ in range(f.n_tensors):
        at = c.pos
        t = _read_tensor_entry(c, newer)
        if t.name in names:
            raise LBFRefError(f"duplicate tensor name {t.name!r}", at)
        names.add(t.name)
        f.tensors.append(t)
    if c.left():
        raise LBFRefError(f"{c.left()} bytes follow the last index entry", c.pos)
    # §2/§7.8: the one dense layout
    pos = HEADER_SIZE
    for t in f.tensors:
        for j, p in enumerate(t.parts):
            at = t.parts_offset + j * PART.size + 8
            if p.offset != align64(pos):
                raise LBFRefError(f"tensor {t.name!r}: part {p.kind} at offset {p.offset}, must be {align64(pos)}", at)
            pos = p.offset + p.length
            if pos > f.index_offset:
                raise LBFRefError(f"tensor {t.name!r}: part {p.kind} ends at {pos}, past the data section", at)
    if f.index_offset != align64(pos):
        raise LBFRefError(f"index_offset {f.index_offset}, must be {align64(pos)} (end of the last part)", 16)
    return f


def _u(fmt: str, b: bytes) -> list[int]:
    return [int(x) for x in struct.unpack(f"<{len(b) // struct.calcsize(fmt)}{fmt}", b)]


def read_tensor(f: RefFile, data: bytes, i: int) -> dict[int, bytes]:
    """The parts of tensor ``i`` by kind, after checking their CRCs and the content of perm and the
    outlier and act_quant parts (§5, §6). Unknown qtypes or part kinds (newer minor) fail as unsupported."""
    t = f.tensors[i]
    if t.qtype is None or any(p.kind not in PART_NAMES for p in t.parts):
        raise LBFRefError(f"tensor {t.name!r}: unsupported qtype {t.qtype_id} or part kind", t.parts_offset)
    parts: dict[int, bytes] = {}
    for p in t.parts:
        b = bytes(data[p.offset : p.offset + p.length])
        if zlib.crc32(b) != p.crc:
            raise LBFRefError(f"tensor {t.name!r}: {PART_NAMES[p.kind]} part CRC mismatch", p.offset)
        parts[p.kind] = b
    at = {p.kind: p.offset for p in t.parts}
    if PART_PERM in parts and sorted(_u("I", parts[PART_PERM])) != list(range(t.cols)):
        raise LBFRefError(f"tensor {t.name!r}: perm is not a permutation of 0..{t.cols}", at[PART_PERM])
    if PART_OUTLIER_ROWS in parts:
        ptr, cols = _u("Q", parts[PART_OUTLIER_ROWS]), _u("I", parts[PART_OUTLIER_COLS])
        if ptr[0] != 0 or ptr[-1] != len(cols) or any(a > b for a, b in pairwise(ptr)):
            msg = f"tensor {t.name!r}: outlier row pointers are not a CSR of {len(cols)} values"
            raise LBFRefError(msg, at[PART_OUTLIER_ROWS])
        for r in range(t.rows):
            row = cols[ptr[r] : ptr[r + 1]]
            if any(col >= t.cols for col in row) or any(a >= b for a, b in pairwise(row)):
                msg = f"tensor {t.name!r}: outlier columns of row {r} not increasing and < {t.cols}"
                raise LBFRefError(msg, at[PART_OUTLIER_COLS] + 4 * ptr[r])
    if PART_ACT_QUANT in parts:
        act, at_step = parts[PART_ACT_QUANT], at[PART_ACT_QUANT] + 4
        mode, step = ACT_QUANT.unpack(act)
        if mode not in (ACT_STATIC, ACT_DYNAMIC):
            raise LBFRefError(f"tensor {t.name!r}: act_quant mode {mode} is not 1 (static) or 2 (dynamic)", at_step - 4)
        if mode == ACT_STATIC and not 0 < step < float("inf"):  # NaN fails too
            raise LBFRefError(f"tensor {t.name!r}: static act_quant step {step} is not finite and > 0", at_step)
        if mode == ACT_DYNAMIC and act[4:] != bytes(4):
            raise LBFRefError(f"tensor {t.name!r}: dynamic act_quant step {step} is not +0.0", at_step)
    return parts


def verify(data: bytes) -> RefFile:
    """read_lbf, then every tensor's parts (CRCs, content) and the zero padding between parts."""
    f = read_lbf(data)
    pos = HEADER_SIZE
    for i, t in enumerate(f.tensors):
        read_tensor(f, data, i)
        for p in t.parts:
            if any(data[pos : p.offset]):
                raise LBFRefError("non-zero padding before a part", pos)
            pos = p.offset + p.length
    if any(data[pos : f.index_offset]):
        raise LBFRefError("non-zero padding before the index", pos)
    return f


def extract_tensors(f: RefFile, data: bytes) -> list[RefTensor]:
    """The tensors of a read file in write_lbf's input form (so write_lbf(read) reproduces a file)."""
    out = []
    for t in f.tensors:
        parts = [(p.kind, bytes(data[p.offset : p.offset + p.length])) for p in t.parts]
        out.append(RefTensor(t.name, t.qtype or "", t.dims, parts, t.group_size, t.symmetric))
    return out
