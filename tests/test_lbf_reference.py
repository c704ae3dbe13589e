"""The LBF reference implementation (formats/lbf_reference.py) against the golden files of
formats/vectors/ and their description vectors.json. Does not import lowbit."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import lbf_reference as lbf  # formats/ is on pytest's pythonpath and mypy's mypy_path
import pytest

FORMATS = Path(__file__).resolve().parents[1] / "formats"
VECTORS = FORMATS / "vectors"

SPEC: dict[str, Any] = json.loads((VECTORS / "vectors.json").read_text())["files"]
NAMES = sorted(SPEC)


def golden(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def patch(data: bytes, offset: int, new: bytes) -> bytes:
    """``data`` with ``new`` at ``offset`` and header_crc recomputed, so that only the patched field is wrong."""
    b = bytearray(data)
    b[offset : offset + len(new)] = new
    index_offset = struct.unpack_from("<Q", b, 16)[0]
    b[60:64] = struct.pack("<I", zlib.crc32(bytes(b[:60]) + bytes(b[index_offset:])))
    return bytes(b)


def test_all_golden_files_present() -> None:
    assert NAMES == ["basic.lbf", "minimal.lbf", "quantized.lbf"]
    assert sorted(p.name for p in VECTORS.glob("*.lbf")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_reader_matches_vectors(name: str) -> None:
    data, spec = golden(name), SPEC[name]
    assert (len(data), hashlib.sha256(data).hexdigest()) == (spec["size"], spec["sha256"])
    f = lbf.verify(data)
    assert {k: getattr(f, k) for k in spec["header"]} == spec["header"]
    assert (f.major, f.minor, f.flags, f.file_len) == (1, 0, 0, len(data))

    assert [k for k, _ in f.metadata] == [m["key"] for m in spec["metadata"]]
    for (_, value), m in zip(f.metadata, spec["metadata"], strict=True):
        assert value[0] == m["type"]
        assert lbf.value_to_json(value) == m["value"]
        type_id, raw = lbf.encode_value(lbf.value_from_json(m["type"], m["value"]))
        assert (type_id, raw.hex(), len(raw)) == (lbf.VALUE_TYPES[m["type"]][0], m["value_hex"], m["value_len"])

    assert len(f.tensors) == len(spec["tensors"])
    for i, (t, s) in enumerate(zip(f.tensors, spec["tensors"], strict=True)):
        got = {"name": t.name, "qtype": t.qtype, "qtype_id": t.qtype_id, "dims": list(t.dims), "rows": t.rows}
        got |= {"cols": t.cols, "group_size": t.group_size, "symmetric": t.symmetric}
        assert got == {k: s[k] for k in got}
        assert [(p.kind, p.crc, p.offset, p.length) for p in t.parts] == [
            (p["kind"], p["crc"], p["offset"], p["length"]) for p in s["parts"]
        ]
        parts = lbf.read_tensor(f, data, i)
        for p in s["parts"]:
            assert hashlib.sha256(parts[p["kind"]]).hexdigest() == p["sha256"]
            assert zlib.crc32(parts[p["kind"]]) == p["crc"]
        qtype = lbf.QTYPE_BY_NAME[s["qtype"]]
        assert len(parts[0]) == lbf.data_length(qtype, t.dims, t.group_size, t.symmetric)
        if "values" in s:
            fmt = {"f32": "f", "f16": "e"}[s["qtype"]]
            assert list(struct.unpack(f"<{t.rows * t.cols}{fmt}", parts[0])) == s["values"]


def test_vectors_cover_the_brief() -> None:
    basic = SPEC["basic.lbf"]
    types = {m["type"] for m in basic["metadata"]}
    assert types == set(lbf.VALUE_TYPES)
    elem_types = {m["value"]["element_type"] for m in basic["metadata"] if m["type"] == "array"}
    assert elem_types == set(lbf.VALUE_TYPES)  # arrays of every element type, arrays included
    assert {tuple(t["dims"]) for t in basic["tensors"]} >= {(0, 64), (2, 3, 5), (64,)}
    quant = SPEC["quantized.lbf"]
    assert {t["qtype"] for t in quant["tensors"]} >= {"q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "int4", "int3"}
    kinds = [[p["kind"] for p in t["parts"]] for t in quant["tensors"]]
    assert [0, 1] in kinds and [0, 2, 3, 4] in kinds and [0, 1, 2, 3, 4] in kinds
    assert {m["key"] for m in quant["metadata"]} >= {"model.config", "tokenizer.json", "quantization.seed"}


@pytest.mark.parametrize("name", NAMES)
def test_writer_reproduces_golden_bytes(name: str) -> None:
    data = golden(name)
    f = lbf.read_lbf(data)
    assert lbf.write_lbf(None, f.metadata, lbf.extract_tensors(f, data)) == data


def test_float_bits_round_trip() -> None:
    for bits in [0x7F800001, 0xFFC12345, 0x7FC00000, 0x80000000, 0x00000001, 0x7F7FFFFF]:
        assert lbf.float_bits("f32", lbf.float_from_bits("f32", bits)) == bits
    for bits in [0x7FF0000000000001, 0xFFF8000000000123, 0x8000000000000000]:
        assert lbf.float_bits("f64", lbf.float_from_bits("f64", bits)) == bits


def test_gguf_dequantize_hashes() -> None:
    """The recorded sha256 of gguf's dequantization of each ggml tensor matches its bytes."""
    np = pytest.importorskip("numpy")
    gguf = pytest.importorskip("gguf")
    data = golden("quantized.lbf")
    f = lbf.read_lbf(data)
    checked = 0
    for i, s in enumerate(SPEC["quantized.lbf"]["tensors"]):
        if "gguf_dequant_sha256" in s:
            q = np.frombuffer(lbf.read_tensor(f, data, i)[0], dtype=np.uint8).reshape(s["rows"], -1)
            deq = gguf.quants.dequantize(q, gguf.GGMLQuantizationType[s["qtype"].upper()]).astype("<f4")
            assert deq.shape == tuple(s["dims"])
            assert hashlib.sha256(deq.tobytes()).hexdigest() == s["gguf_dequant_sha256"]
            checked += 1
    assert checked == 5


