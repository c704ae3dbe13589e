"""Strict safetensors I/O (`lowbit.conversion.safetensors_io`): a table of malformed files, round trips
against the official `safetensors` package, the writer's atomicity.

Malformed files are built byte by byte here with struct/json. Well-formed files come from the
official package (`safetensors.serialize`, `safetensors.numpy.save_file`), and our writer's output
is checked by the official parser (`safetensors.deserialize`, `load_file`); expected F16 values
come from numpy's casts and expected BF16 bits from gguf's numpy BF16 quantizer, never from the
code under test.
"""

from __future__ import annotations

import gc
import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import safetensors
import safetensors.numpy as st_numpy
from gguf import GGMLQuantizationType as GT
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.conversion import safetensors_io
from lowbit.conversion.safetensors_io import MAX_HEADER_BYTES, SafetensorsFile, SafetensorsWriter, TensorEntry
from lowbit.errors import (
    ClosedError,
    DestinationExistsError,
    FormatError,
    InvalidValueError,
    NotFoundError,
    ParameterError,
    UnsupportedError,
)

# The official package's names for the dtypes used here.
_OFFICIAL_DTYPE = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I8": "int8",
    "U8": "uint8",
}


def official_file(
    path: Path, tensors: dict[str, tuple[str, npt.NDArray[Any]]], metadata: dict[str, str] | None = None
) -> Path:
    """Write `tensors` (name → (safetensors dtype, raw little-endian array of that storage)) with
    the official serializer."""
    specs = {
        name: safetensors.TensorSpec(
            dtype=_OFFICIAL_DTYPE[dt], shape=list(a.shape), data_ptr=a.ctypes.data, data_len=a.nbytes
        )
        for name, (dt, a) in tensors.items()
    }
    path.write_bytes(safetensors.serialize(specs, metadata))
    return path


def official_parse(blob: bytes) -> dict[str, dict[str, Any]]:
    """The official parser: tensor name → {"dtype", "shape", "data" (bytes)}."""
    return dict(safetensors.deserialize(blob))  # type: ignore[no-untyped-call]


def bf16_bits(a: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]:
    """gguf's numpy BF16 quantizer (round to nearest even): the oracle for BF16 rounding."""
    if a.size == 0:  # gguf's row-wise helpers cannot reshape empty arrays
        return np.zeros(a.shape, np.uint16)
    return np.asarray(gguf_quantize(a.reshape(1, -1), GT.BF16)).view("<u2").reshape(a.shape)


def bf16_value(bits: npt.NDArray[np.uint16]) -> npt.NDArray[np.float32]:
    if bits.size == 0:
        return np.zeros(bits.shape, np.float32)
    return np.asarray(gguf_dequantize(bits.reshape(1, -1).view(np.uint8), GT.BF16), dtype=np.float32).reshape(
        bits.shape
    )


