"""Layer-by-layer capture (`lowbit.calib.capture`): the layers run one at a time reproduce Hugging
Face transformers' logits (the engine fixtures), the taps are the inputs their linears really
multiply (checked algebraically against the layer's output), and the statistics are the sums
they claim to be."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from safetensors.numpy import load_file

import lowbit
from engine_fixtures import cases, load_case
from lowbit.calib.capture import LAYER_VECTORS, TAPS, collect, layer_forward, linear_names
from lowbit.errors import ParameterError, ShapeError


def _model(hf: Path) -> tuple[dict[str, Any], dict[str, npt.NDArray[np.float32]]]:
    cfg = json.loads((hf / "config.json").read_text())
    return cfg, {k: v.astype(np.float32) for k, v in load_file(str(hf / "model.safetensors")).items()}


def _layer(t: dict[str, npt.NDArray[np.float32]], i: int) -> dict[str, Any]:
    p = f"model.layers.{i}."
    return {k[len(p) :]: v for k, v in t.items() if k.startswith(p)}


def _rms(x: npt.NDArray[np.float64], w: npt.NDArray[np.float32], eps: float) -> npt.NDArray[np.float64]:
    out: npt.NDArray[np.float64] = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w
    return out


@pytest.mark.parametrize("case", cases())
def test_layers_one_at_a_time_reproduce_transformers(case: str) -> None:
    hf, tokens, want = load_case(case)
    cfg, t = _model(hf)
    # two sequences: the fixture's tokens, and the same tokens again (independent, both from position 0)
    seq = tokens.astype(np.int64)
    x = t["model.embed_tokens.weight"][np.concatenate([seq, seq])]
    for i in range(cfg["num_hidden_layers"]):
        x, _ = layer_forward(cfg, _layer(t, i), x, len(seq))
    head = t.get("lm_head.weight", t["model.embed_tokens.weight"])
    logits = _rms(x.astype(np.float64), t["model.norm.weight"], cfg["rms_norm_eps"]) @ head.T.astype(np.float64)
    scale = float(np.abs(want).max())
    for s in range(2):
        got = logits[s * len(seq) : (s + 1) * len(seq)]
        assert np.abs(got - want).max() <= 1e-4 * scale


def test_taps_are_the_inputs_of_the_linears() -> None:
    hf, tokens, _ = load_case("qwen2_bias")
    cfg, t = _model(hf)
    w = _layer(t, 0)
    x = t["model.embed_tokens.weight"][tokens.astype(np.int64)]
    y, acts = layer_forward(cfg, w, x, len(tokens), TAPS)
    eps = cfg["rms_norm_eps"]
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(acts["attn_in"], _rms(x64, w["input_layernorm.weight"], eps), rtol=1e-5, atol=1e-6)
    mid = x64 + acts["o_in"].astype(np.float64) @ w["self_attn.o_proj.weight"].T.astype(np.float64)
    np.testing.assert_allclose(
        acts["mlp_in"], _rms(mid, w["post_attention_layernorm.weight"], eps), rtol=1e-4, atol=1e-5
    )
    g = acts["mlp_in"].astype(np.float64) @ w["mlp.gate_proj.weight"].T.astype(np.float64)
    u = acts["mlp_in"].astype(np.float64) @ w["mlp.up_proj.weight"].T.astype(np.float64)
    np.testing.assert_allclose(acts["down_in"], g / (1 + np.exp(-g)) * u, rtol=1e-4, atol=1e-6)
    out = mid + acts["down_in"].astype(np.float64) @ w["mlp.down_proj.weight"].T.astype(np.float64)
    np.testing.assert_allclose(y, out, rtol=1e-4, atol=1e-5)
    assert acts["o_in"].shape == (len(tokens), cfg["num_attention_heads"] * (cfg["hidden_size"] // 4))


def test_quantized_and_act_order_weights_run_like_their_dequantized_values() -> None:
    hf, tokens, _ = load_case("llama_untied")
    cfg, t = _model(hf)
    w = _layer(t, 1)
    x = t["model.embed_tokens.weight"][tokens.astype(np.int64)]
    rng = np.random.default_rng(0)
    q, deq, unpermuted = dict(w), dict(w), dict(w)
    for name in linear_names():
        m = w[name]
        perm = rng.permutation(m.shape[1])
        s = lowbit.quantize(np.ascontiguousarray(m[:, perm]), "int8-g32")
        qt = lowbit.QTensor(s.qtype, s.shape, s.data, group_size=32, symmetric=False, perm=perm)
        q[name], deq[name], unpermuted[name] = qt, lowbit.dequantize(qt), s
    n = len(tokens)
    y_q, y_deq, y_wrong = (layer_forward(cfg, m, x, n)[0] - x for m in (q, deq, unpermuted))

    def rel(a: npt.NDArray[np.float32]) -> float:
        return float(np.linalg.norm(a - y_deq) / np.linalg.norm(y_deq))

    # int8 weights against their exact float values: only the engine's int8 activation rounding
    # differs (about 1 %); ignoring the permutation would be wrong by the size of the update
    assert rel(y_q) < 0.03
    assert rel(y_wrong) > 0.5


def test_collect_accumulates_sums_over_chunks() -> None:
    hf, _, _ = load_case("mistral")
    cfg, t = _model(hf)
    w = _layer(t, 0)
    rng = np.random.default_rng(1)
    L = 16
    x = t["model.embed_tokens.weight"][rng.integers(0, cfg["vocab_size"], 5 * L)]
    calls: list[int] = []
    y, stats = collect(cfg, w, x, L, hessian=True, chunk_tokens=2 * L, on_chunk=calls.append)
    assert calls == [2 * L, 2 * L, L]
    y1, acts = layer_forward(cfg, w, x, L, TAPS)
    np.testing.assert_allclose(y, y1, rtol=1e-6, atol=1e-7)
    assert stats.tokens == 5 * L
    for tap in TAPS:
        a = acts[tap].astype(np.float64)
        np.testing.assert_allclose(stats.sum_sq[tap], (a * a).sum(0), rtol=1e-5)
        np.testing.assert_allclose(stats.hessian[tap], a.T @ a, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(np.diag(stats.hessian[tap]), stats.sum_sq[tap], rtol=1e-4)
        np.testing.assert_allclose(stats.importance(tap), (a * a).mean(0), rtol=1e-5)


def test_bad_input() -> None:
    hf, tokens, _ = load_case("llama_untied")
    cfg, t = _model(hf)
    w = _layer(t, 0)
    x = t["model.embed_tokens.weight"][tokens.astype(np.int64)]
    n = len(tokens)
    missing = {k: v for k, v in w.items() if k != "mlp.up_proj.weight"}
    with pytest.raises(ParameterError, match="up_proj"):
        layer_forward(cfg, missing, x, n)
    wrong = dict(w, **{"mlp.up_proj.weight": w["mlp.gate_proj.weight"][:, :-1].copy()})
    with pytest.raises(ShapeError, match="up_proj"):
        layer_forward(cfg, wrong, x, n)
    with pytest.raises(ShapeError):
        layer_forward(cfg, w, x[: n - 1], n)
    with pytest.raises(ParameterError, match="tap"):
        layer_forward(cfg, w, x, n, ["nope"])
    assert set(LAYER_VECTORS) >= {k for k in w if k.endswith(("norm.weight", "bias"))}
    nan = x.copy()
    nan[3, 5] = np.nan
    with pytest.raises(lowbit.InvalidValueError):
        layer_forward(cfg, w, nan, n)