# ------------------------------------------------------------------------ strictness of the reference


def first_metadata_offset(data: bytes, key: str) -> int:
    """Offset of the value_type field of metadata ``key`` (keys are searched as encoded strings)."""
    enc = struct.pack("<Q", len(key.encode())) + key.encode()
    return data.index(enc, struct.unpack_from("<Q", data, 16)[0]) + len(enc)


BASIC = golden("basic.lbf")
BOOL_AT = first_metadata_offset(BASIC, "bool.true")
SECOND = lbf.read_lbf(BASIC).tensors[1]  # embed.weight, f32 (8, 32)
QTYPE_AT = SECOND.parts_offset - 4 - 8 * 2 - 4 * 4  # back over n_parts, dims, n_dims, flags, group_size

BAD: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "shorter than the 64-byte header"),
    "short": (BASIC[:63], "shorter than the 64-byte header"),
    "magic": (b"\x89LBG" + BASIC[4:], "bad magic"),
    "text-mode": (BASIC[:4] + b"\n" + BASIC[6:], "bad magic"),
    "byte-swapped": (patch(BASIC, 12, bytes([0x0A, 0x0B, 0x0C, 0x0D])), "byte-swapped"),
    "major 2": (patch(BASIC, 8, struct.pack("<H", 2)), "LBF 2.0, this reader reads LBF 1.1"),
    "major 0": (patch(BASIC, 8, struct.pack("<H", 0)), "LBF 0.0"),
    "flags": (patch(BASIC, 56, struct.pack("<I", 1)), "header flags"),
    "truncated": (BASIC[:-1], "file_len"),
    "trailing byte": (BASIC + b"\0", "file_len"),
    "index crc": (BASIC[:-1] + bytes([BASIC[-1] ^ 1]), "header_crc"),
    "header crc": (BASIC[:40] + bytes([BASIC[40] ^ 1]) + BASIC[41:], "header_crc"),
    "bool 2": (patch(BASIC, BOOL_AT + 12, b"\x02"), "bool byte"),
    "value type": (patch(BASIC, BOOL_AT, struct.pack("<I", 99)), "unknown value type 99"),
    "value_len": (patch(BASIC, BOOL_AT + 4, struct.pack("<Q", 2)), "value_len says 2"),
    "part offset": (patch(BASIC, SECOND.parts_offset + 8, struct.pack("<Q", SECOND.parts[0].offset + 64)), "must be"),
    "qtype": (patch(BASIC, QTYPE_AT, struct.pack("<I", 99)), "unknown qtype id 99"),
    "group_size": (patch(BASIC, QTYPE_AT + 4, struct.pack("<I", 32)), "group_size 32 invalid for f32"),
    "symmetric": (patch(BASIC, QTYPE_AT + 8, struct.pack("<I", 1)), "flags 0x1 invalid for f32"),
    "n_dims": (patch(BASIC, QTYPE_AT + 12, struct.pack("<I", 9)), "n_dims 9"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_reader_rejects(case: str) -> None:
    data, message = BAD[case]
    with pytest.raises(lbf.LBFRefError, match=message) as e:
        lbf.read_lbf(data)
    assert e.value.offset is not None  # every format error names a byte offset


def test_any_index_byte_flip_is_a_clean_error_or_valid() -> None:
    """Every single-byte change of the index (CRC recomputed) is either still a valid file or an
    LBFRefError naming an offset: never another exception."""
    data = golden("quantized.lbf")
    index_offset = lbf.read_lbf(data).index_offset
    errors = 0
    for at in range(index_offset, len(data)):
        try:
            lbf.verify(patch(data, at, bytes([data[at] ^ 0xFF])))
        except lbf.LBFRefError as e:
            assert e.offset is not None, e
            errors += 1
    assert errors > (len(data) - index_offset) // 2


def test_part_crc_checked_lazily() -> None:
    at = SECOND.parts[0].offset + 5
    data = BASIC[:at] + bytes([BASIC[at] ^ 0x10]) + BASIC[at + 1 :]
    f = lbf.read_lbf(data)  # the index is intact: the file opens
    lbf.read_tensor(f, data, 0)  # other tensors stay readable
    with pytest.raises(lbf.LBFRefError, match="CRC mismatch"):
        lbf.read_tensor(f, data, 1)
    with pytest.raises(lbf.LBFRefError, match="CRC mismatch"):
        lbf.verify(data)


def test_nonzero_padding_fails_verify() -> None:
    f = lbf.read_lbf(BASIC)
    end = next(p.offset + p.length for t in f.tensors for p in t.parts if (p.offset + p.length) % 64)
    data = BASIC[:end] + b"\x01" + BASIC[end + 1 :]
    lbf.read_lbf(data)
    with pytest.raises(lbf.LBFRefError, match="padding"):
        lbf.verify(data)


def test_newer_minor_version_is_read() -> None:
    """§9: a 1.2 file with an unknown value type and header flag bits opens; in 1.0 and 1.1 both are errors."""
    data = patch(patch(patch(BASIC, 10, struct.pack("<H", 2)), 56, struct.pack("<I", 4)), BOOL_AT, b"\x63")
    f = lbf.read_lbf(data)
    assert (f.minor, f.flags) == (2, 4)
    assert dict(f.metadata)["bool.true"] == ("unknown", lbf.UnknownValue(99, b"\x01"))


def test_writer_refuses_invalid_input() -> None:
    with pytest.raises(lbf.LBFRefError, match="must be 16"):
        lbf.write_lbf(None, [], [lbf.RefTensor("t", "f32", (2, 2), [(0, bytes(12))])])
    with pytest.raises(lbf.LBFRefError, match="not a multiple of the block size 32"):
        lbf.write_lbf(None, [], [lbf.RefTensor("t", "q8_0", (1, 16), [(0, bytes(17))])])
    with pytest.raises(lbf.LBFRefError, match="nesting deeper than 4"):
        depth5 = ("array", ("array", [("array", [("array", [("array", [("u8", [1])])])])]))
        lbf.write_lbf(None, [("k", depth5)], [])
    with pytest.raises(lbf.LBFRefError, match="out of range"):
        lbf.write_lbf(None, [("k", ("u8", 256))], [])
    with pytest.raises(lbf.LBFRefError, match="duplicate"):
        lbf.write_lbf(None, [("k", ("u8", 1)), ("k", ("u8", 2))], [])
