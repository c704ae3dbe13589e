"""AWQ (`lowbit.algos.awq`, `convert --method awq|awq+gptq`) and the scale folding it shares with
SmoothQuant (`lowbit.algos.scaling`): the fold leaves the float model unchanged, the scale search
finds salient channels, clipping, skipped groups, and the conversion end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import lowbit
import synth
from lowbit.algos.awq import AWQConfig, awq_layer, search_clip, search_scale
from lowbit.algos.gptq import output_error
from lowbit.algos.scaling import fold, scale_groups
from lowbit.calib.capture import collect, embed, layer_weights
from lowbit.calib.data import calibration_tokens
from lowbit.conversion.hf_source import resolve_source
from lowbit.errors import LowbitWarning, ParameterError

CAL: dict[str, Any] = {"calib_samples": 4, "calib_seq_len": 32}
F32 = npt.NDArray[np.float32]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("awq") / "m"
    synth.make_checkpoint(d, n_layers=2, hidden=128, ffn=256, heads=4, kv_heads=2)
    return d


def _config(d: Path) -> dict[str, Any]:
    cfg: dict[str, Any] = json.loads((d / "config.json").read_text())
    return cfg


def _logits(d: Path, tmp: Path, tokens: list[int]) -> F32:
    out = tmp / f"{d.name}.lbf"
    lowbit.convert(d, out, "f32", progress=False)
    with lowbit.Model.load(out) as m:
        return np.asarray(m.logits(tokens), np.float32)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_folding_scales_leaves_the_float_model_unchanged(arch: str, tmp_path: Path) -> None:
    # GQA (4 query heads on 2 value heads: the v → o scale is tied per value channel) and, for
    # qwen2, q/k/v biases (v's bias is divided with its rows)
    src = tmp_path / "src"
    values = synth.make_checkpoint(src, arch=arch, n_layers=2, hidden=64, ffn=128, heads=4, kv_heads=2)
    cfg = _config(src)
    rng = np.random.default_rng(1)
    folded = dict(values)
    n_scaled = 0
    for i in range(2):
        p = f"model.layers.{i}."
        layer = {k[len(p) :]: v for k, v in folded.items() if k.startswith(p)}
        for g in scale_groups(cfg, layer):
            assert not g.skip, g
            n_ch = int(g.index.max()) + 1 if g.index is not None else layer[f"{g.linears[0]}.weight"].shape[1]
            s = np.exp(rng.standard_normal(n_ch)).astype(np.float32)  # scales over ~2 decades
            changed = fold(layer, g, s)
            layer.update(changed)
            n_scaled += len(changed)
        folded.update({p + k: v for k, v in layer.items()})
    assert n_scaled == 2 * (4 + 2 + 3 + 2 + (arch == "qwen2"))  # tensors changed per layer: producers + readers
    # a different model on paper...
    assert not np.allclose(
        folded["model.layers.0.self_attn.v_proj.weight"], values["model.layers.0.self_attn.v_proj.weight"]
    )
    dst = tmp_path / "folded"
    shutil.copytree(src, dst)
    synth.write_safetensors(dst / "model.safetensors", {k: ("F32", v) for k, v in folded.items()})
    tokens = list(rng.integers(0, 320, 24))
    a, b = _logits(src, tmp_path, tokens), _logits(dst, tmp_path, tokens)
    # ... computing the same function
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * float(np.abs(a).max()))


def test_gqa_scale_is_per_value_channel() -> None:
    cfg = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 10}  # fmt: skip
    shapes = {"self_attn.v_proj.weight": np.zeros((16, 32)), "self_attn.o_proj.weight": np.zeros((32, 32))}
    g = next(g for g in scale_groups(cfg, shapes) if g.tap == "o_in")
    assert g.index is not None
    # head_dim 8: query heads 0, 1 read value head 0, heads 2, 3 value head 1
    assert list(g.index[:8]) == list(range(8)) and list(g.index[8:16]) == list(range(8))
    assert list(g.index[16:24]) == list(range(8, 16)) and list(g.index[24:]) == list(range(8, 16))
    v = np.arange(32, dtype=np.float64)
    assert g.reduce(v, "max")[0] == 8 and g.reduce(v)[0] == 4  # columns 0 and 8 share channel 0


def _salient_case(seed: int = 0) -> tuple[F32, F32, npt.NDArray[np.float64]]:
    """A weight and activations where 4 of 256 input channels are 30× larger than the others."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4096, 256)).astype(np.float32)
    x[:, :4] *= 30
    w = (rng.standard_normal((64, 256)) * 0.02).astype(np.float32)
    h = (x.T @ x / len(x)).astype(np.float32)
    return w, h, np.abs(x).mean(axis=0).astype(np.float64)