def same_bits(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> bool:
    """Bit-exact equality (NaN payloads and -0.0 included)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def specials(n: int, seed: int = 0) -> npt.NDArray[np.float32]:
    """Normal values, ±0, ±inf, NaN, subnormals, BF16 rounding ties, the float32 extremes."""
    r = np.random.default_rng(seed)
    bits = [0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x00000001, 0x807FFFFF]
    bits += [0x3F808000, 0x3F818000, 0x3F808001, 0x3F807FFF, 0x7F7F0000, 0x00800000, 0x7F7F7FFF]
    fixed = np.array(bits, dtype=np.uint32).view(np.float32)
    return np.concatenate([fixed, r.standard_normal(n).astype(np.float32) * 3]).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Malformed files


def container(header: bytes | dict[str, Any], data: bytes = b"", n: int | None = None) -> bytes:
    raw = json.dumps(header).encode() if isinstance(header, dict) else header
    return struct.pack("<Q", len(raw) if n is None else n) + raw + data


def entry(dtype: str = "F32", shape: Any = (2,), offsets: Any = (0, 8)) -> dict[str, Any]:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


BAD_FILES: list[tuple[str, bytes, str]] = [
    ("too_short", b"\x10\x00\x00", "too short"),
    ("header_cap", container(b"{}", n=MAX_HEADER_BYTES + 1), "exceeds the cap"),
    ("header_past_eof", container(b"{}", n=100), "past the end"),
    ("not_utf8", container(b'{"a\xff": 1}'), "not valid UTF-8"),
    ("not_json", container(b'{"a": '), "not valid JSON"),
    ("trailing_json", container(b"{} {}"), "not valid JSON"),
    ("not_object", container(b"[1, 2]"), "not an object"),
    ("duplicate_key", container(b'{"a": 1, "a": 2}'), "duplicate key 'a'"),
    (
        "duplicate_tensor",
        container(('{"a": ' + json.dumps(entry()) + ', "a": ' + json.dumps(entry()) + "}").encode(), bytes(8)),
        "duplicate key 'a'",
    ),
    ("nan_constant", container(b'{"__metadata__": {"x": NaN}}'), "NaN"),
    ("metadata_not_str", container({"__metadata__": {"x": 1}}), "__metadata__"),
    ("metadata_null", container({"__metadata__": None}), "__metadata__"),
    ("entry_not_object", container({"a": [1]}), "not an object"),
    ("unknown_field", container({"a": {**entry(), "extra": 1}}, bytes(8)), "unknown ['extra']"),
    ("missing_field", container({"a": {"dtype": "F32", "data_offsets": [0, 8]}}, bytes(8)), "missing ['shape']"),
    ("unknown_dtype", container({"a": entry(dtype="F17")}, bytes(8)), "unknown dtype 'F17'"),
    ("lowercase_dtype", container({"a": entry(dtype="f32")}, bytes(8)), "unknown dtype 'f32'"),
    ("dtype_not_str", container({"a": {**entry(), "dtype": 4}}, bytes(8)), "unknown dtype 4"),
    ("negative_dim", container({"a": entry(shape=(-2,))}, bytes(8)), "shape [-2]"),
    ("float_dim", container({"a": entry(shape=(2.0,))}, bytes(8)), "shape [2.0]"),
    ("bool_dim", container({"a": entry(shape=(True, 2))}, bytes(8)), "shape [True, 2]"),
    ("shape_not_list", container({"a": {**entry(), "shape": 2}}, bytes(8)), "shape 2"),
    ("huge_dim_zero_numel", container({"a": entry(shape=(0, 2**60), offsets=(0, 0))}), "integers in [0, 2**48]"),
    ("numel_overflow", container({"a": entry(shape=(2**24, 2**24, 2**24), offsets=(0, 0))}), "more than the cap"),
    ("negative_offset", container({"a": entry(offsets=(-8, 0))}, bytes(8)), "two non-negative integers"),
    ("three_offsets", container({"a": entry(offsets=(0, 4, 8))}, bytes(8)), "two non-negative integers"),
    ("float_offset", container({"a": entry(offsets=(0, 8.0))}, bytes(8)), "two non-negative integers"),
    ("begin_after_end", container({"a": entry(offsets=(8, 0))}, bytes(8)), "outside the 8-byte data buffer"),
    ("end_past_buffer", container({"a": entry(offsets=(0, 8))}, bytes(4)), "outside the 4-byte data buffer"),
    (
        "wrong_byte_count",
        container({"a": entry(shape=(3,), offsets=(0, 8))}, bytes(8)),
        "8 bytes for 3 elements of F32",
    ),
    ("subbyte_tail", container({"a": entry(dtype="F4", shape=(3,), offsets=(0, 2))}, bytes(2)), "3 elements of F4"),
    (
        "overlap",
        container({"a": entry(offsets=(0, 8)), "b": entry(offsets=(4, 12))}, bytes(12)),
        "tensor 'b': data_offsets [4, 12] overlap",
    ),
    (
        "same_range",
        container({"a": entry(offsets=(0, 8)), "b": entry(offsets=(0, 8))}, bytes(8)),
        "overlap the previous tensor",
    ),
    ("hole", container({"a": entry(offsets=(0, 8)), "b": entry(offsets=(12, 20))}, bytes(20)), "hole of 4 bytes"),
    ("leading_hole", container({"a": entry(offsets=(4, 12))}, bytes(12)), "hole of 4 bytes"),
    ("trailing_bytes", container({"a": entry()}, bytes(12)), "4 trailing bytes"),
    ("data_without_tensors", container(b"{}", bytes(1)), "1 trailing bytes"),
]


@pytest.mark.parametrize(("blob", "needle"), [(b, n) for _, b, n in BAD_FILES], ids=[i for i, _, _ in BAD_FILES])
def test_malformed_file_raises_format_error(tmp_path: Path, blob: bytes, needle: str) -> None:
    p = tmp_path / "bad.safetensors"
    p.write_bytes(blob)
    with pytest.raises(FormatError) as ei:
        SafetensorsFile(p)
    msg = str(ei.value)
    assert needle in msg
    assert str(p) in msg
    assert 0 <= ei.value.offset <= len(blob)


def test_format_error_offsets_point_at_the_problem(tmp_path: Path) -> None:
    p = tmp_path / "x.safetensors"
    header = b'{"\xc3\xa9": 1, "a\xff": 2}'
    p.write_bytes(container(header))
    with pytest.raises(FormatError) as ei:
        SafetensorsFile(p)
    assert ei.value.offset == 8 + header.index(b"\xff")

    blob = container({"a": entry()}, bytes(12))
    p.write_bytes(blob)
    with pytest.raises(FormatError) as ei:
        SafetensorsFile(p)
    assert ei.value.offset == len(blob) - 4  # where the uncovered bytes start

    blob = container({"a": entry(offsets=(0, 8)), "b": entry(offsets=(12, 20))}, bytes(20))
    p.write_bytes(blob)
    with pytest.raises(FormatError) as ei:
        SafetensorsFile(p)
    assert ei.value.offset == len(blob) - 20 + 8  # the hole starts after tensor a
    assert "tensor 'b'" in str(ei.value)


def test_the_reference_rejects_what_we_reject(tmp_path: Path) -> None:
    """A few of the table's layouts, checked against the official parser, so the table is not
    stricter than the format on those points."""
    for name in ("overlap", "hole", "wrong_byte_count", "end_past_buffer", "header_past_eof"):
        blob = next(b for i, b, _ in BAD_FILES if i == name)
        with pytest.raises(safetensors.SafetensorError):
            official_parse(blob)


# --------------------------------------------------------------------------------------------
# Reading files written by the official package


def test_reads_official_float_files(tmp_path: Path) -> None:
    r = np.random.default_rng(1)
    arrays: dict[str, npt.NDArray[Any]] = {
        "f32": r.standard_normal((3, 5)).astype(np.float32),
        "f16": r.standard_normal((4, 7)).astype(np.float16),
        "f64": (r.standard_normal((2, 3)) * 1e3).astype(np.float64),
        "f64_big": np.array([1e300, -1e300, 1e-300, 0.1], np.float64),
        "empty": np.zeros((0, 3), np.float32),
        "empty_large_dim": np.zeros((2**20, 0), np.float16),
        "scalar": np.array(2.5, np.float32),
        "long_row": r.standard_normal((1, 1 << 16)).astype(np.float32),
        "rank4": r.standard_normal((2, 1, 3, 2)).astype(np.float64),
        "int8": np.arange(-3, 3, dtype=np.int8),
    }
    p = tmp_path / "official.safetensors"
    with np.errstate(over="ignore"):
        st_numpy.save_file(arrays, str(p), metadata={"format": "pt", "note": "ünïcode"})
    ref = st_numpy.load_file(str(p))
    with SafetensorsFile(p) as f:
        assert f.metadata == {"format": "pt", "note": "ünïcode"}
        assert set(f.tensors) == set(arrays)
        for name, a in arrays.items():
            e = f.tensors[name]
            assert e == TensorEntry({"f": "F", "i": "I"}[a.dtype.kind] + str(a.dtype.itemsize * 8), a.shape, a.nbytes)
            if a.dtype.kind != "f":
                with pytest.raises(UnsupportedError, match=rf"tensor '{name}' has dtype I8"):
                    f.load_f32(name)
                continue
            got = f.load_f32(name)
            with np.errstate(over="ignore"):
                want = ref[name].astype(np.float32)
            assert same_bits(got, want), name
            assert got.flags.c_contiguous and got.flags.writeable


def test_reads_official_bf16_file(tmp_path: Path) -> None:
    r = np.random.default_rng(2)
    bits = r.integers(0, 2**16, size=(33, 17), dtype=np.uint16)
    bits[0, :4] = [0x7F80, 0xFF80, 0x7FC1, 0x0001]  # ±inf, a NaN payload, a subnormal
    p = official_file(tmp_path / "bf16.safetensors", {"w": ("BF16", bits), "e": ("BF16", np.zeros((0,), np.uint16))})
    with SafetensorsFile(p) as f:
        assert f.tensors == {"e": TensorEntry("BF16", (0,), 0), "w": TensorEntry("BF16", (33, 17), bits.nbytes)}
        assert same_bits(f.load_f32("w"), bf16_value(bits))
        assert f.load_f32("e").shape == (0,)


def test_index_order_metadata_and_errors(tmp_path: Path) -> None:
    # Our header keeps the order it was written in; the official writer sorts, so build by hand.
    blob = container({"z": entry(), "__metadata__": {"k": "v"}, "a": entry("U8", (3,), (8, 11))}, bytes(11))
    p = tmp_path / "x.safetensors"
    p.write_bytes(blob)
    f = SafetensorsFile(p)
    assert list(f.tensors) == ["z", "a"]
    assert f.tensors["a"] == TensorEntry("U8", (3,), 3)
    assert f.metadata == {"k": "v"}
    with pytest.raises(UnsupportedError, match=r"tensor 'a' has dtype U8"):
        f.load_f32("a")
    with pytest.raises(NotFoundError, match="no tensor 'q'"):
        f.load_f32("q")
    f.close()
    f.close()
    with pytest.raises(ClosedError):
        f.load_f32("z")


def test_loaded_arrays_are_copies_not_views(tmp_path: Path) -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    p = official_file(tmp_path / "x.safetensors", {"a": ("F32", a)})
    f = SafetensorsFile(p)
    got = f.load_f32("a")
    f.close()  # an exported view of the map would make mmap.close raise BufferError
    got += 1
    assert np.array_equal(got, a + 1)


def test_empty_and_header_only_files(tmp_path: Path) -> None:
    p = tmp_path / "x.safetensors"
    p.write_bytes(container(b"{}"))
    with SafetensorsFile(p) as f:
        assert f.tensors == {} and f.metadata == {}
    p.write_bytes(b"")
    with pytest.raises(FormatError, match="too short"):
        SafetensorsFile(p)


# --------------------------------------------------------------------------------------------
# Writing


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
@pytest.mark.parametrize("shape", [(5, 7), (0,), (0, 9), (), (1, 1, 1, 29), (3, 1 << 12)])
def test_writer_round_trip(tmp_path: Path, dtype: str, shape: tuple[int, ...]) -> None:
    n = int(np.prod(shape))
    vals = specials(max(n, 14), seed=n)[:n]
    if dtype == "F16":
        vals = np.where(np.abs(vals) > 65000, 1.5, vals).astype(np.float32)  # F16 overflow is an error
    a = vals.reshape(shape)
    b = np.negative(a, out=np.empty_like(a))  # out= keeps a 0-d array an array
    p = tmp_path / "w.safetensors"
    with SafetensorsWriter(p, [("a", dtype, shape), ("b.weight", dtype, shape)], {"format": "pt"}) as w:
        w.write("a", a)
        w.write("b.weight", b)
    assert os.listdir(tmp_path) == ["w.safetensors"]

    blob = p.read_bytes()
    (hlen,) = struct.unpack("<Q", blob[:8])
    assert hlen % 8 == 0 and blob[8 + hlen - 1 : 8 + hlen] in (b" ", b"}")
    parsed = official_parse(blob)
    with safetensors.safe_open(str(p), framework="numpy") as so:
        assert so.metadata() == {"format": "pt"}
    # numpy has no bfloat16, so the official numpy loader reads F32/F16 only
    ref = st_numpy.load_file(str(p)) if dtype != "BF16" else {}
    for name, x in (("a", a), ("b.weight", b)):
        assert parsed[name]["dtype"] == dtype and tuple(parsed[name]["shape"]) == shape
        if dtype == "F32":
            want_raw: npt.NDArray[Any] = x.astype("<f4")
            want_f32 = x
        elif dtype == "F16":
            want_raw = x.astype("<f2")
            want_f32 = want_raw.astype(np.float32)
        else:
            want_raw = bf16_bits(x)
            want_f32 = bf16_value(want_raw)
        assert parsed[name]["data"] == want_raw.tobytes(), name
        if ref:
            assert same_bits(ref[name], want_raw)
        with SafetensorsFile(p) as f:
            assert same_bits(f.load_f32(name), want_f32)


def test_writer_accepts_any_layout(tmp_path: Path) -> None:
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    views = {"rev": base[::-1], "t": base.T, "strided": base[:, ::2]}
    p = tmp_path / "v.safetensors"
    with SafetensorsWriter(p, [(k, "F32", v.shape) for k, v in views.items()]) as w:
        for k, v in views.items():
            w.write(k, v)
    ref = st_numpy.load_file(str(p))
    for k, v in views.items():
        assert np.array_equal(ref[k], v)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=64))
def test_bf16_rounding_matches_gguf(tmp_path_factory: pytest.TempPathFactory, words: list[int]) -> None:
    a = np.array(words, dtype=np.uint32).view(np.float32)
    bits = bf16_bits(a)
    finite_overflow = np.isfinite(a) & ((bits & 0x7FFF) == 0x7F80)
    a = np.where(finite_overflow, np.float32(0.5), a).astype(np.float32)
    p = tmp_path_factory.mktemp("bf16") / "x.safetensors"
    with SafetensorsWriter(p, [("x", "BF16", a.shape)]) as w:
        w.write("x", a)
    assert official_parse(p.read_bytes())["x"]["data"] == bf16_bits(a).tobytes()


@pytest.mark.parametrize(("dtype", "value"), [("F16", 65520.0), ("F16", -1e6), ("BF16", 3.4028235e38)])
def test_writer_refuses_overflow(tmp_path: Path, dtype: str, value: float) -> None:
    a = np.array([1.0, value, np.inf], np.float32)
    p = tmp_path / "o.safetensors"
    w = SafetensorsWriter(p, [("x", dtype, (3,))])
    with pytest.raises(InvalidValueError, match=f"flat index 1 overflows {dtype}") as ei:
        w.write("x", a)
    assert ei.value.index == 1
    assert os.listdir(tmp_path) == []
    with pytest.raises(ClosedError):
        w.write("x", a)


def test_writer_keeps_infinities_and_nans(tmp_path: Path) -> None:
    a = np.array([np.inf, -np.inf, np.nan, 2.5], np.float32)
    p = tmp_path / "i.safetensors"
    with SafetensorsWriter(p, [("h", "F16", (4,)), ("b", "BF16", (4,))]) as w:
        w.write("h", a)
        w.write("b", a)
    with SafetensorsFile(p) as f:
        for name in ("h", "b"):
            got = f.load_f32(name)
            assert np.isposinf(got[0]) and np.isneginf(got[1]) and np.isnan(got[2]) and got[3] == 2.5


SpecList = list[tuple[str, str, tuple[int, ...]]]
BAD_SPECS: list[tuple[str, SpecList, type[Exception], str]] = [
    ("duplicate", [("a", "F32", (1,)), ("a", "F16", (1,))], ParameterError, "duplicate tensor names"),
    ("metadata_name", [("__metadata__", "F32", (1,))], ParameterError, "__metadata__"),
    ("unknown_dtype", [("a", "float32", (1,))], ParameterError, "unknown dtype 'float32'"),
    ("unwritable_dtype", [("a", "I8", (1,))], UnsupportedError, "writing dtype I8"),
    ("negative_dim", [("a", "F32", (2, -1))], ParameterError, "shape (2, -1)"),
    ("huge_numel", [("a", "F32", (2**30, 2**30))], ParameterError, "at most 2**48"),
]


@pytest.mark.parametrize(("specs", "exc", "needle"), [s[1:] for s in BAD_SPECS], ids=[s[0] for s in BAD_SPECS])
def test_writer_refuses_bad_specs(tmp_path: Path, specs: SpecList, exc: type[Exception], needle: str) -> None:
    with pytest.raises(exc, match=needle.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        SafetensorsWriter(tmp_path / "x.safetensors", specs)
    assert os.listdir(tmp_path) == []


def test_writer_refuses_bad_metadata(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="metadata"):
        SafetensorsWriter(tmp_path / "x.safetensors", [], {"n": 1})  # type: ignore[dict-item]
    assert os.listdir(tmp_path) == []


def _finish_early(w: SafetensorsWriter) -> None:
    w.write("a", np.zeros(2, np.float32))
    w.finish()


def _write_too_many(w: SafetensorsWriter) -> None:
    for name in ("a", "b", "c"):
        w.write(name, np.zeros(2, np.float32))


WriteStep = Callable[[SafetensorsWriter], None]
BAD_WRITES: list[tuple[str, WriteStep, type[Exception], str]] = [
    ("wrong_order", lambda w: w.write("b", np.zeros(2, np.float32)), ParameterError, "expected tensor 'a' next"),
    ("wrong_shape", lambda w: w.write("a", np.zeros((2, 1), np.float32)), ParameterError, r"shape \(2, 1\)"),
    ("float64", lambda w: w.write("a", np.zeros(2, np.float64)), ParameterError, "float32 numpy array, got float64"),
    ("list", lambda w: w.write("a", [0.0, 1.0]), ParameterError, "got builtins.list"),  # type: ignore[arg-type]
    ("missing_at_finish", _finish_early, ParameterError, r"1 tensors not written: \['b'\]"),
    ("beyond_specs", _write_too_many, ParameterError, "beyond the 2 tensors"),
]


@pytest.mark.parametrize(("step", "exc", "needle"), [s[1:] for s in BAD_WRITES], ids=[s[0] for s in BAD_WRITES])
def test_bad_write_aborts(tmp_path: Path, step: WriteStep, exc: type[Exception], needle: str) -> None:
    w = SafetensorsWriter(tmp_path / "x.safetensors", [("a", "F32", (2,)), ("b", "F16", (2,))])
    assert len(os.listdir(tmp_path)) == 1  # the temporary file
    with pytest.raises(exc, match=needle):
        step(w)
    assert os.listdir(tmp_path) == []
    with pytest.raises(ClosedError):
        w.finish()


def test_exception_in_with_block_leaves_nothing(tmp_path: Path) -> None:
    p = tmp_path / "x.safetensors"
    with pytest.raises(RuntimeError, match="boom"), SafetensorsWriter(p, [("a", "F32", (2,)), ("b", "F32", (2,))]) as w:
        w.write("a", np.ones(2, np.float32))
        raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_keyboard_interrupt_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "x.safetensors"
    with pytest.raises(KeyboardInterrupt), SafetensorsWriter(p, [("a", "F32", (2,))]):
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []

    def interrupted(a: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]:
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors_io, "_to_bf16_bits", interrupted)
    w = SafetensorsWriter(p, [("a", "F32", (2,)), ("b", "BF16", (2,))])
    w.write("a", np.ones(2, np.float32))
    with pytest.raises(KeyboardInterrupt):
        w.write("b", np.ones(2, np.float32))  # not in a with block: the writer cleans up itself
    assert os.listdir(tmp_path) == []


def test_abort_and_garbage_collection_leave_nothing(tmp_path: Path) -> None:
    w = SafetensorsWriter(tmp_path / "a.safetensors", [("a", "F32", (2,))])
    w.abort()
    w.abort()
    assert os.listdir(tmp_path) == []
    with pytest.raises(ClosedError):
        w.write("a", np.ones(2, np.float32))

    w = SafetensorsWriter(tmp_path / "b.safetensors", [("a", "F32", (2,)), ("b", "F32", (2,))])
    w.write("a", np.ones(2, np.float32))
    assert len(os.listdir(tmp_path)) == 1
    del w
    gc.collect()
    assert os.listdir(tmp_path) == []


def test_destination_exists(tmp_path: Path) -> None:
    p = tmp_path / "x.safetensors"
    p.write_bytes(b"old")
    with pytest.raises(DestinationExistsError, match="overwrite=True"):
        SafetensorsWriter(p, [])
    with pytest.raises(RuntimeError), SafetensorsWriter(p, [("a", "F32", (1,))], overwrite=True) as w:
        w.write("a", np.ones(1, np.float32))
        raise RuntimeError
    assert p.read_bytes() == b"old" and os.listdir(tmp_path) == ["x.safetensors"]

    w = SafetensorsWriter(tmp_path / "y.safetensors", [])
    (tmp_path / "y.safetensors").write_bytes(b"raced")
    with pytest.raises(DestinationExistsError, match="appeared while writing"):
        w.finish()
    assert (tmp_path / "y.safetensors").read_bytes() == b"raced"
    assert sorted(os.listdir(tmp_path)) == ["x.safetensors", "y.safetensors"]

    with SafetensorsWriter(p, [("a", "F32", (1,))], overwrite=True) as w:
        w.write("a", np.full(1, 7.0, np.float32))
    assert st_numpy.load_file(str(p))["a"][0] == 7.0


def test_finished_file_mode_follows_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        SafetensorsWriter(tmp_path / "x.safetensors", []).finish()
    finally:
        os.umask(old)
    assert (tmp_path / "x.safetensors").stat().st_mode & 0o777 == 0o640
    with SafetensorsFile(tmp_path / "x.safetensors") as f:
        assert f.tensors == {}
