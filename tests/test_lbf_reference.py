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
    assert NAMES == ["basic.lbf", "minimal.lbf", "quantized.lbf", "w8a8.lbf"]
    assert sorted(p.name for p in VECTORS.glob("*.lbf")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_reader_matches_vectors(name: str) -> None:
    data, spec = golden(name), SPEC[name]
    assert (len(data), hashlib.sha256(data).hexdigest()) == (spec["size"], spec["sha256"])
    f = lbf.verify(data)
    assert {k: getattr(f, k) for k in spec["header"]} == spec["header"]
    minor = 2 if any("act" in t for t in spec["tensors"]) else 0  # §9: act_quant parts make a 1.2 file
    assert (f.major, f.minor, f.flags, f.file_len) == (1, minor, 0, len(data))

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
        assert ("act" in s) == (lbf.PART_ACT_QUANT in parts)
        if "act" in s:
            mode, step = lbf.ACT_QUANT.unpack(parts[lbf.PART_ACT_QUANT])
            assert (mode, lbf.float_bits("f32", step)) == (s["act"]["mode"], int(s["act"]["step"], 16))


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
    w8a8 = SPEC["w8a8.lbf"]
    assert w8a8["header"]["minor"] == 2
    acts = [t for t in w8a8["tensors"] if "act" in t]
    assert {t["act"]["mode"] for t in acts} == {lbf.ACT_STATIC, lbf.ACT_DYNAMIC}
    assert all((t["qtype"], t["symmetric"], [p["kind"] for p in t["parts"]]) == ("int8", True, [0, 5]) for t in acts)
    assert any(t["group_size"] == 0 for t in acts) and any(t["group_size"] == t["cols"] for t in acts)


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
    "major 2": (patch(BASIC, 8, struct.pack("<H", 2)), "LBF 2.0, this reader reads LBF 1.3"),
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
    """§9: a 1.4 file with an unknown value type and header flag bits opens; up to 1.3 both are errors."""
    data = patch(patch(patch(BASIC, 10, struct.pack("<H", 4)), 56, struct.pack("<I", 4)), BOOL_AT, b"\x63")
    f = lbf.read_lbf(data)
    assert (f.minor, f.flags) == (4, 4)
    assert dict(f.metadata)["bool.true"] == ("unknown", lbf.UnknownValue(99, b"\x01"))
    as_1_3 = patch(data, 10, struct.pack("<H", 3))
    with pytest.raises(lbf.LBFRefError, match="header flags 0x4"):
        lbf.read_lbf(as_1_3)
    with pytest.raises(lbf.LBFRefError, match="unknown value type 99"):
        lbf.read_lbf(patch(as_1_3, 56, struct.pack("<I", 0)))


def test_newer_minor_part_kind_is_listed_but_unsupported() -> None:
    """§9: in a 1.4 file a part kind after act_quant (here 6) is listed and its tensor fails as
    unsupported while the others read; in the 1.2 file itself the same kind is a format error."""
    data = golden("w8a8.lbf")
    t = lbf.read_lbf(data).tensors[0]
    assert [p.kind for p in t.parts] == [lbf.PART_DATA, lbf.PART_ACT_QUANT]
    kind6 = patch(data, t.parts_offset + lbf.PART.size, struct.pack("<I", 6))
    with pytest.raises(lbf.LBFRefError, match="unknown part kind 6"):
        lbf.read_lbf(kind6)
    newer = patch(kind6, 10, struct.pack("<H", 4))
    f = lbf.read_lbf(newer)
    assert [p.kind for p in f.tensors[0].parts] == [0, 6]
    with pytest.raises(lbf.LBFRefError, match="unsupported"):
        lbf.read_tensor(f, newer, 0)
    assert lbf.ACT_QUANT.unpack(lbf.read_tensor(f, newer, 1)[lbf.PART_ACT_QUANT]) == (lbf.ACT_DYNAMIC, 0.0)


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


# --------------------------------------------------------------------------- act_quant (§5, LBF 1.2)


def w8a8(act: bytes, qtype: str = "int8", cols: int = 64, group: int = 0, sym: bool = True) -> lbf.RefTensor:
    """A 2-row tensor with zero data and an act_quant part of bytes ``act``."""
    n = lbf.data_length(lbf.QTYPE_BY_NAME[qtype], (2, cols), group, sym)
    return lbf.RefTensor("w", qtype, (2, cols), [(0, bytes(n)), (lbf.PART_ACT_QUANT, act)], group, sym)


STATIC = lbf.ACT_QUANT.pack(lbf.ACT_STATIC, 0.5)
DYNAMIC = lbf.ACT_QUANT.pack(lbf.ACT_DYNAMIC, 0.0)


def test_act_quant_accepted() -> None:
    """Static steps down to the smallest subnormal, dynamic +0.0, one group per row (group 0 or
    ≥ cols), cols up to 2^17 and empty rows are valid, and they make a 1.2 file."""
    tiny = lbf.ACT_QUANT.pack(lbf.ACT_STATIC, lbf.float_from_bits("f32", 1))
    one_group = [w8a8(STATIC, cols=32, group=64), w8a8(STATIC, cols=64, group=64), w8a8(DYNAMIC, cols=0, group=32)]
    for t in [w8a8(STATIC), w8a8(DYNAMIC), w8a8(tiny), *one_group]:
        data = lbf.write_lbf(None, [], [t])
        f = lbf.verify(data)
        assert f.minor == 2
        assert lbf.read_tensor(f, data, 0)[lbf.PART_ACT_QUANT] == t.parts[1][1]
    big = lbf.RefTensor("w", "int8", (1, lbf.ACT_MAX_COLS), [(0, bytes(lbf.ACT_MAX_COLS + 2)), (5, STATIC)], 0, True)
    assert lbf.verify(lbf.write_lbf(None, [], [big])).tensors[0].cols == 2**17
    without = lbf.write_lbf(None, [], [lbf.RefTensor("w", "int8", (2, 64), [(0, bytes(2 * 66))], 0, True)])
    assert lbf.read_lbf(without).minor == 0


# Where an act_quant part may appear and its length: checked when the file is opened (read_lbf).
BAD_PLACE: dict[str, tuple[lbf.RefTensor, str]] = {
    "length 7": (w8a8(STATIC[:7]), "act_quant part is 7 bytes, must be 8"),
    "length 9": (w8a8(STATIC + b"\0"), "act_quant part is 9 bytes, must be 8"),
    "q4_0": (w8a8(STATIC, qtype="q4_0", sym=False), "needs int8, symmetric, one group per row, not q4_0"),
    "f32": (w8a8(STATIC, qtype="f32", sym=False), "not f32"),
    "int4 row sym": (w8a8(STATIC, qtype="int4"), "not int4"),
    "asymmetric": (w8a8(STATIC, sym=False), "flags 0x0"),
    "two groups": (w8a8(STATIC, cols=64, group=32), "group_size 32 flags 0x1 on rows of 64"),
    "cols > 2^17": (w8a8(STATIC, cols=lbf.ACT_MAX_COLS + 8), f"cols ≤ {2**17}, has {2**17 + 8}"),
}


def _with_perm() -> lbf.RefTensor:
    t = w8a8(STATIC, cols=8)
    t.parts.insert(1, (lbf.PART_PERM, struct.pack("<8I", *range(8))))
    return t


def _with_outliers() -> lbf.RefTensor:
    t = w8a8(DYNAMIC, cols=8)
    t.parts[1:1] = [(2, struct.pack("<3Q", 0, 1, 1)), (3, struct.pack("<I", 3)), (4, struct.pack("<e", 1.0))]
    return t


BAD_PLACE["perm"] = (_with_perm(), "cannot combine with perm or outlier")
BAD_PLACE["outliers"] = (_with_outliers(), "cannot combine with perm or outlier")


@pytest.mark.parametrize("case", sorted(BAD_PLACE))
def test_act_quant_placement_refused_at_open(case: str) -> None:
    tensor, message = BAD_PLACE[case]
    with pytest.raises(lbf.LBFRefError, match=message):  # the writer checks its output
        lbf.write_lbf(None, [], [tensor])
    data = lbf.write_lbf(None, [], [tensor], check=False)
    with pytest.raises(lbf.LBFRefError, match=message) as e:
        lbf.read_lbf(data)
    parts_at = len(data) - len(tensor.parts) * lbf.PART.size  # the part records end the index
    act_length_at = parts_at + (len(tensor.parts) - 1) * lbf.PART.size + 16
    assert e.value.offset == (act_length_at if case.startswith("length") else parts_at)


# The content of the 8 bytes: checked when the tensor is read (read_tensor, verify).
BAD_CONTENT: dict[str, tuple[bytes, int, str]] = {
    "mode 0": (lbf.ACT_QUANT.pack(0, 0.5), 0, "mode 0 is not 1"),
    "mode 3": (lbf.ACT_QUANT.pack(3, 0.0), 0, "mode 3 is not 1"),
    "static step 0": (lbf.ACT_QUANT.pack(lbf.ACT_STATIC, 0.0), 4, "static act_quant step 0.0 is not finite and > 0"),
    "static step -0": (lbf.ACT_QUANT.pack(lbf.ACT_STATIC, -0.0), 4, "static act_quant step -0.0"),
    "static step < 0": (lbf.ACT_QUANT.pack(lbf.ACT_STATIC, -0.5), 4, "static act_quant step -0.5"),
    "static step inf": (lbf.ACT_QUANT.pack(lbf.ACT_STATIC, float("inf")), 4, "static act_quant step inf"),
    "static step nan": (lbf.ACT_QUANT.pack(lbf.ACT_STATIC, float("nan")), 4, "static act_quant step nan"),
    "dynamic step 0.5": (lbf.ACT_QUANT.pack(lbf.ACT_DYNAMIC, 0.5), 4, "dynamic act_quant step 0.5 is not \\+0.0"),
    "dynamic step -0": (lbf.ACT_QUANT.pack(lbf.ACT_DYNAMIC, -0.0), 4, "dynamic act_quant step -0.0"),
    "dynamic subnormal": (struct.pack("<II", lbf.ACT_DYNAMIC, 1), 4, "dynamic act_quant step 1.4"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONTENT))
def test_act_quant_content_refused_when_read(case: str) -> None:
    act, field_at, message = BAD_CONTENT[case]
    with pytest.raises(lbf.LBFRefError, match=message):
        lbf.write_lbf(None, [], [w8a8(act)])
    data = lbf.write_lbf(None, [], [w8a8(act)], check=False)
    f = lbf.read_lbf(data)  # the index is valid: the file opens
    with pytest.raises(lbf.LBFRefError, match=message) as e:
        lbf.read_tensor(f, data, 0)
    assert e.value.offset == f.tensors[0].parts[1].offset + field_at
    with pytest.raises(lbf.LBFRefError, match=message):
        lbf.verify(data)