def test_scale_search_protects_salient_channels() -> None:
    w, h, mean_abs = _salient_case()
    cfg = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 64, "num_hidden_layers": 1,
           "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 10}  # fmt: skip
    g = next(g for g in scale_groups(cfg, {}) if g.tap == "mlp_in")
    readers = {"mlp.up_proj.weight": w}
    qtypes = {"mlp.up_proj.weight": "int3-g128"}
    alpha, s, losses = search_scale(readers, qtypes, h, mean_abs, g, grid=20)
    rtn = lowbit.quantize(w, "int3-g128").dequantize()
    # α = 0 is plain round-to-nearest, measured the same way
    assert losses[0] == pytest.approx(float(np.einsum("ij,ij->", (rtn - w) @ h, rtn - w)), rel=1e-4)
    assert alpha > 0 and min(losses) == losses[round(alpha * 20)]
    assert min(losses) < 0.7 * losses[0]
    assert s[:4].min() > s[4:].max()  # the salient channels get the largest scales
    assert float(s.max()) * float(s.min()) == pytest.approx(1.0, rel=1e-6)


def test_clip_search_never_loses_to_the_full_range_per_group() -> None:
    rng = np.random.default_rng(2)
    w = rng.standard_t(2, (32, 256)).astype(np.float32) * 0.02  # heavy tails: clipping pays
    x = rng.standard_normal((2048, 256)).astype(np.float32)
    h = (x.T @ x / len(x)).astype(np.float32)
    lo, hi, ratio = search_clip(w, "int4-g128", h, clip_grid=20, max_shrink=0.5)
    assert ratio.shape == (32, 2) and ratio.min() >= 0.525 - 1e-6 and ratio.max() <= 1.0
    assert (ratio < 1).mean() > 0.5
    full = lowbit.quantize(w, "int4-g128").dequantize()
    clipped = lowbit.quantize(w, "int4-g128", group_min=lo, group_max=hi).dequantize()
    assert output_error(w, clipped, h) < output_error(w, full, h)


def test_groups_that_cannot_be_scaled_are_left_alone_with_a_warning(model: Path) -> None:
    cfg = _config(model)
    with resolve_source(model) as src:
        tensors = {t.name: t for t in src.tensors}
        w = layer_weights(tensors, 0)
    qtypes = {k: "int4-g128" for k in w if k.endswith("_proj.weight")}
    qtypes["mlp.gate_proj.weight"] = qtypes["mlp.up_proj.weight"] = "f16"
    bad = dict(w)
    bad["self_attn.o_proj.weight"] = np.zeros((128, 96), np.float32)  # not heads × head_dim inputs
    zeros = {t: np.zeros(n) for t, n in (("attn_in", 128), ("o_in", 96), ("mlp_in", 128), ("down_in", 256))}
    hess = {t: np.zeros((len(v), len(v))) for t, v in zeros.items()}
    with pytest.warns(LowbitWarning) as rec:
        folded, scales, reports = awq_layer(cfg, bad, hess, zeros, 0, qtypes, AWQConfig(grid=4))
    why = {r.tap: r.skip for r in reports}
    assert "v → o" in why["o_in"] and "floats" in why["mlp_in"] and not why["attn_in"] and not why["down_in"]
    assert len(rec) == 2
    assert "self_attn.o_proj.weight" not in folded and (scales["self_attn.o_proj.weight"][1] == 1).all()
    # all-zero activations: every scale is 1 (nothing to protect), nothing is NaN
    assert all((r == 1).all() and (c == 1).all() for r, c in scales.values())
    assert all(np.isfinite(v).all() for v in folded.values())


