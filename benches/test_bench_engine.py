"""pytest-benchmark of the engine on a synthetic 4-layer llama (hidden 256, FFN 768, vocab 2048) converted
to q8_0 and q4_k_m: a 64-token prompt in one batch and one decode step after it. Run with `make bench`
or `pytest benches --benchmark-enable --benchmark-only`; with `--benchmark-disable` (the default in
pyproject) each runs once as a plain test. Each test checks what it times: the batched prompt's
last logits equal those of `Model.logits`, and a decode step through the KV cache equals the last row
of one batch over the prompt plus that token. The demo-model tokens/s side by side with llama.cpp
come from `benches/bench_engine.py`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

import bench_engine as be
import lowbit

LAYERS, HIDDEN, FFN, VOCAB, HEADS, KV_HEADS = 4, 256, 768, 2048, 8, 2
PROMPT = np.random.default_rng(1).integers(0, VOCAB, 64).astype(np.uint32)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hf")
    r = np.random.default_rng(0)
    t: dict[str, Any] = {"model.embed_tokens.weight": r.standard_normal((VOCAB, HIDDEN), np.float32) * 0.02}
    kv = HIDDEN // HEADS * KV_HEADS
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        for name, shape in (("self_attn.q_proj", (HIDDEN, HIDDEN)), ("self_attn.k_proj", (kv, HIDDEN)),
                            ("self_attn.v_proj", (kv, HIDDEN)), ("self_attn.o_proj", (HIDDEN, HIDDEN)),
                            ("mlp.gate_proj", (FFN, HIDDEN)), ("mlp.up_proj", (FFN, HIDDEN)),
                            ("mlp.down_proj", (HIDDEN, FFN))):  # fmt: skip
            t[p + name + ".weight"] = r.standard_normal(shape, np.float32) * 0.05
        t[p + "input_layernorm.weight"] = np.ones(HIDDEN, np.float32)
        t[p + "post_attention_layernorm.weight"] = np.ones(HIDDEN, np.float32)
    t["model.norm.weight"] = np.ones(HIDDEN, np.float32)
    save_file(t, str(d / "model.safetensors"))
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": LAYERS,
           "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "hidden_size": HIDDEN,
           "intermediate_size": FFN, "vocab_size": VOCAB, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "max_position_embeddings": 256, "tie_word_embeddings": True}  # fmt: skip
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.fixture(scope="module", params=["q8_0", "q4_k_m"])
def model(request: pytest.FixtureRequest, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    out = tmp_path_factory.mktemp("lbf") / f"{request.param}.lbf"
    lowbit.convert(checkpoint, out, request.param, progress=False)
    with lowbit.Model.load(out) as m:
        yield m


def _last(logits: Any) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.asarray(logits, np.float32).reshape(-1)[-VOCAB:]


def test_prompt(benchmark: Any, model: Any) -> None:
    benchmark.extra_info["tokens"] = len(PROMPT)
    last = benchmark(lambda: _last(model.session(len(PROMPT)).forward(PROMPT, False)))
    np.testing.assert_allclose(last, model.logits(PROMPT)[-1], rtol=1e-4, atol=1e-4)


def test_decode_step(benchmark: Any, model: Any) -> None:
    nxt = np.asarray([7], np.uint32)

    def setup() -> tuple[tuple[Any, np.ndarray[Any, np.dtype[np.uint32]], bool], dict[str, Any]]:
        sess = model.session(len(PROMPT) + 1)
        sess.forward(PROMPT, False)
        return (sess, nxt, False), {}

    last = _last(benchmark.pedantic(lambda s, ids, a: s.forward(ids, a), setup=setup, rounds=20))
    full = model.logits(np.concatenate([PROMPT, nxt]))[-1]
    np.testing.assert_allclose(last, full, rtol=1e-4, atol=1e-4)


def test_teacher_forced_counts_the_steps_where_lowbit_picks_the_anchors_token(checkpoint: Path, tmp_path: Path) -> None:
    lbf = tmp_path / "q8_0.lbf"
    lowbit.convert(checkpoint, lbf, "q8_0", progress=False)
    prompt = [int(t) for t in PROMPT[:16]]
    toks: list[int] = []
    with lowbit.Model.load(lbf) as m:
        sess = m.session(32)
        logits = _last(sess.forward(np.asarray(prompt, np.uint32), False))
        for _ in range(8):
            last = logits
            toks.append(int(np.argmax(last)))
            logits = _last(sess.forward(np.asarray(toks[-1:], np.uint32), False))
    # Its own greedy tokens: every step agrees.
    assert be.teacher_forced(lbf, prompt, toks) == (8, 0.0)
    # Another last token: the first seven steps still agree, the last one by the logit gap.
    other = [*toks[:-1], int(np.argsort(last)[-2])]
    k, gap = be.teacher_forced(lbf, prompt, other)
    assert k == 7
    assert gap == pytest.approx(float(last.max() - last[other[-1]]), abs=1e-4) and gap > 0
