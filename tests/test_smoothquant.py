"""SmoothQuant and int8 activations (`lowbit.algos.smooth`, `convert --act int8 [--method
smoothquant]`): the smoothing scale, that it flattens activation outliers and lowers the W8A8
error, the steps and observers, the files, and bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lowbit
import synth
from lowbit.algos.scaling import scale_groups
from lowbit.algos.smooth import W8A8_QTYPE, W8A8Config, act_step, smooth_scale
from lowbit.calib.observers import OBSERVER_NAMES
from lowbit.cli import main
from lowbit.errors import LowbitWarning, ParameterError

CAL: dict[str, Any] = {"calib_samples": 4, "calib_seq_len": 32}
CFG = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
       "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 10}  # fmt: skip


def _outlier_model(d: Path, *, zero_attn: bool = False) -> Path:
    """A tiny llama whose attention input has 3 outlier channels (input norm weights × 40), as
    trained LLMs do; with `zero_attn` the attention input is all zero."""
    values = synth.make_checkpoint(d, n_layers=2, hidden=128, ffn=256, heads=4, kv_heads=2)
    for i in range(2):
        norm = values[f"model.layers.{i}.input_layernorm.weight"]
        if zero_attn:
            norm[:] = 0
        else:
            norm[[3, 50, 97]] *= 40
    synth.write_safetensors(d / "model.safetensors", {k: ("F32", v) for k, v in values.items()})
    return d


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _outlier_model(tmp_path_factory.mktemp("sq") / "m")


def test_smoothing_scale_balances_activation_and_weight_ranges() -> None:
    rng = np.random.default_rng(0)
    g = next(g for g in scale_groups(CFG, {}) if g.tap == "mlp_in")
    w1, w2 = rng.standard_normal((64, 32)).astype(np.float32), rng.standard_normal((64, 32)).astype(np.float32)
    xmax = np.abs(rng.standard_normal(32)) * np.where(np.arange(32) < 2, 50, 1)
    xmax[5] = 0.0  # a dead channel
    s, dead = smooth_scale(g, {"a": w1, "b": w2}, xmax, 0.5)
    wmax = np.maximum(np.abs(w1).max(0), np.abs(w2).max(0)).astype(np.float64)
    assert dead == 1 and s[5] == 1.0
    live = np.arange(32) != 5
    np.testing.assert_allclose(s[live], np.sqrt(xmax[live]) / np.sqrt(wmax[live]), rtol=1e-12)
    # α = 0.5 makes the smoothed activation range equal to the scaled weight range, per channel
    np.testing.assert_allclose((xmax / s)[live], (wmax * s)[live], rtol=1e-12)
    s1, _ = smooth_scale(g, {"a": w1}, xmax, 1.0)
    np.testing.assert_allclose(s1[live], xmax[live], rtol=1e-12)  # α = 1: all difficulty to the weights


def test_smoothing_scale_is_per_value_channel_under_gqa() -> None:
    shapes = {"self_attn.v_proj.weight": np.zeros((16, 32)), "self_attn.o_proj.weight": np.zeros((32, 32))}
    g = next(g for g in scale_groups(CFG, shapes) if g.tap == "o_in")
    rng = np.random.default_rng(1)
    xmax = np.abs(rng.standard_normal(32))
    w = rng.standard_normal((32, 32)).astype(np.float32)
    s, _ = smooth_scale(g, {"o": w}, xmax, 0.5)
    assert s.shape == (16,)
    # channel 0 feeds o's columns 0 and 8: the max over both
    x0, w0 = max(xmax[0], xmax[8]), max(np.abs(w[:, 0]).max(), np.abs(w[:, 8]).max())
    assert s[0] == pytest.approx(np.sqrt(x0 / w0), rel=1e-12)


def test_act_step() -> None:
    assert act_step(-2.54, 1.0) == pytest.approx(0.02)
    assert act_step(0.0, 0.0) == 0.0


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"alpha": 1.5}, "alpha"), ({"alpha": -0.1}, "alpha"), ({"alpha": float("nan")}, "alpha"),
     ({"observer": "max"}, "observer"), ({"act": "int4"}, "act")],
)  # fmt: skip
def test_bad_config(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        W8A8Config(**kw)


def test_smoothquant_lowers_the_w8a8_error_on_outlier_channels(model: Path, tmp_path: Path) -> None:
    plain = lowbit.convert(model, tmp_path / "p.lbf", "q8_0", act="int8", progress=False, **CAL)
    smooth = lowbit.convert(model, tmp_path / "s.lbf", "q8_0", method="smoothquant", act="int8", progress=False, **CAL)
    qkv = [n for n in smooth.linears if "self_attn.q_proj" in n or "self_attn.v_proj" in n]
    for n in qkv:  # the outlier channels: smoothing lowers the error of the readers by a wide margin
        assert smooth.linears[n].error < 0.5 * smooth.linears[n].rtn_error, n
        assert plain.linears[n].error == pytest.approx(plain.linears[n].rtn_error, rel=1e-6)  # no smoothing
    with lowbit.load(tmp_path / "s.lbf") as f:
        assert f.metadata["quantization.method"] == "smoothquant"
        params = json.loads(f.metadata["quantization.params"])
        assert params["w8a8"] == {"act": "static", "observer": "minmax", "alpha": 0.5}
        assert set(params["layers"][0]["steps"]) == {"attn_in", "o_in", "mlp_in", "down_in"}
        q = f["model.layers.0.self_attn.q_proj.weight"]
        assert isinstance(q, lowbit.QTensor) and q.qtype == W8A8_QTYPE
        assert q.act == lowbit.ActQuant("static", params["layers"][0]["steps"]["attn_in"])
        assert f.info("model.embed_tokens.weight").qtype == "q8_0"  # the rest follows the recipe
    with lowbit.load(tmp_path / "p.lbf") as f:
        assert f.metadata["quantization.method"] == "w8a8"
    tokens = list(range(1, 40))
    ref = tmp_path / "ref.lbf"
    lowbit.convert(model, ref, "f32", progress=False)
    with lowbit.Model.load(ref) as m:
        y = np.asarray(m.logits(tokens))
    errs = {}
    for name in ("p", "s"):
        with lowbit.Model.load(tmp_path / f"{name}.lbf") as m:
            errs[name] = float(np.abs(np.asarray(m.logits(tokens)) - y).mean())
    assert errs["s"] < errs["p"]


@pytest.mark.parametrize("observer", OBSERVER_NAMES)
def test_every_observer_gives_a_runnable_file(observer: str, model: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.lbf"
    r = lowbit.convert(model, out, "q8_0", method="smoothquant", act="int8", observer=observer, progress=False, **CAL)
    steps = [rep.extra["step"] for rep in r.linears.values()]
    assert all(s > 0 and np.isfinite(s) for s in steps)
    with lowbit.Model.load(out) as m:
        assert np.isfinite(m.logits([1, 2, 3])).all()


def test_dynamic_activations(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "d.lbf"
    r = lowbit.convert(model, out, "q8_0", method="smoothquant", act="int8-dynamic", progress=False, **CAL)
    assert all(rep.extra["step"] is None for rep in r.linears.values())
    with lowbit.load(out) as f:
        q = f["model.layers.1.mlp.down_proj.weight"]
        assert isinstance(q, lowbit.QTensor) and q.act == lowbit.ActQuant("dynamic")


def test_all_zero_activations_get_a_placeholder_step_and_a_warning(tmp_path: Path) -> None:
    m = _outlier_model(tmp_path / "z", zero_attn=True)
    with pytest.warns(LowbitWarning, match="all zero"):
        r = lowbit.convert(m, tmp_path / "z.lbf", "q8_0", method="smoothquant", act="int8", progress=False, **CAL)
    q_step = r.linears["model.layers.0.self_attn.q_proj.weight"].extra["step"]
    assert q_step == 1.0
    assert r.layers[0]["dead_channels"]["attn_in"] == 128  # nothing to smooth: every scale is 1


def test_bad_input(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.lbf"
    with pytest.raises(ParameterError, match="smoothquant"):
        lowbit.convert(model, out, "q8_0", method="smoothquant", progress=False)
    with pytest.raises(ParameterError, match="--act"):
        lowbit.convert(model, out, "q8_0", method="gptq", act="int8", progress=False)
    with pytest.raises(ParameterError, match="act"):
        lowbit.convert(model, out, "q8_0", act="int4", progress=False)
    with pytest.raises(ParameterError, match="alpha"):
        lowbit.convert(model, out, "q8_0", method="smoothquant", act="int8", smooth_alpha=2.0, progress=False)
    assert not out.exists()


def test_cli(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--calib-samples", "2", "--calib-seq-len", "32", "--no-progress"]
    out = tmp_path / "c.lbf"
    sq = ["--method", "smoothquant", "--act", "int8", "--observer", "percentile", "--smooth-alpha", "0.6"]
    assert main(["convert", str(model), "-o", str(out), "-t", "q8_0", *sq, *args]) == 0
    assert "smoothquant: 14 linears" in capsys.readouterr().out
    with lowbit.load(out) as f:
        assert json.loads(f.metadata["quantization.params"])["w8a8"]["alpha"] == 0.6
    rc = main(["convert", str(model), "-o", str(tmp_path / "a.lbf"), "-t", "int4-g64", "--method", "awq", *args])
    assert rc == 0 and "awq: 14 linears" in capsys.readouterr().out
    assert main(["convert", str(model), "-o", str(tmp_path / "x.lbf"), "--act", "int8", "--method", "awq"]) == 2
    assert "--act" in capsys.readouterr().err
