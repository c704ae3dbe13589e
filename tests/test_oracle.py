"""ggml compatibility, with the `gguf` package (ggml's own numpy reference) as the oracle:
gguf dequantizes our bytes to exactly our dequantize output for every ggml type, and for the
types gguf can quantize our bytes equal its bytes."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as GT
from gguf import quants as gq

import lowbit
from conftest import GGML_TYPES, GGUF_QUANTIZE_TYPES, special_rows

GT_OF = {
    "f32": GT.F32,
    "f16": GT.F16,
    "bf16": GT.BF16,
    "q8_0": GT.Q8_0,
    "q4_0": GT.Q4_0,
    "q4_1": GT.Q4_1,
    "q5_0": GT.Q5_0,
    "q5_1": GT.Q5_1,
    "q2_k": GT.Q2_K,
    "q3_k": GT.Q3_K,
    "q4_k": GT.Q4_K,
    "q5_k": GT.Q5_K,
    "q6_k": GT.Q6_K,
    "iq4_nl": GT.IQ4_NL,
}


def assert_same_bits(want: np.ndarray, got: np.ndarray, what: str) -> None:
    assert want.shape == got.shape, what
    w, g = want.view(np.uint32), got.view(np.uint32)
    bad = np.flatnonzero(w != g)
    if bad.size:
        i = bad[0]
        pytest.fail(f"{what}: {bad.size} values differ, first at {i}: gguf {want.flat[i]!r} ours {got.flat[i]!r}")


def inputs(cols: int) -> list[tuple[str, np.ndarray]]:
    r = np.random.default_rng(cols)
    return [
        ("normal", r.standard_normal((16, cols), dtype=np.float32)),
        ("weights-like", (r.standard_normal((8, cols)) * 0.02).astype(np.float32)),
        ("special", special_rows(cols)),
    ]


@pytest.mark.parametrize("qtype", [*GGML_TYPES, "f32", "f16", "bf16"])
def test_gguf_dequantizes_our_bytes_exactly(qtype: str, isas: list[str]) -> None:
    for name, x in inputs(512):
        for isa in isas:
            qt = lowbit.quantize(x, qtype, isa=isa)
            ours = lowbit.dequantize(qt, isa=isa)
            theirs = gq.dequantize(qt.data, GT_OF[qtype]).reshape(x.shape).astype(np.float32)
            assert_same_bits(theirs, ours, f"{qtype}/{name}/{isa}")


@pytest.mark.parametrize("qtype", GGUF_QUANTIZE_TYPES)
def test_our_bytes_equal_gguf_quantize(qtype: str, isas: list[str]) -> None:
    for name, x in inputs(256):
        if name == "special":
            # gguf's numpy code has no defined result where 1/d overflows (denormal blocks).
            x = x[np.abs(x).max(axis=1) > 1e-20]
        want = np.asarray(gq.quantize(x, GT_OF[qtype])).view(np.uint8).reshape(x.shape[0], -1)
        for isa in isas:
            got = lowbit.quantize(x, qtype, isa=isa).data
            diff = np.argwhere(want != got)
            assert diff.size == 0, f"{qtype}/{name}/{isa}: {len(diff)} bytes differ, first (row, byte) {diff[0]}"


def test_f16_source_matches_f32_source() -> None:
    x = np.random.default_rng(3).standard_normal((4, 256)).astype(np.float16)
    for qtype in ["q4_k", "q8_0", "f16", "int4"]:
        a = lowbit.quantize(x, qtype)
        b = lowbit.quantize(x.astype(np.float32), qtype)
        assert np.array_equal(a.data, b.data), qtype


def test_bf16_source_matches_f32_source() -> None:
    x = np.random.default_rng(4).standard_normal((4, 256)).astype(np.float32)
    bits = (x.view(np.uint32) >> 16).astype(np.uint16)  # truncation: exact bf16 values
    exact = (bits.astype(np.uint32) << 16).view(np.float32)
    for qtype in ["q6_k", "q4_0", "bf16", "int8-g32"]:
        a = lowbit.quantize(bits, qtype, source_dtype="bf16")
        b = lowbit.quantize(exact, qtype)
        assert np.array_equal(a.data, b.data), qtype
    # bf16 -> bf16 is a copy of the bits.
    assert np.array_equal(lowbit.quantize(bits, "bf16", source_dtype="bf16").data.view(np.uint16), bits)
