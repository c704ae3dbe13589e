"""The small-group types with quantized statistics (int2/3/4-g16-dq) against the spec
(formats/QUANT_TYPES.md): an independent NumPy transcription of the byte layout decodes what
`quantize` wrote to exactly `dequantize`'s bits; sizes and bits per weight; accuracy against
int3-g128; importance; super-block independence; every ISA against scalar (the matmul's ISAs:
tests/test_matmul.py); LBF round trip with the reference reader; bad input; the type table and
`lowbit inspect` (GGUF export refusal: tests/test_export_gguf.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lbf_reference  # formats/: the spec's independent reader
import numpy as np
import numpy.typing as npt
import pytest

import lowbit
from conftest import DQ_TYPES, special_rows
from lowbit.cli import main

F32 = np.float32
BITS = {"int2-g16-dq": 2, "int3-g16-dq": 3, "int4-g16-dq": 4}
# Columns: one group, partial super-blocks, exactly one, full + partial (576), several full.
COLS = [16, 48, 240, 256, 272, 576, 1024]


def unpack(buf: npt.NDArray[np.uint8], bits: int, n: int) -> npt.NDArray[np.int64]:
    """`n` codes of `bits` bits from a little-endian bit stream: code i at bits [bits·i, bits·i + bits)."""
    stream = np.unpackbits(buf, bitorder="little")[: bits * n].reshape(n, bits).astype(np.int64)
    return stream @ (1 << np.arange(bits))


def decode_row(row: npt.NDArray[np.uint8], cols: int, bits: int) -> npt.NDArray[np.float32]:
    """The spec's decoding of one row: per super-block of n_g groups, f16 d, f16 m, n_g 3-bit
    scale codes k, n_g `bits`-bit zeros z, 16 n_g codes c; value = (m + d·k) · (c − z) in f32."""
    out, at = [], 0
    for start in range(0, cols, 256):
        ng = min(256, cols - start) // 16
        d, m = row[at : at + 4].view(np.float16).astype(F32)
        at += 4
        k = unpack(row[at:], 3, ng)
        at += -(-3 * ng // 8)
        z = unpack(row[at:], bits, ng)
        at += -(-bits * ng // 8)
        c = unpack(row[at:], bits, 16 * ng).reshape(ng, 16)
        at += 2 * bits * ng
        s = m + d * k.astype(F32)  # float32: one multiply, one add
        out.append((s[:, None] * (c - z[:, None]).astype(F32)).reshape(-1))
    assert at == row.size, "the row has bytes the layout does not account for"
    return np.concatenate(out)


def rows_of(kind: str, rows: int, cols: int, seed: int) -> npt.NDArray[np.float32]:
    r = np.random.default_rng(seed)
    if kind == "gauss":
        return r.standard_normal((rows, cols)).astype(F32)
    return (r.standard_t(3, (rows, cols)) * 0.02).astype(F32)  # heavy tails


@pytest.mark.parametrize("qtype", DQ_TYPES)
@pytest.mark.parametrize("cols", COLS)
def test_bytes_follow_the_spec(qtype: str, cols: int) -> None:
    bits = BITS[qtype]
    x = np.concatenate([rows_of("gauss", 3, cols, cols), rows_of("heavy", 2, cols, cols + 1), special_rows(cols)])
    for importance in (None, np.random.default_rng(cols).random(cols).astype(F32)):
        qt = lowbit.quantize(x, qtype, importance=importance)
        y = qt.dequantize()
        for i in range(x.shape[0]):
            want = decode_row(qt.data[i], cols, bits)
            assert np.array_equal(y[i].view(np.uint32), want.view(np.uint32)), f"{qtype} row {i}"
        assert np.isfinite(y).all()


@pytest.mark.parametrize("qtype", DQ_TYPES)
def test_sizes_and_bits_per_weight(qtype: str) -> None:
    bits = BITS[qtype]
    full = 4 + 6 + 2 * bits + 32 * bits  # d, m; 16 scale codes; 16 zeros; 256 codes
    assert full == {2: 78, 3: 112, 4: 146}[bits]
    info = {t.name: t for t in lowbit.qtypes()}[qtype]
    assert (info.block_size, info.block_bytes, info.gguf_type, info.ggml, info.group_affine) == (
        256,
        full,
        None,
        False,
        False,
    )
    assert info.max_abs == pytest.approx(65504 * (2**bits - 1) / 2)
    x = np.ones((2, 1024), F32)
    qt = lowbit.quantize(x, qtype)
    assert qt.bits_per_weight == {2: 2.4375, 3: 3.5, 4: 4.5625}[bits] == 8 * full / 256
    assert (qt.qtype, qt.base_qtype, qt.group_size, qt.symmetric) == (qtype, qtype, None, None)
    ng = 4  # 576 = 2 full super-blocks + 4 groups
    part = 4 + -(-3 * ng // 8) + -(-bits * ng // 8) + 2 * bits * ng
    assert lowbit.quantize(np.ones((3, 576), F32), qtype).data.shape == (3, 2 * full + part)


@pytest.mark.parametrize("kind", ["gauss", "heavy"])
def test_more_accurate_than_int3_g128(kind: str) -> None:
    x = rows_of(kind, 64, 1024, 7)

    def err(qtype: str) -> float:
        return float(((lowbit.quantize(x, qtype).dequantize() - x) ** 2).sum() / (x**2).sum())

    dq, g128 = err("int3-g16-dq"), err("int3-g128")
    assert dq < 0.75 * g128, (dq, g128)
    assert err("int4-g16-dq") < dq < err("int2-g16-dq")


@pytest.mark.parametrize("qtype", DQ_TYPES)
def test_importance_lowers_the_weighted_error(qtype: str) -> None:
    x = rows_of("heavy", 32, 512, 3)
    imp = np.where(np.arange(512) % 9 == 0, 30.0, np.random.default_rng(1).random(512) + 0.05).astype(F32)

    def werr(y: npt.NDArray[np.float32]) -> float:
        return float((imp * (y - x).astype(np.float64) ** 2).sum())

    plain = werr(lowbit.quantize(x, qtype).dequantize())
    weighted = werr(lowbit.quantize(x, qtype, importance=imp).dequantize())
    assert weighted < 0.97 * plain, (weighted, plain)


@pytest.mark.parametrize("qtype", DQ_TYPES)
def test_super_blocks_quantize_independently(qtype: str) -> None:
    """Columns [256 i, 256 i + 256) quantized alone give exactly super-block i of the row."""
    x = rows_of("gauss", 4, 848, 5)  # 3 full super-blocks and 5 groups
    imp = np.random.default_rng(2).random(848).astype(F32)
    for importance in (None, imp):
        whole = lowbit.quantize(x, qtype, importance=importance).data
        at = 0
        for start in range(0, 848, 256):
            sl = slice(start, min(start + 256, 848))
            seg = lowbit.quantize(
                np.ascontiguousarray(x[:, sl]), qtype, importance=None if importance is None else importance[sl]
            ).data
            assert np.array_equal(whole[:, at : at + seg.shape[1]], seg), f"{qtype} segment at {start}"
            at += seg.shape[1]
        assert at == whole.shape[1]


def simd_isas() -> list[str]:
    return [i for i in lowbit.available_isas() if i != "scalar"]


@pytest.mark.skipif(not simd_isas(), reason="no SIMD ISA on this CPU")
@pytest.mark.parametrize("qtype", DQ_TYPES)
@pytest.mark.parametrize("cols", [16, 272, 1024])
def test_every_isa_is_bit_identical(qtype: str, cols: int) -> None:
    x = np.concatenate([special_rows(cols, seed=cols), rows_of("heavy", 70, cols, cols)])  # > 1 rayon task
    for importance in (None, np.random.default_rng(0).random(cols).astype(F32)):
        ref = lowbit.quantize(x, qtype, importance=importance, isa="scalar")
        ref_y = lowbit.dequantize(ref, isa="scalar")
        for isa in simd_isas():
            got = lowbit.quantize(x, qtype, importance=importance, isa=isa)
            diff = np.argwhere(ref.data != got.data)
            assert diff.size == 0, f"{qtype} {isa}: bytes differ at (row, byte) {diff[0]}"
            y = lowbit.dequantize(ref, isa=isa)
            assert np.array_equal(ref_y.view(np.uint32), y.view(np.uint32)), f"{qtype} {isa}: dequantize differs"


def test_lbf_round_trip_and_version(tmp_path: Path) -> None:
    x = rows_of("gauss", 8, 576, 11)
    tensors: dict[str, Any] = {q: lowbit.quantize(x, q) for q in DQ_TYPES}
    path = tmp_path / "dq.lbf"
    lowbit.save(path, tensors)
    with lowbit.load(path) as f:
        assert f.header["version"] == "1.3"
        for q in DQ_TYPES:
            info = f.info(q)
            assert (info.qtype, info.shape, info.group_size, info.symmetric) == (q, (8, 576), None, None)
            got = f[q]
            assert isinstance(got, lowbit.QTensor)
            assert np.array_equal(got.data, tensors[q].data)
            assert np.array_equal(got.dequantize(), tensors[q].dequantize())
    ref = lbf_reference.verify(path.read_bytes())  # sizes per the spec's row_bytes, CRCs, padding
    assert ref.minor == 3 and [t.qtype for t in ref.tensors] == DQ_TYPES
    rt = lbf_reference.read_lbf(path.read_bytes())
    for i, q in enumerate(DQ_TYPES):
        data = np.frombuffer(lbf_reference.read_tensor(rt, path.read_bytes(), i)[0], np.uint8).reshape(8, -1)
        y = np.stack([decode_row(r, 576, BITS[q]) for r in data])
        assert np.array_equal(y, tensors[q].dequantize())
    assert main(["verify", str(path)]) == 0
    lowbit.save(tmp_path / "old.lbf", {"w": lowbit.quantize(x, "int3-g128")})
    with lowbit.load(tmp_path / "old.lbf") as f:
        assert f.header["version"] == "1.0"  # files without -dq types stay readable by older readers


def test_inspect_lists_the_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "m.lbf"
    lowbit.save(path, {"w": lowbit.quantize(np.ones((4, 512), F32), "int3-g16-dq")})
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "int3-g16-dq" in out and "3.5" in out


@pytest.mark.parametrize("qtype", DQ_TYPES)
def test_bad_input_is_refused(qtype: str) -> None:
    with pytest.raises(lowbit.ShapeError, match="multiple of 16"):
        lowbit.quantize(np.ones((2, 40), F32), qtype)
    limit = {t.name: t.max_abs for t in lowbit.qtypes()}[qtype]
    for bad in (np.nan, np.inf, -np.inf, limit * 1.01):
        x = np.ones((3, 272), F32)
        x[2, 263] = bad  # in the partial super-block
        with pytest.raises(lowbit.InvalidValueError) as e:
            lowbit.quantize(x, qtype)
        assert (e.value.index, e.value.row, e.value.col) == (2 * 272 + 263, 2, 263)
    edge = np.full((1, 32), limit, F32)
    edge[0, 1::2] = -limit
    assert np.isfinite(lowbit.quantize(edge, qtype).dequantize()).all()
    for opts in ({"group_size": 16}, {"symmetric": True}, {"clip_ratio": 0.9}):
        with pytest.raises(lowbit.ParameterError):
            lowbit.quantize(np.ones((2, 32), F32), qtype, **opts)
    with pytest.raises(lowbit.QTypeError):
        lowbit.quantize(np.ones((2, 32), F32), qtype + "-sym")
    good = lowbit.quantize(np.ones((2, 272), F32), qtype)
    with pytest.raises(lowbit.ShapeError):
        lowbit.QTensor.from_bytes(good.data.tobytes()[:-1], qtype, (2, 272))
    with pytest.raises(lowbit.ParameterError, match="group-affine"):
        lowbit.QTensor(qtype, (2, 272), good.data, perm=np.arange(272))