def test_bad_parameters() -> None:
    with pytest.raises(ParameterError, match="grid"):
        AWQConfig(grid=0)
    with pytest.raises(ParameterError, match="max_shrink"):
        AWQConfig(max_shrink=1.0)


def test_awq_convert_beats_rtn_and_records_its_choices(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "a.lbf"
    r = lowbit.convert(model, out, "int4-g128", method="awq", progress=False, **CAL)
    assert len(r.linears) == 14 and not (tmp_path / "a.lbf.ckpt").exists()
    total = sum(rep.error for rep in r.linears.values())
    total_rtn = sum(rep.rtn_error for rep in r.linears.values())
    assert total < total_rtn
    clipped = [rep for n, rep in r.linears.items() if "clip_mean" in rep.extra]
    assert len(clipped) == 10  # every reader but q and k
    with lowbit.load(out) as f:
        assert f.metadata["quantization.method"] == "awq"
        params = json.loads(f.metadata["quantization.params"])
        assert params["awq"]["grid"] == 20 and len(params["layers"]) == 2
        assert set(params["layers"][0]["alpha"]) == {"attn_in", "o_in", "mlp_in", "down_in"}
        clip = params["layers"][1]["clip"]  # the mean clipping ratio per linear, not for q and k
        assert set(clip) == {"v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
        assert clip["down_proj"] == r.linears["model.layers.1.mlp.down_proj.weight"].extra["clip_mean"]
        # the folded norm is stored, not the source's
        norm = np.asarray(f["model.layers.0.input_layernorm.weight"])
    with resolve_source(model) as src:
        orig = next(t for t in src.tensors if t.name == "model.layers.0.input_layernorm.weight").load()
    alpha0 = params["layers"][0]["alpha"]["attn_in"]
    assert (alpha0 == 0) == np.allclose(norm, orig)


def test_awq_scaled_model_in_float_is_the_source_model(model: Path, tmp_path: Path) -> None:
    """The scales AWQ chose, applied without quantization (f32 readers keep the fold), give the
    source model's logits: what AWQ changes is only what the quantizer sees."""
    cfg = _config(model)
    with resolve_source(model) as src:
        tensors = {t.name: t for t in src.tensors}
        cal = calibration_tokens(src.tokenizer_json, n_samples=2, seq_len=32, seed=0)
        x = embed(tensors, cal.tokens)
        w = layer_weights(tensors, 0)
    _, stats = collect(cfg, w, x, 32, hessian=True)
    qtypes = {k: "int3-g128" for k in w if k.endswith("_proj.weight")}
    folded, _, reports = awq_layer(cfg, w, stats.hessian, stats.sum_abs, stats.tokens, qtypes, AWQConfig())
    assert any(r.alpha for r in reports)
    y0, _ = collect(cfg, w, x, 32, taps=())
    y1, _ = collect(cfg, {**w, **folded}, x, 32, taps=())
    np.testing.assert_allclose(y1, y0, rtol=1e-4, atol=1e-5 * float(np.abs(y0).max()))


def test_awq_plus_gptq(model: Path, tmp_path: Path) -> None:
    r = lowbit.convert(model, tmp_path / "ag.lbf", "int4-g128", method="awq+gptq", progress=False, **CAL)
    assert all(rep.method == "awq+gptq" and rep.damp is not None for rep in r.linears.values())
    assert all(rep.error < rep.rtn_error for rep in r.linears.values())
    with lowbit.Model.load(tmp_path / "ag.lbf") as m:
        assert np.isfinite(m.logits([1, 2, 3])).all()
