"""pytest-benchmark of `lowbit.convert` on a synthetic 8-layer llama checkpoint (hidden 512,
FFN 1536, float32, ≈ 64 MiB): the q4_k_m recipe and a single q8_0 type. Run with `make bench`;
with `--benchmark-disable` (the default in pyproject) each runs once as a plain test. The demo-model
figures (time and peak RSS against a plain read) come from `benches/bench_convert.py`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

import lowbit

LAYERS, HIDDEN, FFN, VOCAB = 8, 512, 1536, 4096


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hf")
    r = np.random.default_rng(0)
    t: dict[str, Any] = {"model.embed_tokens.weight": r.standard_normal((VOCAB, HIDDEN), np.float32) * 0.02}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        for name, shape in (("self_attn.q_proj", (HIDDEN, HIDDEN)), ("self_attn.k_proj", (HIDDEN // 4, HIDDEN)),
                            ("self_attn.v_proj", (HIDDEN // 4, HIDDEN)), ("self_attn.o_proj", (HIDDEN, HIDDEN)),
                            ("mlp.gate_proj", (FFN, HIDDEN)), ("mlp.up_proj", (FFN, HIDDEN)),
                            ("mlp.down_proj", (HIDDEN, FFN))):  # fmt: skip
            t[p + name + ".weight"] = r.standard_normal(shape, np.float32) * 0.02
        t[p + "input_layernorm.weight"] = np.ones(HIDDEN, np.float32)
        t[p + "post_attention_layernorm.weight"] = np.ones(HIDDEN, np.float32)
    t["model.norm.weight"] = np.ones(HIDDEN, np.float32)
    save_file(t, str(d / "model.safetensors"))
    cfg = {"model_type": "llama", "num_hidden_layers": LAYERS, "num_attention_heads": 8, "num_key_value_heads": 2,
           "hidden_size": HIDDEN, "intermediate_size": FFN, "vocab_size": VOCAB,
           "tie_word_embeddings": True}  # fmt: skip
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("recipe", ["q4_k_m", "q8_0"])
def test_convert(benchmark: Any, checkpoint: Path, tmp_path: Path, recipe: str) -> None:
    out = tmp_path / "m.lbf"
    report = benchmark(lowbit.convert, checkpoint, out, recipe, overwrite=True, progress=False)
    benchmark.extra_info["MB/s of source"] = (
        report.src_bytes / 1e6 / benchmark.stats.stats.median if benchmark.stats else 0
    )
    with lowbit.load(out) as f:
        assert len(f) == len(report.plan) == 2 + 9 * LAYERS  # embedding (tied) and final norm
        assert {f.info(e.name).qtype for e in report.plan} == {e.qtype for e in report.plan}
    assert max(report.rel_rmse.values()) < (0.1 if recipe == "q4_k_m" else 0.01)
