"""The public API: shapes, sizes, type table, QTensor round trips, options."""

from __future__ import annotations

import numpy as np
import pytest

import lowbit
from conftest import AFFINE_TYPES, DQ_TYPES, FLOAT_TYPES, GGML_TYPES, RAGGED_TYPES


def test_all_exports_exist() -> None:
    for name in lowbit.__all__:
        assert hasattr(lowbit, name), name


def test_type_table() -> None:
    table = {t.name: t for t in lowbit.qtypes()}
    assert set(GGML_TYPES + FLOAT_TYPES + AFFINE_TYPES + RAGGED_TYPES + DQ_TYPES) == set(table)
    # GGUF type ids and bits per weight as ggml defines them (ggml.h / ggml-common.h).
    expect = {
        "f32": (0, 32.0),
        "f16": (1, 16.0),
        "q4_0": (2, 4.5),
        "q4_1": (3, 5.0),
        "q5_0": (6, 5.5),
        "q5_1": (7, 6.0),
        "q8_0": (8, 8.5),
        "q2_k": (10, 2.625),
        "q3_k": (11, 3.4375),
        "q4_k": (12, 4.5),
        "q5_k": (13, 5.5),
        "q6_k": (14, 6.5625),
        "iq4_nl": (20, 4.5),
        "bf16": (30, 16.0),
    }
    for name, (gguf_id, bpw) in expect.items():
        assert table[name].gguf_type == gguf_id and table[name].ggml, name
        assert table[name].bits_per_weight == bpw, name
    for name in AFFINE_TYPES:
        assert not table[name].ggml and table[name].gguf_type is None and table[name].group_affine
    for name in RAGGED_TYPES:
        base = table[name].ragged_base
        assert base == name[:-1] and not table[name].ggml and table[name].gguf_type is None
        assert table[name].bits_per_weight == table[base].bits_per_weight
    assert all(table[n].ragged_base is None for n in table if n not in RAGGED_TYPES)


@pytest.mark.parametrize("qtype", GGML_TYPES + FLOAT_TYPES)
def test_sizes_and_roundtrip(qtype: str) -> None:
    x = np.random.default_rng(0).standard_normal((6, 512)).astype(np.float32)
    qt = lowbit.quantize(x, qtype)
    info = next(t for t in lowbit.qtypes() if t.name == qtype)
    assert qt.shape == (6, 512) and qt.qtype == qtype
    assert qt.data.dtype == np.uint8 and qt.data.shape == (6, 512 // info.block_size * info.block_bytes)
    assert qt.nbytes == qt.data.nbytes and qt.bits_per_weight == info.bits_per_weight
    y = qt.dequantize()
    assert y.dtype == np.float32 and y.shape == x.shape
    again = lowbit.QTensor.from_bytes(qt.data.tobytes(), qtype, (6, 512))
    assert np.array_equal(lowbit.dequantize(again), y)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group", [32, 64, 128, 256, 0])
@pytest.mark.parametrize("sym", [False, True])
def test_affine_sizes(bits: int, group: int, sym: bool) -> None:
    cols = 576  # not a multiple of 128 or 256: the last group is partial
    x = np.random.default_rng(bits).standard_normal((3, cols)).astype(np.float32)
    qt = lowbit.quantize(x, f"int{bits}", group_size=group, symmetric=sym)
    g = group or cols
    groups = -(-cols // g)
    zeros = 0 if sym else -(-groups * bits // 8)
    assert qt.data.shape == (3, cols * bits // 8 + 2 * groups + zeros)
    assert qt.group_size == group and qt.symmetric is sym
    suffix = ("row" if group == 0 else f"g{group}") + ("-sym" if sym else "")
    assert qt.qtype == f"int{bits}-{suffix}" and qt.base_qtype == f"int{bits}"
    # The canonical name alone reproduces the tensor.
    same = lowbit.quantize(x, qt.qtype)
    assert np.array_equal(same.data, qt.data)
    back = lowbit.QTensor.from_bytes(qt.data, qt.qtype, qt.shape)
    assert np.array_equal(back.dequantize(), qt.dequantize())


def test_affine_error_within_half_step() -> None:
    x = np.random.default_rng(5).standard_normal((4, 256)).astype(np.float32)
    qt = lowbit.quantize(x, "int4-g64")
    y = qt.dequantize()
    # Each group's step is its (f16) scale: error <= scale/2 (+ f16 rounding slack).
    for g in range(4):
        sl = slice(g * 64, (g + 1) * 64)
        lo, hi = np.minimum(x[:, sl].min(1), 0), np.maximum(x[:, sl].max(1), 0)
        step = (hi - lo) / 15
        assert (np.abs(y[:, sl] - x[:, sl]).max(1) <= step * 0.5 * 1.01 + 1e-6).all()


def test_explicit_group_ranges_and_clip() -> None:
    x = np.random.default_rng(6).standard_normal((2, 64)).astype(np.float32)
    lo = np.full((2, 2), -1.0, np.float32)
    hi = np.full((2, 2), 1.0, np.float32)
    qt = lowbit.quantize(x, "int4-g32", group_min=lo, group_max=hi)
    y = qt.dequantize()
    # Values are clamped to the grid spanning the given range: its end points lie up to half a
    # step beyond it (the zero point is an integer), the step being 2/15 rounded up to f16.
    step = 2.0 / 15
    assert np.abs(y).max() <= 1.0 + step * 0.51
    assert np.abs(y).max() < np.abs(x).max()
    clipped = lowbit.quantize(x, "int4-g32", clip_ratio=0.5).dequantize()
    assert np.abs(clipped).max() < np.abs(x).max()


def test_importance_changes_kquant_choice() -> None:
    r = np.random.default_rng(7)
    x = r.standard_normal((32, 256)).astype(np.float32)
    imp = np.ones(256, np.float32)
    imp[:16] = 1000.0  # the first sub-block matters most
    plain = lowbit.quantize(x, "q3_k").dequantize()
    weighted = lowbit.quantize(x, "q3_k", importance=imp).dequantize()

    def err(y: np.ndarray) -> float:
        return float((((y - x) ** 2) * imp).sum())

    assert err(weighted) < err(plain)


def test_isa_reporting(isas: list[str]) -> None:
    assert isas[0] == "scalar"
    assert lowbit.isa() in isas


def test_repr() -> None:
    qt = lowbit.quantize(np.ones((1, 32), np.float32), "q8_0")
    assert "q8_0" in repr(qt) and "8.5 bpw" in repr(qt)
