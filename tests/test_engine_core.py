"""The Rust engine through `lowbit._core` (Engine, Session, Sampler) on tiny synthetic checkpoints
converted to LBF, against a float64 NumPy forward pass written here (Hugging Face's
LlamaForCausalLM / Qwen2ForCausalLM, restated from their definitions)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import lowbit
from lowbit import _core
from lowbit.errors import FormatError, ParameterError, ShapeError
from synth import make_checkpoint

F64 = npt.NDArray[np.float64]
TOKENS = np.array([5, 77, 0, 319, 12, 12, 200, 3, 150, 41, 8], dtype=np.uint32)


def engine_config(d: Path) -> dict[str, Any]:
    """The Engine config of a synthetic checkpoint's config.json (default RoPE)."""
    c = json.loads((d / "config.json").read_text())
    keys = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"]
    keys += ["num_key_value_heads", "rms_norm_eps", "rope_theta", "tie_word_embeddings", "max_position_embeddings"]
    out = {k: c[k] for k in keys}
    out |= {
        "arch": c["model_type"],
        "head_dim": c["hidden_size"] // c["num_attention_heads"],
        "attention_bias": c["model_type"] == "qwen2",
        "rope_type": "default",
    }
    return out


def reference_logits(w: dict[str, npt.NDArray[np.float32]], cfg: dict[str, Any], tokens: npt.NDArray[Any]) -> F64:
    """(n, vocab) logits of every position, float64, no cache."""
    W = {k: v.astype(np.float64) for k, v in w.items()}
    n, hd = len(tokens), cfg["head_dim"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    eps, theta = float(cfg["rms_norm_eps"]), float(cfg["rope_theta"])

    def norm(x: F64, name: str) -> F64:
        y: F64 = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * W[name]
        return y

    def rope(x: F64) -> F64:  # x: (n, heads, hd); HF rotate_half with cos/sin of cat(freqs, freqs)
        inv = theta ** (-np.arange(0, hd, 2) / hd)
        ang = np.arange(n)[:, None] * inv[None, :]
        cos, sin = np.cos(np.concatenate([ang, ang], -1))[:, None], np.sin(np.concatenate([ang, ang], -1))[:, None]
        rot = np.concatenate([-x[..., hd // 2 :], x[..., : hd // 2]], -1)
        y: F64 = x * cos + rot * sin
        return y

    def proj(x: F64, name: str) -> F64:
        y: F64 = x @ W[name + ".weight"].T
        b = W.get(name + ".bias")
        return y if b is None else y + b

    x = W["model.embed_tokens.weight"][tokens]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = norm(x, p + "input_layernorm.weight")
        q = rope(proj(h, p + "self_attn.q_proj").reshape(n, nh, hd))
        k = rope(proj(h, p + "self_attn.k_proj").reshape(n, nkv, hd))
        v = proj(h, p + "self_attn.v_proj").reshape(n, nkv, hd)
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
        s = np.einsum("ihd,jhd->hij", q, k) / np.sqrt(hd) + mask
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        x = x + proj(np.einsum("hij,jhd->ihd", a, v).reshape(n, nh * hd), p + "self_attn.o_proj")
        h = norm(x, p + "post_attention_layernorm.weight")
        g, u = proj(h, p + "mlp.gate_proj"), proj(h, p + "mlp.up_proj")
        x = x + proj(g / (1 + np.exp(-g)) * u, p + "mlp.down_proj")
    head = W["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else W["lm_head.weight"]
    out: F64 = norm(x, "model.norm.weight") @ head.T
    return out


def build(tmp_path: Path, qtype: str = "f32", **kw: Any) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """Convert a synthetic checkpoint; (lbf path, engine config, f32 weights by HF name)."""
    src = tmp_path / "hf"
    kw = {"hidden": 64, "ffn": 128, "heads": 4, "kv_heads": 2} | kw
    values = make_checkpoint(src, **kw)
    out = tmp_path / f"m-{qtype}.lbf"
    lowbit.convert(src, out, qtype, progress=False)
    return out, engine_config(src), values


def assert_close(got: npt.NDArray[np.float32], want: F64, rel: float) -> None:
    assert got.shape == want.shape
    err = np.abs(got - want).max()
    assert err <= rel * np.abs(want).max(), f"max error {err:.3g}, scale {np.abs(want).max():.3g}"


@pytest.mark.parametrize(
    "case",
    [
        {"arch": "llama", "tied": False},
        {"arch": "llama", "tied": True, "kv_heads": 4},
        {"arch": "qwen2", "tied": False},
        {"arch": "mistral", "tied": True, "kv_heads": 1},
    ],
    ids=["llama-gqa-untied", "llama-mha-tied", "qwen2-biases", "mistral-mqa-tied"],
)
def test_f32_engine_matches_numpy_float64_forward(tmp_path: Path, case: dict[str, Any]) -> None:
    path, cfg, w = build(tmp_path, **case)
    want = reference_logits(w, cfg, TOKENS)
    engine = _core.Engine(str(path), cfg)
    s = engine.session(32)
    got = s.forward(TOKENS, True)
    assert got.dtype == np.float32
    assert_close(got, want, 1e-5)
    assert s.position == len(TOKENS)
    # The last-token form and the cached decode agree with the batch.
    s2 = engine.session(32)
    assert_close(s2.forward(TOKENS[:6], False), want[5], 1e-5)
    for i in range(6, len(TOKENS)):
        assert_close(s2.forward(TOKENS[i : i + 1], False), want[i], 1e-5)


def test_q8_0_logits_are_close_to_f32(tmp_path: Path) -> None:
    f32_path, cfg, _ = build(tmp_path, "f32")
    q8_path, _, _ = build(tmp_path, "q8_0")
    ref = _core.Engine(str(f32_path), cfg).session(16).forward(TOKENS, True)
    got = _core.Engine(str(q8_path), cfg).session(16).forward(TOKENS, True)
    assert not np.array_equal(got, ref), "the q8_0 file should not hold the f32 weights"
    assert_close(got, ref.astype(np.float64), 2e-2)


def test_session_reset_truncate_and_sampler(tmp_path: Path) -> None:
    path, cfg, _ = build(tmp_path)
    engine = _core.Engine(str(path), cfg)
    s = engine.session(16)
    assert s.max_context == 16
    all_logits = s.forward(TOKENS, True)
    s.truncate(4)
    assert s.position == 4
    np.testing.assert_array_equal(s.forward(TOKENS[4:5], False), all_logits[4])
    s.reset()
    np.testing.assert_array_equal(s.forward(TOKENS, True), all_logits)
    last = all_logits[-1]
    assert _core.Sampler(0.0).sample(last) == int(np.argmax(last))
    assert _core.Sampler(1.0, top_k=1, seed=3).sample(last) == int(np.argmax(last))
    # Seeded: the same draws again; top_k keeps them among the 50 largest logits.
    draws = [_core.Sampler(1.0, 50, 0.9, seed).sample(last) for seed in range(20)]
    assert draws == [_core.Sampler(1.0, 50, 0.9, seed).sample(last) for seed in range(20)]
    assert set(draws) <= set(np.argsort(-last)[:50].tolist())
    assert len(set(draws)) > 1


def test_engine_errors_are_typed(tmp_path: Path) -> None:
    path, cfg, _ = build(tmp_path)
    with pytest.raises(ParameterError, match="unknown config keys: bogus; valid keys: arch, "):
        _core.Engine(str(path), cfg | {"bogus": 1})
    with pytest.raises(ParameterError, match=r"missing config keys: head_dim$"):
        _core.Engine(str(path), {k: v for k, v in cfg.items() if k != "head_dim"})
    with pytest.raises(ParameterError, match="'vocab_size' must be a non-negative int"):
        _core.Engine(str(path), cfg | {"vocab_size": "many"})
    with pytest.raises(ParameterError, match="rope_type"):
        _core.Engine(str(path), cfg | {"rope_type": "yarn"})
    with pytest.raises(ParameterError, match="needs config key 'rope_low_freq_factor'"):
        _core.Engine(str(path), cfg | {"rope_type": "llama3", "rope_factor": 8.0})
    with pytest.raises(ParameterError, match="not used by rope_type"):
        _core.Engine(str(path), cfg | {"rope_factor": 2.0})
    with pytest.raises(ParameterError, match="not a multiple"):
        _core.Engine(str(path), cfg | {"num_key_value_heads": 3})
    with pytest.raises(ShapeError, match=r"model.layers.0.self_attn.k_proj.weight.*\[64, 64\].*\[32, 64\]"):
        _core.Engine(str(path), cfg | {"num_key_value_heads": 4})
    with pytest.raises(lowbit.errors.NotFoundError, match=r"lm_head\.weight"):
        _core.Engine(str(build(tmp_path / "t", tied=True)[0]), cfg)
    with pytest.raises(FileNotFoundError):
        _core.Engine(str(tmp_path / "missing.lbf"), cfg)
    (tmp_path / "junk.lbf").write_bytes(b"not an lbf file at all" * 4)
    with pytest.raises(FormatError):
        _core.Engine(str(tmp_path / "junk.lbf"), cfg)

    s = _core.Engine(str(path), cfg).session(8)
    with pytest.raises(ShapeError, match="uint32"):
        s.forward(TOKENS.astype(np.int64), False)
    with pytest.raises(ShapeError, match="C-contiguous"):
        s.forward(TOKENS[::2], False)
    with pytest.raises(ShapeError, match="at least one token"):
        s.forward(np.zeros(0, np.uint32), False)
    with pytest.raises(ParameterError, match="outside the vocabulary of 320"):
        s.forward(np.array([1, 320], np.uint32), False)
    with pytest.raises(ParameterError, match=r"context overflow.*8 more fit"):
        s.forward(TOKENS, False)
    assert s.position == 0
    with pytest.raises(ParameterError, match="truncate"):
        s.truncate(1)
    with pytest.raises(ParameterError, match="max_context"):
        _core.Engine(str(path), cfg).session(0)
    with pytest.raises(ParameterError, match="top_p"):
        _core.Sampler(1.0, 0, 0.0, 0)
    with pytest.raises(ParameterError, match="temperature"):
        _core.Sampler(-1.0)
    with pytest.raises(ShapeError, match="float32"):
        _core.Sampler().sample(np.zeros(4, np.float64))
