"""Sparse outliers (issue 8): `lowbit.Outliers` carried by a QTensor through dequantize, matmul,
LBF files and the layer forward; their selection (`lowbit.algos.outliers`, GPTQ's Hessian-weighted
choice in `gptq_blocks`); `convert --outliers` and its bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import lowbit
import synth
from lowbit.algos.gptq import output_error
from lowbit.algos.gptq_blocks import _affine, _segments, gptq_blocks
from lowbit.algos.outliers import (
    fill_group_mean,
    outlier_budget,
    parse_fraction,
    quantize_with_outliers,
    select_outliers,
)
from lowbit.algos.sequential import GPTQConfig
from lowbit.calib.capture import layer_forward
from lowbit.errors import ParameterError, ShapeError, UnsupportedError

F32 = npt.NDArray[np.float32]
CAL: dict[str, Any] = {"calib_samples": 4, "calib_seq_len": 32}


def _weights(rows: int = 48, cols: int = 256, planted: int = 12, seed: int = 0) -> tuple[F32, list[tuple[int, int]]]:
    """Gaussian weights with `planted` weights 12× larger at distinct random positions."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)
    flat = rng.choice(rows * cols, planted, replace=False)
    pos = [divmod(int(k), cols) for k in flat]
    for r, c in pos:
        w[r, c] = np.float32(0.24 * (1 if (r + c) % 2 else -1))
    return w, pos


def _sidecar(rows: int, cols: int, nnz: int, seed: int = 3) -> lowbit.Outliers:
    rng = np.random.default_rng(seed)
    flat = rng.choice(rows * cols, nnz, replace=False)
    r, c = np.divmod(flat, cols)
    return lowbit.Outliers.from_coo(rows, r, c, rng.standard_normal(nnz).astype(np.float32))


# --------------------------------------------------------------------------------------------
# The QTensor sidecar


def test_outliers_add_to_dequantize_and_matmul_in_stored_column_order() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((24, 64)).astype(np.float32)
    perm = rng.permutation(64).astype(np.uint32)
    stored = lowbit.quantize(np.ascontiguousarray(w[:, perm]), "int4-g32")
    plain = lowbit.QTensor(stored.qtype, stored.shape, stored.data, perm=perm)
    o = _sidecar(24, 64, 30)
    qt = plain.with_outliers(o)
    assert qt.outliers is not None and qt.outliers.cols.tolist() == o.cols.tolist()
    assert qt.nbytes == plain.nbytes + 8 * 25 + 6 * 30 and "30 outliers" in repr(qt)
    # independent: outlier (r, stored column c) lands on input column perm[c]
    want = lowbit.dequantize(plain)
    r, c, v = o.coo()
    want[r, perm[c]] += v
    np.testing.assert_array_equal(lowbit.dequantize(qt), want)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    ref = lowbit.matmul_reference(x, qt)
    np.testing.assert_allclose(ref, x.astype(np.float64) @ want.T.astype(np.float64), rtol=1e-5, atol=1e-5)
    # the tensor's own sidecar is used, as if passed explicitly
    np.testing.assert_array_equal(lowbit.matmul(x, qt), lowbit.matmul(x, plain, outliers=o))
    with pytest.raises(ParameterError, match="carries its own outliers"):
        lowbit.matmul(x, qt, outliers=o)


def test_bad_sidecars_are_typed_errors() -> None:
    q = lowbit.quantize(np.ones((3, 32), np.float32), "q8_0")
    ptr, cols, vals = np.array([0, 1, 2, 2], np.uint64), np.array([4, 5], np.uint32), np.ones(2, np.float16)
    q.with_outliers((ptr, cols, vals))  # well formed
    with pytest.raises(ShapeError):
        q.with_outliers((ptr[:-1], cols, vals))
    with pytest.raises(ParameterError, match="rise from 0"):
        q.with_outliers((np.array([0, 2, 1, 2], np.uint64), cols, vals))
    with pytest.raises(ParameterError, match="outside"):
        q.with_outliers((ptr, np.array([4, 32], np.uint32), vals))
    with pytest.raises(ParameterError, match="increase strictly"):
        q.with_outliers((np.array([0, 2, 2, 2], np.uint64), np.array([5, 5], np.uint32), vals))
    with pytest.raises(ParameterError, match="finite"):
        q.with_outliers((ptr, cols, np.array([1, np.inf], np.float16)))
    with pytest.raises(TypeError, match="float16"):
        q.with_outliers((ptr, cols, np.ones(2, np.float32)))
    with pytest.raises(ParameterError, match="same position"):
        lowbit.Outliers.from_coo(3, [1, 1], [4, 4], [1.0, 2.0])
    w8 = lowbit.quantize(np.ones((3, 32), np.float32), "int8-row-sym")
    with pytest.raises(ParameterError, match="outliers"):
        w8.with_act(lowbit.ActQuant("dynamic")).with_outliers((ptr, cols, vals))


