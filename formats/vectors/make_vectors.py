"""Writes the LBF golden files of this folder and vectors.json, which describes their expected content.

Deterministic (fixed seeds, no timestamps): running it again gives the same bytes. Uses the reference
writer ``formats/lbf_reference.py``; the ggml-type tensors are quantized with the ``gguf`` package.

    .venv/bin/python formats/vectors/make_vectors.py

vectors.json: ``{"files": {NAME: {...}}}`` with, per file, its size and sha256, the header fields, the
metadata (``key``, ``type``, ``value_len``, ``value_hex`` = the encoded value bytes, and ``value`` in
``lbf_reference.value_to_json`` form: f32/f64 as hex bits "0x…", arrays as {"element_type", "elements"})
and the tensors (name, qtype, qtype_id, dims, rows, cols, group_size, symmetric, parts with kind, name,
offset, length, crc and sha256 of the bytes; ``values`` for f32/f16 tensors; for ggml types produced by
gguf, ``gguf_dequant_sha256`` = sha256 of ``gguf.quants.dequantize(data)`` as little-endian float32; for
tensors with an act_quant part, ``act`` = its ``mode`` (1 static, 2 dynamic) and ``step`` as f32 hex bits).
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType, quants

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import lbf_reference as lbf  # noqa: E402
from lbf_reference import RefTensor, TypedValue  # noqa: E402

GGUF_TYPES = {
    "q8_0": GGMLQuantizationType.Q8_0,
    "q4_0": GGMLQuantizationType.Q4_0,
    "q4_1": GGMLQuantizationType.Q4_1,
    "q5_0": GGMLQuantizationType.Q5_0,
    "q5_1": GGMLQuantizationType.Q5_1,
}

Metadata = list[tuple[str, TypedValue]]


def f32(a: npt.NDArray[np.float64]) -> bytes:
    return a.astype("<f4").tobytes()


def f32_bits(bits: int) -> TypedValue:
    return ("f32", lbf.float_from_bits("f32", bits))


def f64_bits(bits: int) -> TypedValue:
    return ("f64", lbf.float_from_bits("f64", bits))


def basic() -> tuple[Metadata, list[RefTensor]]:
    meta: Metadata = [
        ("u8.zero", ("u8", 0)),
        ("u8.max", ("u8", 255)),
        ("i8.min", ("i8", -128)),
        ("i8.max", ("i8", 127)),
        ("u16.max", ("u16", 0xFFFF)),
        ("i16.min", ("i16", -0x8000)),
        ("u32.max", ("u32", 0xFFFFFFFF)),
        ("i32.min", ("i32", -(2**31))),
        ("u64.max", ("u64", 2**64 - 1)),
        ("i64.min", ("i64", -(2**63))),
        ("i64.max", ("i64", 2**63 - 1)),
        ("f32.one", ("f32", 1.0)),
        ("f32.neg_zero", f32_bits(0x80000000)),
        ("f32.max", f32_bits(0x7F7FFFFF)),
        ("f32.min_subnormal", f32_bits(0x00000001)),
        ("f32.neg_inf", f32_bits(0xFF800000)),
        ("f32.nan", f32_bits(0x7FC00000)),
        ("f32.nan_payload", f32_bits(0xFFC12345)),
        ("f32.snan", f32_bits(0x7F800001)),
        ("f64.pi", ("f64", 3.141592653589793)),
        ("f64.max", f64_bits(0x7FEFFFFFFFFFFFFF)),
        ("f64.min_subnormal", f64_bits(0x0000000000000001)),
        ("f64.inf", f64_bits(0x7FF0000000000000)),
        ("f64.nan_payload", f64_bits(0x7FF8000000000123)),
        ("bool.true", ("bool", True)),
        ("bool.false", ("bool", False)),
        ("string.empty", ("string", "")),
        ("string.unicode", ("string", "héllo wörld — 日本語 🦀")),
        ("string.nul", ("string", "a\0b\0")),
        ("array.u8", ("array", ("u8", [0, 1, 255]))),
        ("array.i8", ("array", ("i8", [-128, 0, 127]))),
        ("array.u16", ("array", ("u16", [0, 0xFFFF]))),
        ("array.i16", ("array", ("i16", [-0x8000, 0x7FFF]))),
        ("array.u32", ("array", ("u32", [0, 0xFFFFFFFF]))),
        ("array.i32", ("array", ("i32", [-(2**31), 2**31 - 1]))),
        ("array.u64", ("array", ("u64", [0, 2**64 - 1]))),
        ("array.i64", ("array", ("i64", [-(2**63), 2**63 - 1]))),
        ("array.f32", ("array", ("f32", [1.5, -0.0, float("inf"), lbf.float_from_bits("f32", 0x7FC00001)]))),
        ("array.f64", ("array", ("f64", [0.1, -2.5e-300, float("-inf")]))),
        ("array.bool", ("array", ("bool", [True, False, True]))),
        ("array.string", ("array", ("string", ["", "x", "日本", "nul\0"]))),
        ("array.empty_u8", ("array", ("u8", []))),
        ("array.empty_string", ("array", ("string", []))),
        ("array.empty_array", ("array", ("array", []))),
        ("array.nested2", ("array", ("array", [("u16", [1, 2]), ("u16", []), ("u16", [3])]))),
        ("array.nested2_strings", ("array", ("array", [("string", ["a", "bc"]), ("string", [""])]))),
        (
            "array.depth4",
            ("array", ("array", [("array", [("array", [("i64", [-1, 2**62]), ("i64", [])])]), ("array", [])])),
        ),
        ("array.depth4_empty", ("array", ("array", [("array", [("array", [])])]))),
        ("unicode.kéy.🦀", ("string", "unicode key")),
    ]
    r = np.random.default_rng(1)
    tensors = [
        RefTensor("norm.weight", "f32", (64,), [(0, f32(1.0 + 0.1 * r.standard_normal(64)))]),
        RefTensor("embed.weight", "f32", (8, 32), [(0, f32(r.standard_normal((8, 32))))]),
        RefTensor("proj.weight", "f16", (4, 16), [(0, r.standard_normal((4, 16)).astype("<f2").tobytes())]),
        RefTensor("empty", "f32", (0, 64), [(0, b"")]),
        RefTensor("cube", "f32", (2, 3, 5), [(0, f32(r.standard_normal((2, 3, 5))))]),
    ]
    return meta, tensors


def affine(name: str, qtype: str, dims: tuple[int, int], group: int, sym: bool, r: np.random.Generator) -> RefTensor:
    """A group-affine tensor whose data part is random bytes of the right length (container test only)."""
    n = lbf.data_length(lbf.QTYPE_BY_NAME[qtype], dims, group, sym)
    return RefTensor(name, qtype, dims, [(0, r.bytes(n))], group, sym)


def outliers(rows: int, cols: int, counts: list[int], r: np.random.Generator) -> list[tuple[int, bytes]]:
    """Outlier parts (kinds 2, 3, 4) with ``counts[i]`` outliers in row i: a valid CSR."""
    assert len(counts) == rows
    ptr = np.concatenate([[0], np.cumsum(counts)]).astype("<u8")
    col = np.concatenate([np.sort(r.choice(cols, size=c, replace=False)) for c in counts]).astype("<u4")
    vals = r.standard_normal(int(ptr[-1])).astype("<f2")
    return [(2, ptr.tobytes()), (3, col.tobytes()), (4, vals.tobytes())]


def quantized() -> tuple[Metadata, list[RefTensor]]:
    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 1, "vocab_size": 8}
    tokenizer = {"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []}}
    meta: Metadata = [
        ("lbf.writer", ("string", "lbf_reference.py (formats/vectors/make_vectors.py)")),
        ("model.config", ("string", json.dumps(config, sort_keys=True))),
        ("tokenizer.json", ("string", json.dumps(tokenizer, sort_keys=True))),
        ("quantization.method", ("string", "rtn")),
        ("quantization.seed", ("u64", 1234)),
    ]
    r = np.random.default_rng(2)
    tensors = []
    for i, (qtype, gtype) in enumerate(GGUF_TYPES.items()):
        x = r.standard_normal((3 + i, 64)).astype(np.float32)
        data = quants.quantize(x, gtype).tobytes()
        tensors.append(RefTensor(f"blk.{i}.{qtype}", qtype, x.shape, [(0, data)]))
    tensors.append(affine("int4.g32", "int4", (4, 80), 32, False, r))  # 3 groups, the last of 16
    tensors.append(affine("int3.row.sym", "int3", (3, 40), 0, True, r))
    perm = affine("int4.perm", "int4", (2, 64), 64, True, r)
    perm.parts.append((1, r.permutation(64).astype("<u4").tobytes()))
    tensors.append(perm)
    out = affine("int2.outliers", "int2", (4, 64), 32, False, r)
    out.parts += outliers(4, 64, [2, 0, 3, 1], r)
    tensors.append(out)
    full = affine("int8.all_parts", "int8", (3, 16), 0, False, r)
    full.parts.append((1, r.permutation(16).astype("<u4").tobytes()))
    full.parts += outliers(3, 16, [1, 4, 0], r)
    tensors.append(full)
    return meta, tensors


def int8_row_sym(name: str, rows: int, cols: int, group: int, act: bytes, r: np.random.Generator) -> RefTensor:
    """A W8A8 weight (int8, symmetric, one group per row) with an act_quant part: codes 1..255 (c = code - 128 in
    -127..127) then one positive f16 scale per row, so that it is a usable weight, not just bytes."""
    codes = r.integers(1, 256, size=(rows, cols), dtype=np.uint8)
    scales = (0.005 + 0.01 * r.random((rows, 1))).astype("<f2")
    data = np.concatenate([codes, scales.view(np.uint8)], axis=1).tobytes()
    return RefTensor(name, "int8", (rows, cols), [(0, data), (lbf.PART_ACT_QUANT, act)], group, True)


def w8a8() -> tuple[Metadata, list[RefTensor]]:
    """LBF 1.2: W8A8 weights, one with a static activation step, one dynamic (group 32 = cols: one group per row)."""
    meta: Metadata = [("quantization.method", ("string", "smoothquant"))]
    r = np.random.default_rng(3)
    step = lbf.float_from_bits("f32", 0x3C4985F0)  # ≈ 0.0123
    return meta, [
        int8_row_sym("w8a8.static", 4, 64, 0, lbf.ACT_QUANT.pack(lbf.ACT_STATIC, step), r),
        int8_row_sym("w8a8.dynamic", 3, 32, 32, lbf.ACT_QUANT.pack(lbf.ACT_DYNAMIC, 0.0), r),
        affine("int8.row.sym", "int8", (2, 16), 0, True, r),  # the same type without act_quant
    ]


def describe(data: bytes) -> dict[str, object]:
    f = lbf.verify(data)
    header = {k: getattr(f, k) for k in ("major", "minor", "byte_order", "index_offset", "index_len")}
    header |= {k: getattr(f, k) for k in ("n_metadata", "n_tensors", "file_len", "flags", "header_crc")}
    metadata = []
    for key, value in f.metadata:
        _, raw = lbf.encode_value(value)
        j = {"key": key, "type": value[0], "value_len": len(raw), "value_hex": raw.hex()}
        metadata.append(j | {"value": lbf.value_to_json(value)})
    tensors = []
    for t in f.tensors:
        parts = []
        for p in t.parts:
            b = data[p.offset : p.offset + p.length]
            parts.append(vars(p) | {"name": lbf.PART_NAMES[p.kind], "sha256": hashlib.sha256(b).hexdigest()})
        j = {"name": t.name, "qtype": t.qtype, "qtype_id": t.qtype_id, "dims": list(t.dims), "rows": t.rows}
        j |= {"cols": t.cols, "group_size": t.group_size, "symmetric": t.symmetric, "parts": parts}
        raw = data[t.parts[0].offset : t.parts[0].offset + t.parts[0].length]
        for p in t.parts:
            if p.kind == lbf.PART_ACT_QUANT:
                mode, step_bits = struct.unpack_from("<II", data, p.offset)
                j["act"] = {"mode": mode, "step": f"0x{step_bits:08x}"}
        if t.qtype in ("f32", "f16"):
            fmt = "f" if t.qtype == "f32" else "e"
            j["values"] = list(struct.unpack(f"<{len(raw) // struct.calcsize(fmt)}{fmt}", raw))
        if t.qtype in GGUF_TYPES:
            q = np.frombuffer(raw, dtype=np.uint8).reshape(t.rows, -1)
            deq = quants.dequantize(q, GGUF_TYPES[t.qtype]).astype("<f4")
            j["gguf_dequant_sha256"] = hashlib.sha256(deq.tobytes()).hexdigest()
        tensors.append(j)
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "header": header} | {
        "metadata": metadata,
        "tensors": tensors,
    }


def main() -> None:
    files = {"minimal.lbf": ([], []), "basic.lbf": basic(), "quantized.lbf": quantized(), "w8a8.lbf": w8a8()}
    vectors: dict[str, object] = {}
    for name, (meta, tensors) in files.items():
        data = lbf.write_lbf(HERE / name, meta, tensors)
        assert len(data) < 20_000, (name, len(data))
        vectors[name] = describe(data)
        print(f"{name}: {len(data)} bytes, {len(meta)} metadata, {len(tensors)} tensors")
    doc = {"format": "LBF 1.2", "generator": "formats/vectors/make_vectors.py", "files": vectors}
    (HERE / "vectors.json").write_text(json.dumps(doc, indent=1, ensure_ascii=True) + "\n")


if __name__ == "__main__":
    main()
