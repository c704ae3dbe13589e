"""W8A8 (int8 weights × int8 activations, `ActQuant`): `lowbit.matmul` bit for bit against an
independent numpy statement of the semantics at every ISA, the LBF round trip of the
`act_quant` part, the engine's layer (`layer_forward`) running W8A8 linears, and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from safetensors.numpy import load_file

import lowbit
from engine_fixtures import load_case
from lowbit import ActQuant, QTensor
from lowbit.calib.capture import TAPS, layer_forward
from lowbit.errors import InvalidValueError, ParameterError, ShapeError


def _weight(rows: int, cols: int, seed: int = 0) -> QTensor:
    """A random int8-row-sym weight; every third row all zero."""
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32) * 0.05
    w[2::3] = 0
    return lowbit.quantize(w, "int8-row-sym")


def np_w8a8(x: npt.NDArray[np.float32], qt: QTensor) -> npt.NDArray[np.float32]:
    """The semantics of `formats/LBF.md` §5 (`act_quant`) in numpy: codes
    round_half_even(clip(x / step, ±127)) in float32, exact integer sums with the stored codes
    minus 128, then (sum · scale) · step in float32. `x` (n, cols) → (n, rows)."""
    assert qt.act is not None
    rows, cols = qt.shape
    codes = qt.data[:, :cols].astype(np.int64) - 128
    scale = qt.data[:, cols : cols + 2].copy().view("<f2").astype(np.float32).reshape(rows)
    if qt.act.mode == "static":
        step = np.full((x.shape[0], 1), qt.act.step, np.float32)
    else:
        step = (np.abs(x).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)
    safe = np.where(step == 0, np.float32(1), step)
    q = np.where(step == 0, 0, np.clip(np.rint(x / safe), -127, 127)).astype(np.int64)
    isum = q @ codes.T
    out: npt.NDArray[np.float32] = (isum.astype(np.float32) * scale[None, :]) * step
    return out


def _acts(kind: str, n: int, cols: int, seed: int) -> npt.NDArray[np.float32]:
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, cols)).astype(np.float32)
    if kind == "zero-rows":
        x[::2] = 0
    elif kind == "huge":
        x *= np.float32(1e30)
    elif kind == "denormal":
        x *= np.float32(1e-39)
    elif kind == "outlier":
        x.reshape(-1)[5::97] = 300
    return x


def _bits(a: npt.NDArray[np.float32]) -> npt.NDArray[np.uint32]:
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


# -- ActQuant and QTensor ---------------------------------------------------------------------


def test_actquant_validates_and_rounds_the_step_to_float32() -> None:
    assert ActQuant("static", 0.1).step == float(np.float32(0.1))
    assert ActQuant("dynamic") == ActQuant("dynamic", 0.0)
    assert ActQuant("static", 1e-40).step > 0  # a subnormal float32 step is valid
    for step in (0.0, -1.0, float("nan"), float("inf"), 1e39, 1e-50):
        with pytest.raises(ParameterError, match="finite and > 0"):
            ActQuant("static", step)
    with pytest.raises(ParameterError, match="no step"):
        ActQuant("dynamic", 0.5)
    with pytest.raises(ParameterError, match="'static' or 'dynamic'"):
        ActQuant("per-channel", 0.5)  # type: ignore[arg-type]
    for bad in ("0.5", True, None):
        with pytest.raises(TypeError):
            ActQuant("static", bad)  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        ActQuant("dynamic").step = 1.0  # type: ignore[misc]


def test_qtensor_carries_act_only_on_int8_row_symmetric_weights() -> None:
    w = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    qt = lowbit.quantize(w, "int8-row-sym")
    a = qt.with_act(ActQuant("static", 0.05))
    assert a.act == ActQuant("static", 0.05) and qt.act is None
    assert np.shares_memory(a.data, qt.data)
    assert a.nbytes == qt.nbytes + 8 and a.bits_per_weight == 8 * a.nbytes / (4 * 64)
    assert "act=static(step=0.05)" in repr(a) and "act=dynamic" in repr(qt.with_act(ActQuant("dynamic")))
    assert a.with_act(None).act is None
    np.testing.assert_array_equal(lowbit.dequantize(a), lowbit.dequantize(qt))  # weights only
    same = QTensor(qt.qtype, qt.shape, qt.data, group_size=0, symmetric=True, act=ActQuant("dynamic"))
    assert same.act == ActQuant("dynamic")
    # One group of 128 on rows of 128 is one group per row.
    lowbit.quantize(np.ones((2, 128), np.float32), "int8-g128-sym").with_act(ActQuant("dynamic"))
    for qtype in ("int8-row", "int8-g32-sym", "int4-row-sym", "q4_0", "q8_0"):
        other = lowbit.quantize(w, qtype)
        with pytest.raises(ParameterError, match="int8-row-sym"):
            other.with_act(ActQuant("dynamic"))
    perm = np.arange(64)[::-1]
    with pytest.raises(ParameterError, match="permutation"):
        QTensor(qt.qtype, qt.shape, qt.data, group_size=0, symmetric=True, perm=perm, act=ActQuant("dynamic"))
    with pytest.raises(TypeError, match="ActQuant"):
        qt.with_act(("dynamic", 0.0))  # type: ignore[arg-type]
    cols = (1 << 17) + 8
    big = QTensor("int8-row-sym", (1, cols), np.full(cols + 2, 128, np.uint8))
    with pytest.raises(ShapeError, match="131072"):
        big.with_act(ActQuant("dynamic"))


# -- matmul -----------------------------------------------------------------------------------


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512", "neon"])
@pytest.mark.parametrize("rows,cols,n", [(1, 8, 1), (5, 40, 3), (13, 200, 5), (64, 576, 1), (300, 1544, 2)])
@pytest.mark.parametrize("kind", ["normal", "zero-rows", "huge", "denormal", "outlier"])
def test_matmul_is_the_numpy_semantics_bit_for_bit_at_every_isa(
    isa: str, rows: int, cols: int, n: int, kind: str
) -> None:
    if isa not in lowbit.available_isas():
        pytest.skip(f"{isa} is not available on this CPU (NEON runs under qemu: make test-neon)")
    qt = _weight(rows, cols, seed=rows)
    x = _acts(kind, n, cols, seed=cols)
    typical = max(float(np.abs(x).max()) / 127, 1e-30)
    for act in (ActQuant("dynamic"), ActQuant("static", typical), ActQuant("static", typical / 40)):
        w = qt.with_act(act)
        want = np_w8a8(x, w)
        np.testing.assert_array_equal(_bits(lowbit.matmul_reference(x, w)), _bits(want), err_msg=f"reference {act}")
        got = lowbit.matmul(x, w, isa=isa)
        np.testing.assert_array_equal(_bits(got), _bits(want), err_msg=f"{isa} {act}")


def test_one_dimensional_input_and_the_difference_from_weight_only() -> None:
    qt = _weight(16, 64)
    x = np.random.default_rng(1).standard_normal(64).astype(np.float32)
    w = qt.with_act(ActQuant("dynamic"))
    y = lowbit.matmul(x, w)
    assert y.shape == (16,)
    np.testing.assert_array_equal(_bits(y), _bits(np_w8a8(x[None], w)[0]))
    # Close to the weight-only product (half an activation step per value), but not equal.
    y_wo = lowbit.matmul(x, qt)
    dense = lowbit.dequantize(qt).astype(np.float64)
    bound = np.abs(dense).sum(1) * np.abs(x).max() / 127 * 0.51 + 1e-6
    assert (np.abs(y - dense @ x) <= bound).all()
    assert not np.array_equal(y, y_wo)


def test_matmul_refuses_bad_inputs_with_act() -> None:
    w = _weight(4, 64).with_act(ActQuant("static", 0.01))
    x = np.ones((2, 64), np.float32)
    x[1, 7] = np.nan
    with pytest.raises(InvalidValueError) as e:
        lowbit.matmul(x, w)
    assert (e.value.row, e.value.col) == (1, 7)
    with pytest.raises(ParameterError, match="W8A8"):
        lowbit.matmul(np.ones(64, np.float32), w, perm=np.arange(64))
    o = (np.array([0, 0, 0, 0, 0], np.uint64), np.zeros(0, np.uint32), np.zeros(0, np.float16))
    with pytest.raises(ParameterError, match="W8A8"):
        lowbit.matmul(np.ones(64, np.float32), w, outliers=o)


# -- LBF --------------------------------------------------------------------------------------


def test_lbf_round_trip_keeps_the_act_mode(tmp_path: Path) -> None:
    plain = _weight(8, 64)
    tensors = {
        "static": plain.with_act(ActQuant("static", 0.02)),
        "dynamic": _weight(8, 64, seed=3).with_act(ActQuant("dynamic")),
        "plain": plain,
    }
    path = tmp_path / "w8a8.lbf"
    lowbit.save(path, tensors)
    x = np.random.default_rng(2).standard_normal((3, 64)).astype(np.float32)
    with lowbit.load(path) as f:
        assert f.header["minor"] == 2
        for name, qt in tensors.items():
            back = f[name]
            assert isinstance(back, QTensor)
            assert back.act == qt.act and back.qtype == qt.qtype and back.nbytes == qt.nbytes
            np.testing.assert_array_equal(back.data, qt.data)
            np.testing.assert_array_equal(_bits(lowbit.matmul(x, back)), _bits(lowbit.matmul(x, qt)))
            assert ("act_quant" in [p.kind for p in f.info(name).parts]) == (qt.act is not None)
            assert f.info(name).nbytes == qt.nbytes
        f.verify()
    lowbit.save(tmp_path / "plain.lbf", {"plain": plain})
    with lowbit.load(tmp_path / "plain.lbf") as f:
        assert f.header["minor"] == 0, "files without act_quant stay 1.0"


def test_lbf_writer_refuses_act_parts_where_undefined(tmp_path: Path) -> None:
    from lowbit import _core

    part = ActQuant("dynamic")._to_bytes()
    q4 = lowbit.quantize(np.ones((1, 32), np.float32), "q4_0")
    i8 = _weight(1, 64)
    w = _core.LbfWriter(str(tmp_path / "x.lbf"), [])
    with pytest.raises(ParameterError, match="int8-row-sym"):
        w.add_tensor("q4", "q4_0", [1, 32], [("data", q4.data.reshape(-1)), ("act_quant", part)])
    bad = np.frombuffer(b"\x02\x00\x00\x00\x00\x00\x80\x3f", np.uint8)
    with pytest.raises(ParameterError, match="step 0"):
        w.add_tensor("i8", "int8-row-sym", [1, 64], [("data", i8.data.reshape(-1)), ("act_quant", bad)])
    with pytest.raises(ShapeError, match="act_quant is 4 bytes"):
        w.add_tensor("i8", "int8-row-sym", [1, 64], [("data", i8.data.reshape(-1)), ("act_quant", part[:4])])
    w.abort()
    assert list(tmp_path.iterdir()) == []


# -- the engine -------------------------------------------------------------------------------


def test_layer_forward_runs_w8a8_linears() -> None:
    """One llama layer with every linear W8A8 (static steps for attention, dynamic for the
    MLP). The taps give the exact inputs the engine multiplied, so with numpy W8A8 linears the
    two residual adds reproduce the layer's output bit for bit, and the MLP's inner product
    (silu(gate) · up) its down_proj input closely; weight-only int8 linears do not."""
    hf, tokens, _ = load_case("llama_untied")
    cfg: dict[str, Any] = json.loads((hf / "config.json").read_text())
    t = {k: v.astype(np.float32) for k, v in load_file(str(hf / "model.safetensors")).items()}
    p = "model.layers.0."
    layer: dict[str, Any] = {k[len(p) :]: v for k, v in t.items() if k.startswith(p)}
    x = t["model.embed_tokens.weight"][tokens.astype(np.int64)]
    for name in [k for k, v in layer.items() if v.ndim == 2]:
        qt = lowbit.quantize(layer[name], "int8-row-sym")
        layer[name] = qt.with_act(ActQuant("static", 0.02) if "self_attn" in name else ActQuant("dynamic"))
    for isa in lowbit.available_isas():
        y, acts = layer_forward(cfg, layer, x, len(tokens), TAPS, isa=isa)
        o = np_w8a8(acts["o_in"], layer["self_attn.o_proj.weight"])
        down = np_w8a8(acts["down_in"], layer["mlp.down_proj.weight"])
        np.testing.assert_array_equal(_bits((x + o) + down), _bits(y), err_msg=isa)
        gate = np_w8a8(acts["mlp_in"], layer["mlp.gate_proj.weight"]).astype(np.float64)
        up = np_w8a8(acts["mlp_in"], layer["mlp.up_proj.weight"]).astype(np.float64)
        np.testing.assert_allclose(acts["down_in"], gate / (1 + np.exp(-gate)) * up, rtol=1e-5, atol=1e-6)
    weight_only = {k: v.with_act(None) if isinstance(v, QTensor) else v for k, v in layer.items()}
    y_wo, _ = layer_forward(cfg, weight_only, x, len(tokens))
    assert not np.array_equal(y_wo, y)