def test_lbf_round_trip_and_the_layer_forward_use_the_sidecar(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((40, 96)).astype(np.float32)
    qt = lowbit.quantize(w, "q4_0").with_outliers(_sidecar(40, 96, 25))
    p = tmp_path / "o.lbf"
    lowbit.save(p, {"w": qt})
    with lowbit.load(p) as f:
        f.verify()
        got = f["w"]
        assert isinstance(got, lowbit.QTensor) and got.outliers is not None
        assert [p.kind for p in f.info("w").parts] == ["data", "outlier_rows", "outlier_cols", "outlier_vals"]
        assert got.nbytes == qt.nbytes == f.info("w").nbytes
        np.testing.assert_array_equal(lowbit.dequantize(got), lowbit.dequantize(qt))


def test_a_float_weight_with_outliers_reads_back_as_a_qtensor(tmp_path: Path) -> None:
    w = np.random.default_rng(4).standard_normal((8, 32)).astype(np.float32)
    qt = lowbit.QTensor("f32", (8, 32), w.view(np.uint8).reshape(8, -1), outliers=_sidecar(8, 32, 5))
    lowbit.save(tmp_path / "f.lbf", {"w": qt, "plain": w})
    with lowbit.load(tmp_path / "f.lbf") as f:
        got, plain = f["w"], f["plain"]
        assert isinstance(got, lowbit.QTensor) and got.outliers is not None and isinstance(plain, np.ndarray)
        want = w.copy()
        r, c, v = got.outliers.coo()
        want[r, c] += v
        np.testing.assert_array_equal(lowbit.dequantize(got), want)


def test_layer_forward_with_outliers_matches_the_dequantized_layer(tmp_path: Path) -> None:
    vals = synth.make_checkpoint(tmp_path / "m", n_layers=1, hidden=64, ffn=128, heads=4, kv_heads=2)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    p = "model.layers.0."
    layer = {k[len(p) :]: v for k, v in vals.items() if k.startswith(p)}
    quant: dict[str, Any] = dict(layer)
    deq = dict(layer)
    for k, v in layer.items():
        if v.ndim == 2:
            quant[k] = quantize_with_outliers(v, "int4-g32", 0.02)
            assert quant[k].outliers is not None
            deq[k] = lowbit.dequantize(quant[k])
    x = np.random.default_rng(2).standard_normal((32, 64)).astype(np.float32)
    y_q, _ = layer_forward(cfg, quant, x, 16)
    y_d, _ = layer_forward(cfg, deq, x, 16)
    without = {k: (v.with_outliers(None) if isinstance(v, lowbit.QTensor) else v) for k, v in quant.items()}
    y_w, _ = layer_forward(cfg, without, x, 16)
    err, err_without = np.abs(y_q - y_d).max(), np.abs(y_w - y_d).max()
    # the int8 activation quantization leaves a small difference; dropping the sidecar a larger one
    assert err < 0.02 * np.abs(y_d).max() and err < err_without / 3


# --------------------------------------------------------------------------------------------
# Selection without calibration


@pytest.mark.parametrize("method", ["magnitude", "deviation"])
def test_planted_outliers_are_found(method: str) -> None:
    w, pos = _weights()
    mask = select_outliers(w, len(pos), method)
    assert mask.sum() == len(pos)
    assert all(mask[r, c] for r, c in pos)


@pytest.mark.parametrize("qtype", ["int3-g128", "q3_kr", "q4_0", "int4-g64-sym"])
def test_keeping_outliers_lowers_the_error_at_the_budget(qtype: str) -> None:
    w, pos = _weights(planted=24)
    plain = lowbit.dequantize(lowbit.quantize(w, qtype))
    q = quantize_with_outliers(w, qtype, 0.002)
    assert q.outliers is not None and q.outliers.nnz == outlier_budget(0.002, *w.shape) == 24
    got = lowbit.dequantize(q)
    # the planted weights come back to within f16 rounding of their residual, the rest improves
    for r, c in pos:
        assert abs(got[r, c] - w[r, c]) <= 1e-3 * abs(w[r, c])
    assert np.linalg.norm(got - w) < 0.8 * np.linalg.norm(plain - w)


def test_the_refit_ignores_the_chosen_weights() -> None:
    w = np.arange(32, dtype=np.float32).reshape(1, 32)
    mask = np.zeros_like(w, bool)
    mask[0, [3, 20]] = True
    mask[0, 16:32] = mask[0, 16:32] | (np.arange(16) >= 0)  # a whole group masked → 0
    filled = fill_group_mean(w, mask)
    others = [v for v in range(16) if v != 3]
    assert filled[0, 3] == np.float32(np.mean(others)) and (filled[0, 16:] == 0).all()
    assert np.array_equal(filled[0, :3], w[0, :3])


@pytest.mark.parametrize(
    ("spec", "want"), [("0.5%", 0.005), ("0.005", 0.005), (0.01, 0.01), ("10%", 0.1), (" 2e-3 ", 0.002)]
)
def test_parse_fraction(spec: Any, want: float) -> None:
    assert parse_fraction(spec) == pytest.approx(want)


@pytest.mark.parametrize("spec", ["0", "0%", "10.5%", "0.2", "-1%", "abc", "1%%", "", "nan", True, float("inf")])
def test_parse_fraction_rejects(spec: Any) -> None:
    with pytest.raises(ParameterError, match="outlier budget"):
        parse_fraction(spec)


# --------------------------------------------------------------------------------------------
# GPTQ's Hessian-weighted choice


def _hessian(cols: int, spread: float = 0.3, seed: int = 4) -> npt.NDArray[np.float64]:
    """Σ x xᵀ of 4·cols correlated-free inputs whose columns' scales are log-normal (`spread`)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4 * cols, cols)) * np.exp(spread * rng.standard_normal(cols))
    h: npt.NDArray[np.float64] = x.T @ x
    return h


def test_group_affine_blocks_join_into_the_row_layout() -> None:
    # quantizing each group alone as a one-group row, then joining, gives the whole row's bytes
    rng = np.random.default_rng(5)
    for qtype in ["int4-g64", "int3-g32", "int2-g128", "int8-g64-sym", "int3-g128"]:
        w = rng.standard_normal((6, 320)).astype(np.float32)
        aff = _affine(qtype, 6, 320)
        assert aff is not None
        segs = _segments(qtype, 320, aff)
        blocks = [lowbit.quantize(np.ascontiguousarray(w[:, a:b]), t).data for a, b, t in segs]
        joined = aff.join(blocks, [b - a for a, b, _ in segs])
        assert np.array_equal(joined, lowbit.quantize(w, qtype).data), qtype


@pytest.mark.parametrize("qtype", ["int4-g128", "int3-g64", "q4_kr", "q3_k", "q4_0", "int3-g16-dq"])
def test_gptq_with_outliers_finds_the_planted_ones_and_lowers_the_error(qtype: str) -> None:
    cols = 256 if qtype == "q3_k" else 320
    w, pos = _weights(rows=40, cols=cols, planted=10)
    h = _hessian(cols)
    frac = 20 / w.size
    r = gptq_blocks(w, h, qtype, outliers=frac)
    o = r.qtensor.outliers
    assert o is not None and 0 < o.nnz <= 20
    rows_, cols_, _ = o.coo()
    kept = set(zip(rows_.tolist(), cols_.tolist(), strict=True))
    assert sum((p in kept) for p in pos) >= 9, kept
    # GPTQ's loop value (dequantize, sidecar included) is what the error reports, and it beats
    # round-to-nearest and the same loop without outliers
    assert r.error == pytest.approx(output_error(w, lowbit.dequantize(r.qtensor), h), rel=1e-6)
    assert r.error < r.rtn_error
    if not qtype.startswith("int"):
        assert r.error < gptq_blocks(w, h, qtype).error


def test_gptq_outlier_config_rules() -> None:
    with pytest.raises(ParameterError, match="act-order"):
        GPTQConfig(act_order=True, outliers=0.01)
    with pytest.raises(ParameterError, match="fraction"):
        GPTQConfig(outliers=0.5)
    w = np.zeros((8, 64), np.float32)
    with pytest.raises(ParameterError, match="with outliers"):
        gptq_blocks(w, np.eye(64), "int4-g32")


# --------------------------------------------------------------------------------------------
# convert --outliers


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("outl") / "m"
    synth.make_checkpoint(d, n_layers=2, hidden=128, ffn=256, heads=4, kv_heads=2)
    return d


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_convert_with_outliers(model: Path, tmp_path: Path, method: str) -> None:
    out = tmp_path / f"{method}.lbf"
    kw: dict[str, Any] = {"method": method, **CAL} if method != "rtn" else {}
    plain = lowbit.convert(model, tmp_path / "plain.lbf", "int3-g64", progress=False, **kw)
    r = lowbit.convert(model, out, "int3-g64", outliers="1%", progress=False, **kw)
    assert r.bits_per_weight > plain.bits_per_weight
    with lowbit.load(out) as f:
        f.verify()
        params = json.loads(f.metadata["quantization.params"])
        assert params["outliers"]["fraction"] == 0.01
        assert params["outliers"]["selection"] == ("gptq-hessian" if method == "gptq" else "magnitude")
        n = 0
        for e in r.plan:
            t = f[e.name]
            if ".layers." in e.name and len(e.shape) == 2:  # the decoder linears carry them
                assert isinstance(t, lowbit.QTensor) and t.outliers is not None, e.name
                assert 0 < t.outliers.nnz <= outlier_budget(0.01, *e.shape) == e.outliers
                n += 1
            else:
                assert not isinstance(t, lowbit.QTensor) or t.outliers is None
            assert f.info(e.name).nbytes == e.nbytes  # the plan counts the sidecar
        assert n == 2 * 7
    # the sidecar's weights cost bits and pay back in accuracy
    assert np.mean([r.rel_rmse[k] for k in r.rel_rmse]) < np.mean([plain.rel_rmse[k] for k in plain.rel_rmse])
    with lowbit.Model.load(out) as m:
        assert np.isfinite(m.logits([1, 2, 3])).all()


def test_convert_outliers_bad_input(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.lbf"
    for bad in ["0%", "11%", "abc", "-0.5%"]:
        with pytest.raises(ParameterError, match="outlier budget"):
            lowbit.convert(model, out, "int4", outliers=bad, progress=False)
    with pytest.raises(ParameterError, match=r"GGUF cannot hold outliers.*model\.layers\.0\.self_attn\.q_proj\.weight"):
        lowbit.convert(model, out, "q4_0", outliers="0.5%", gguf_compatible=True, progress=False)
    with pytest.raises(ParameterError, match="awq\\+gptq"):
        lowbit.convert(model, out, "int4", outliers="0.5%", method="awq", progress=False, **CAL)
    with pytest.raises(ParameterError, match="W8A8"):
        lowbit.convert(model, out, "int4", outliers="0.5%", act="int8", progress=False, **CAL)
    with pytest.raises(ParameterError, match="outlier method"):
        lowbit.convert(model, out, "int4", outliers="0.5%", outlier_method="biggest", progress=False)
    assert not out.exists()


def test_gguf_export_refuses_outliers_naming_the_tensors(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.lbf"
    lowbit.convert(model, out, "q4_0", outliers="0.5%", progress=False)
    dest = tmp_path / "q.gguf"
    with pytest.raises(UnsupportedError, match=r"model.layers.1.mlp.down_proj.weight \(q4_0 with outlier"):
        lowbit.conversion.export_gguf(out, dest)
    assert not dest.exists()


def test_cli_outliers(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lowbit.cli import main

    assert main(["convert", str(model), "-t", "int4", "--outliers", "0.5%", "--dry-run"]) == 0
    assert "outliers" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["convert", str(model), "-t", "int4", "--outlier-method", "biggest", "--dry-run"])
