"""The float32 engine against Hugging Face transformers (fixtures made once by
tests/fixtures/make_engine_fixtures.py; no torch needed here): tiny llama / qwen2 / mistral models
covering GQA, MQA, MHA, tied output, head_dim ≠ hidden/heads, llama3 RoPE scaling, q/k/v biases and
sliding-window attention, and the real demo model on the first 64 tokens of Botchan.

Tolerance: 1e-4 relative to the largest |logit| of the case (the issue's bound); the fixtures are
transformers' float64 logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import lowbit
from engine_fixtures import cases, demo_checkpoint_mismatch, demo_fixture, load_case

REL = 1e-4


def _rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())


@pytest.mark.parametrize("case", cases())
def test_f32_logits_match_transformers(case: str, tmp_path: Path) -> None:
    hf, tokens, want = load_case(case)
    lowbit.convert(hf, tmp_path / "m.lbf", "f32", progress=False)
    with lowbit.Model.load(tmp_path / "m.lbf") as m:
        got = m.logits(tokens)
        assert got.shape == want.shape
        assert _rel_err(got, want) < REL, f"{case}: {_rel_err(got, want):.2e}"
        # Incremental decoding through the KV cache: prompt of 5, then one token at a time.
        s = m.session(len(tokens))
        rows = [s.forward(tokens[:5].astype(np.uint32), True)]
        rows += [s.forward(np.array([t], dtype=np.uint32), True) for t in tokens[5:]]
        assert _rel_err(np.concatenate(rows), want) < REL


@pytest.mark.slow
def test_demo_model_first_64_tokens_match_transformers(demo_hf: Path, tmp_path: Path) -> None:
    reason = demo_checkpoint_mismatch(demo_hf)
    if reason:
        pytest.skip(reason)
    fx = demo_fixture()
    lowbit.convert(demo_hf, tmp_path / "m.lbf", "f32", progress=False)
    with lowbit.Model.load(tmp_path / "m.lbf") as m:
        logits = m.logits(fx["tokens"]).astype(np.float64)
    scale = float(np.abs(fx["top_logits"]).max())
    rows = np.arange(len(fx["tokens"]))[:, None]
    lse = np.log(np.exp(logits - logits.max(axis=1, keepdims=True)).sum(axis=1)) + logits.max(axis=1)
    assert np.abs(lse - fx["logsumexp"]).max() / scale < REL
    assert np.abs(logits[rows, fx["top_ids"]] - fx["top_logits"]).max() / scale < REL
    assert np.abs(logits[:, fx["probe_ids"]] - fx["probe_logits"]).max() / scale < REL
    assert (logits.argmax(axis=1) == fx["top_ids"][:, 0]).all()
