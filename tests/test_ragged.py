"""The ragged k-types (q2_kr … q6_kr) against the spec (formats/QUANT_TYPES.md): the full
super-blocks are ggml's bytes (gguf's dequantizer is the oracle), the tail is decoded here by an
independent NumPy transcription of the spec's field table; aligned rows are stored as the ggml
type; the error of a tail is that of a full super-block; LBF round trip and GGUF export refusal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import lbf_reference  # formats/: the spec's independent reader
import numpy as np
import numpy.typing as npt
import pytest

import lowbit
from conftest import RAGGED_TYPES

F32 = np.float32
U8 = npt.NDArray[np.uint8]


def _f16(t: U8, at: int) -> Any:
    return F32(t[at : at + 2].view(np.float16)[0])


def _two(t: U8, at: int, n: int) -> Any:
    """2-bit codes: value v at byte at + 8 (v // 32) + v % 8, bits 2 ((v % 32) // 8)."""
    v = np.arange(n)
    return ((t[at + 8 * (v // 32) + v % 8] >> (2 * (v % 32 // 8))) & 3).astype(np.int32)


def _four(t: U8, at: int, n: int) -> Any:
    """4-bit codes: byte at + 16 (v // 32) + v % 16, bits 4 ((v % 32) // 16)."""
    v = np.arange(n)
    return ((t[at + 16 * (v // 32) + v % 16] >> (4 * (v % 32 // 16))) & 15).astype(np.int32)


def _one(t: U8, at: int, n: int) -> Any:
    """1-bit fields: byte at + 4 (v // 32) + (v % 32) // 8, bit v % 8."""
    v = np.arange(n)
    return ((t[at + 4 * (v // 32) + v % 32 // 8] >> (v % 8)) & 1).astype(np.int32)


def decode_tail(base: str, t: U8, u: int) -> Any:
    """The 32 u values of a tail of `u` units, from the spec's table (f32, the same operation
    order as gguf's dequantizers: scale·code − min)."""
    n = 32 * u
    v = np.arange(n)
    if base == "q2_k":
        sc: Any = t[v // 16]
        d, dmin = _f16(t, 10 * u), _f16(t, 10 * u + 2)
        return (d * (sc & 15).astype(F32)) * _two(t, 2 * u, n).astype(F32) - dmin * (sc >> 4).astype(F32)
    if base == "q3_k":
        q = _two(t, 4 * u, n) - 4 * (1 - _one(t, 0, n))
        sc = (t[12 * u + v // 16] & 63).astype(np.int32) - 32
        return (_f16(t, 14 * u) * sc.astype(F32)) * q.astype(F32)
    if base in ("q4_k", "q5_k"):
        d, dmin = _f16(t, 0), _f16(t, 2)
        sc, mn = t[4 + v // 32] & 63, t[4 + u + v // 32] & 63
        q = _four(t, 4 + 6 * u, n) + 16 * _one(t, 4 + 2 * u, n) if base == "q5_k" else _four(t, 4 + 2 * u, n)
        return (d * sc.astype(F32)) * q.astype(F32) - dmin * mn.astype(F32)
    assert base == "q6_k"
    q = (_four(t, 0, n) | (_two(t, 16 * u, n) << 4)) - 32
    sc = t[24 * u + v // 16].view(np.int8).astype(F32)
    return (_f16(t, 26 * u) * sc) * q.astype(F32)


TAIL = {"q2_k": (10, 4), "q3_k": (14, 2), "q4_k": (18, 4), "q5_k": (22, 4), "q6_k": (26, 2)}


@pytest.mark.parametrize("qtype", RAGGED_TYPES)
@pytest.mark.parametrize("cols", [1, 31, 64, 200, 576, 600, 960, 1000])
def test_bytes_follow_the_spec(qtype: str, cols: int) -> None:
    base = qtype[:-1]
    info = {t.name: t for t in lowbit.qtypes()}[base]
    rows = 3
    x = np.random.default_rng(cols).standard_normal((rows, cols)).astype(F32) * 0.02
    qt = lowbit.quantize(x, qtype)
    full, r = divmod(cols, 256)
    u = -(-r // 32)
    tail = TAIL[base][0] * u + TAIL[base][1] if u else 0
    assert qt.data.shape == (rows, full * info.block_bytes + tail)
    y = qt.dequantize()
    gtype = gguf.GGMLQuantizationType[base.upper()]
    for i in range(rows):
        row = qt.data[i]
        if full:
            want = gguf.quants.dequantize(row[: full * info.block_bytes], gtype).reshape(-1)
            np.testing.assert_array_equal(y[i, : 256 * full], want)
        got = decode_tail(base, row[full * info.block_bytes :], u)
        np.testing.assert_array_equal(y[i, 256 * full :], got[:r])
    # Close to the input: within the k-quant's error.
    rel = np.sqrt(((y - x) ** 2).sum() / (x**2).sum())
    assert rel < {"q2_k": 0.45, "q3_k": 0.25, "q4_k": 0.12, "q5_k": 0.06, "q6_k": 0.03}[base], rel


@pytest.mark.parametrize("qtype", RAGGED_TYPES)
def test_aligned_rows_are_the_ggml_type(qtype: str) -> None:
    x = np.random.default_rng(0).standard_normal((4, 512)).astype(F32)
    qt = lowbit.quantize(x, qtype)
    assert qt.qtype == qtype[:-1]
    assert np.array_equal(qt.data, lowbit.quantize(x, qtype[:-1]).data)


def test_tail_is_as_accurate_as_full_blocks_and_beats_the_legacy_fallbacks() -> None:
    """On Gaussian 576-long rows, q4_kr's tail has the error of its full blocks, and the row is
    smaller and more accurate than llama.cpp's fallbacks for q4_k there (q5_0 is bigger; q4_0 as
    big)."""
    x = np.random.default_rng(1).standard_normal((256, 576)).astype(F32)

    def rel(y: npt.NDArray[np.float32], sl: slice = slice(None)) -> float:
        return float(np.sqrt(((y[:, sl] - x[:, sl]) ** 2).sum() / (x[:, sl] ** 2).sum()))

    kr = lowbit.quantize(x, "q4_kr")
    y = kr.dequantize()
    assert abs(rel(y, slice(512, None)) / rel(y, slice(0, 512)) - 1) < 0.05
    q40 = lowbit.quantize(x, "q4_0")
    assert kr.bits_per_weight < q40.bits_per_weight + 0.1 and rel(y) < 0.95 * rel(q40.dequantize())
    assert kr.bits_per_weight < lowbit.quantize(x, "q5_0").bits_per_weight - 0.8


def test_lbf_round_trip_and_version(tmp_path: Path) -> None:
    x = np.random.default_rng(2).standard_normal((8, 600)).astype(F32)
    qt = lowbit.quantize(x, "q4_kr")
    path = tmp_path / "r.lbf"
    lowbit.save(path, {"w": qt, "aligned": lowbit.quantize(x[:, :512], "q4_kr")})
    with lowbit.load(path) as f:
        assert f.info("w").qtype == "q4_kr" and f.info("aligned").qtype == "q4_k"
        w = f["w"]
        assert isinstance(w, lowbit.QTensor) and np.array_equal(w.dequantize(), qt.dequantize())
        assert f.header["version"] == "1.1"
    ref = lbf_reference.verify(path.read_bytes())  # sizes per the spec's row_bytes, CRCs, padding
    assert ref.minor == 1 and [(t.name, t.qtype) for t in ref.tensors] == [("w", "q4_kr"), ("aligned", "q4_k")]
    lowbit.save(tmp_path / "old.lbf", {"w": lowbit.quantize(x[:, :512], "q4_k")})
    with lowbit.load(tmp_path / "old.lbf") as f:
        assert f.header["version"] == "1.0"  # files without 1.1 types stay readable by 1.0 readers


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e12])
@pytest.mark.parametrize("qtype", RAGGED_TYPES)
def test_bad_values_and_sizes_are_refused(qtype: str, bad: float) -> None:
    x = np.zeros((3, 600), F32)
    x[1, 590] = bad  # in the tail
    with pytest.raises(lowbit.InvalidValueError) as e:
        lowbit.quantize(x, qtype)
    assert (e.value.row, e.value.col) == (1, 590)
    with pytest.raises(lowbit.ShapeError):
        lowbit.quantize(np.zeros((3, 0), F32), qtype)
    good = lowbit.quantize(np.ones((3, 600), F32), qtype)
    with pytest.raises(lowbit.LowbitError):
        lowbit.QTensor.from_bytes(good.data.tobytes()[:-1], qtype, (3, 600))
