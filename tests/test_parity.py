"""Every ISA produces the same bytes and the same dequantized bits as the scalar reference,
through the public API (the Rust tests cover the kernels directly, this covers the whole path:
argument handling, threading over rows, every option)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lowbit
from conftest import AFFINE_TYPES, FLOAT_TYPES, GGML_TYPES, block_size, special_rows


def simd_isas() -> list[str]:
    return [i for i in lowbit.available_isas() if i != "scalar"]


def check_all_isas(x: np.ndarray, qtype: str, **opts: Any) -> None:
    ref = lowbit.quantize(x, qtype, isa="scalar", **opts)
    ref_y = lowbit.dequantize(ref, isa="scalar")
    for isa in simd_isas():
        got = lowbit.quantize(x, qtype, isa=isa, **opts)
        diff = np.argwhere(ref.data != got.data)
        assert diff.size == 0, f"{qtype} {opts} {isa}: bytes differ at (row, byte) {diff[0]} of {ref.data.shape}"
        y = lowbit.dequantize(ref, isa=isa)
        assert np.array_equal(ref_y.view(np.uint32), y.view(np.uint32)), f"{qtype} {isa}: dequantize differs"


def matrices(unit: int) -> st.SearchStrategy[np.ndarray]:
    """Random matrices whose rows are a multiple of `unit`, values over many magnitudes."""

    @st.composite
    def build(draw: st.DrawFn) -> np.ndarray:
        rows = draw(st.integers(1, 4))
        cols = unit * draw(st.integers(1, 5))
        scale = draw(st.sampled_from([1e-30, 1e-6, 0.02, 1.0, 1e3]))
        seed = draw(st.integers(0, 2**32 - 1))
        x = np.random.default_rng(seed).standard_normal((rows, cols)) * scale
        if draw(st.booleans()):
            x[:, :: draw(st.integers(2, 7))] = 0.0
        return x.astype(np.float32)

    return build()


if_simd = pytest.mark.skipif(not simd_isas(), reason="no SIMD ISA on this CPU")
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@if_simd
@pytest.mark.parametrize("qtype", GGML_TYPES + FLOAT_TYPES)
def test_ggml_types_parity(qtype: str) -> None:
    unit = max(block_size(qtype), 32)

    @SETTINGS
    @given(matrices(unit), st.booleans())
    def prop(x: np.ndarray, weighted: bool) -> None:
        imp = None
        if weighted and qtype not in FLOAT_TYPES:
            imp = np.random.default_rng(x.shape[1]).random(x.shape[1], dtype=np.float32)
        check_all_isas(x, qtype, importance=imp)

    prop()


@if_simd
@pytest.mark.parametrize("qtype", AFFINE_TYPES)
def test_affine_parity(qtype: str) -> None:
    @SETTINGS
    @given(
        matrices(8),
        st.sampled_from([32, 64, 128, 256, 0]),
        st.booleans(),
        st.sampled_from([None, 0.9, "importance"]),
    )
    def prop(x: np.ndarray, group: int, sym: bool, extra: Any) -> None:
        opts: dict[str, Any] = {"group_size": group, "symmetric": sym}
        if extra == "importance":
            opts["importance"] = np.random.default_rng(0).random(x.shape[1], dtype=np.float32)
        elif extra is not None:
            opts["clip_ratio"] = extra
        check_all_isas(x, qtype, **opts)

    prop()


@if_simd
@pytest.mark.parametrize("qtype", GGML_TYPES + FLOAT_TYPES + AFFINE_TYPES)
def test_special_rows_parity(qtype: str) -> None:
    x = special_rows(512)
    check_all_isas(x, qtype)


@if_simd
def test_many_rows_threaded_parity() -> None:
    # Large enough to be split across rayon tasks.
    x = np.random.default_rng(1).standard_normal((300, 1024)).astype(np.float32)
    for qtype in ["q4_k", "q8_0", "int4", "iq4_nl"]:
        check_all_isas(x, qtype)
