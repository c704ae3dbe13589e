"""lowbit.Model, lowbit.evaluate and the `eval` / `generate` commands on tiny synthetic models.

The engine's numerics are checked against independent oracles in test_engine_core.py and
test_engine_hf.py; here the Python layer is checked: the config mapping, tokenization, the KV-cache
decode loop against batched forwards, sampling options, stop conditions, chat templates, and the
evaluation protocol against a direct computation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lowbit
from lowbit.cli import main
from lowbit.model import engine_config
from synth import TEXT, make_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tiny")
    make_checkpoint(d / "hf", hidden=64, ffn=128, heads=4, kv_heads=2, vocab=320, tied=True, seed=3)
    cfg = json.loads((d / "hf" / "config.json").read_text())
    # A template in the style of real chat models, rendered by jinja2.
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    (d / "hf" / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>", "chat_template": template}))
    (d / "hf" / "config.json").write_text(json.dumps(cfg))
    out = {"hf": d / "hf"}
    for t in ("f32", "q8_0"):
        out[t] = d / f"tiny.{t}.lbf"
        lowbit.convert(d / "hf", out[t], t, progress=False)
    text = d / "text.txt"
    text.write_text((TEXT + " ") * 40)
    out["text"] = text
    return out


def test_engine_config_mapping() -> None:
    base = {
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "vocab_size": 100, "max_position_embeddings": 128,
    }  # fmt: skip
    c = engine_config(base)
    assert (c["num_key_value_heads"], c["head_dim"], c["rope_theta"], c["rope_type"]) == (4, 16, 10000.0, "default")
    assert c["attention_bias"] is False and c["tie_word_embeddings"] is False
    assert engine_config({**base, "model_type": "qwen2"})["attention_bias"] is True
    c = engine_config({**base, "head_dim": 32, "rope_scaling": {"rope_type": "linear", "factor": 2.0}})
    assert (c["head_dim"], c["rope_type"], c["rope_factor"]) == (32, "linear", 2.0)
    l3 = {"rope_type": "llama3", "factor": 8, "low_freq_factor": 1, "high_freq_factor": 4,
          "original_max_position_embeddings": 64}  # fmt: skip
    c = engine_config({**base, "rope_scaling": l3})
    assert (c["rope_factor"], c["rope_high_freq_factor"], c["rope_original_max_position_embeddings"]) == (8, 4, 64)
    v5 = engine_config({**base, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}})
    assert (v5["rope_theta"], v5["rope_type"]) == (5e5, "default")
    with pytest.raises(lowbit.UnsupportedError, match="gpt2"):
        engine_config({**base, "model_type": "gpt2"})
    with pytest.raises(lowbit.UnsupportedError, match="yarn"):
        engine_config({**base, "rope_scaling": {"rope_type": "yarn", "factor": 4}})
    with pytest.raises(lowbit.UnsupportedError, match="gelu"):
        engine_config({**base, "hidden_act": "gelu"})
    assert engine_config({**base, "attention_bias": True})["attention_bias"] is True
    assert engine_config({**base, "model_type": "mistral", "sliding_window": 8})["sliding_window"] == 8
    assert "sliding_window" not in engine_config({**base, "model_type": "mistral", "sliding_window": None})
    with pytest.raises(lowbit.UnsupportedError, match="mlp_bias"):
        engine_config({**base, "mlp_bias": True})
    with pytest.raises(lowbit.FormatError, match="hidden_size"):
        engine_config({**base, "hidden_size": "64"})
    with pytest.raises(lowbit.FormatError, match="factor"):
        engine_config({**base, "rope_scaling": {"rope_type": "llama3", "factor": 8}})


def test_greedy_generation_matches_batched_argmax(tiny: dict[str, Path]) -> None:
    """The KV-cache decode loop picks, at every step, the argmax of a fresh batched forward over
    the prompt plus everything generated so far."""
    with lowbit.Model.load(tiny["f32"]) as m:
        assert m.path == tiny["f32"]  # an LBF file runs in place (no float32 copy)
        prompt = m.encode("It is a truth")
        gen = m.generate(prompt, max_tokens=12)
        text = "".join(gen)
        assert gen.finish_reason in ("length", "stop") and 1 <= len(gen.tokens) <= 12
        seq = list(prompt)
        for tok in gen.tokens:
            assert int(np.argmax(m.logits(seq)[-1])) == tok
            seq.append(tok)
        assert text == m.decode(gen.tokens)
        assert gen.prompt_tokens == len(prompt) and gen.prompt_seconds > 0


def test_logits_rows_are_prefix_consistent(tiny: dict[str, Path]) -> None:
    with lowbit.Model.load(tiny["f32"]) as m:
        ids = m.encode(TEXT)[:20]
        full = m.logits(ids)
        assert full.shape == (len(ids), m.vocab_size) and full.dtype == np.float32
        np.testing.assert_allclose(m.logits(ids[:7]), full[:7], rtol=1e-4, atol=1e-5)


def test_sampling_is_seeded(tiny: dict[str, Path]) -> None:
    with lowbit.Model.load(tiny["f32"]) as m:

        def run(**kw: Any) -> list[int]:
            g = m.generate("It is", max_tokens=16, **kw)
            list(g)
            return g.tokens

        a = run(temperature=1.5, seed=7)
        assert a == run(temperature=1.5, seed=7)
        assert a != run(temperature=1.5, seed=8)
        # top_k=1 and a tiny top_p both reduce sampling to greedy.
        greedy = run()
        assert run(temperature=1.5, top_k=1, seed=1) == greedy
        assert run(temperature=1.5, top_p=1e-6, seed=1) == greedy


def test_stop_strings_and_chat(tiny: dict[str, Path]) -> None:
    with lowbit.Model.load(tiny["f32"]) as m:
        full = "".join(m.generate("It is", max_tokens=24))
        cut = full[len(full) // 2 :][:3]
        if cut.strip():
            g = m.generate("It is", max_tokens=24, stop=[cut])
            out = "".join(g)
            assert g.finish_reason == "stop" and out == full[: full.index(cut)]
        assert m.chat_prompt("hello") == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
        assert m.generate("hello", chat=True, max_tokens=3).prompt_tokens == len(m.encode(m.chat_prompt("hello")))


def test_generate_bad_input(tiny: dict[str, Path]) -> None:
    with lowbit.Model.load(tiny["f32"]) as m:
        for kw in ({"max_tokens": 0}, {"temperature": -1.0}, {"top_k": -1}, {"top_p": 0.0}, {"top_p": 1.5}):
            with pytest.raises(lowbit.ParameterError):
                m.generate("It is", **kw)
        with pytest.raises(lowbit.ParameterError, match=r"0\.\.319"):
            m.logits([1, 320])
        with pytest.raises(lowbit.ParameterError):
            m.logits([])
        with pytest.raises(lowbit.ParameterError, match="context"):
            m.logits(np.zeros(m.max_context + 1, dtype=np.int64))
    with pytest.raises(lowbit.ClosedError):
        m.logits([1, 2])


def _manual_eval(m: lowbit.Model, ids: list[int], ctx: int) -> tuple[list[float], list[np.ndarray]]:
    """Negative log-likelihoods and log-probabilities of the scored positions, position by position."""
    nll, lps = [], []
    for w in range(len(ids) // ctx):
        win = ids[w * ctx : (w + 1) * ctx]
        logits = m.logits(win).astype(np.float64)
        for pos in range(ctx // 2, ctx - 1):
            z = logits[pos]
            lp = z - (np.log(np.sum(np.exp(z - z.max()))) + z.max())
            nll.append(-lp[win[pos + 1]])
            lps.append(lp)
    return nll, lps


def test_evaluate_matches_direct_computation(tiny: dict[str, Path]) -> None:
    ctx = 32
    with lowbit.Model.load(tiny["q8_0"]) as m, lowbit.Model.load(tiny["f32"]) as ref:
        assert m.path == tiny["q8_0"] and ref.path == tiny["f32"]
        rep = lowbit.evaluate(m, tiny["text"], reference=ref, ctx=ctx, tokens=100, progress=False)
        ids = m.encode(tiny["text"].read_text())[:100]
        nll, lp = _manual_eval(m, ids, ctx)
        nll_r, lq = _manual_eval(ref, ids, ctx)
    assert rep.windows == 3 and rep.tokens_scored == 3 * (ctx // 2 - 1) == len(nll)
    assert rep.ppl == pytest.approx(np.exp(np.mean(nll)), rel=1e-9)
    assert rep.reference_ppl == pytest.approx(np.exp(np.mean(nll_r)), rel=1e-9)
    kl = [float(np.sum(np.exp(q) * (q - p))) for p, q in zip(lp, lq, strict=True)]
    assert rep.kld_mean == pytest.approx(np.mean(kl), rel=1e-6, abs=1e-12)
    assert rep.top1_agreement == pytest.approx(np.mean([p.argmax() == q.argmax() for p, q in zip(lp, lq, strict=True)]))
    assert rep.kld_mean is not None and rep.reference_ppl is not None
    assert 0 < rep.kld_mean < 0.01 and rep.delta_ppl == pytest.approx(rep.ppl - rep.reference_ppl)


def test_evaluate_against_itself_and_hf_reference(tiny: dict[str, Path]) -> None:
    rep = lowbit.evaluate(tiny["f32"], tiny["text"], reference=tiny["hf"], ctx=32, tokens=64, progress=False)
    # The HF directory is converted to the same float32 weights: identical distributions.
    assert rep.kld_mean == pytest.approx(0.0, abs=1e-9) and rep.top1_agreement == 1.0
    assert rep.reference == str(tiny["hf"]) and rep.delta_ppl == pytest.approx(0.0, abs=1e-9)


def test_evaluate_bad_input(tiny: dict[str, Path], tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("It is a truth.")
    with pytest.raises(lowbit.ParameterError, match="fewer than one window"):
        lowbit.evaluate(tiny["f32"], short, ctx=32, progress=False)
    with pytest.raises(lowbit.ParameterError, match="ctx"):
        lowbit.evaluate(tiny["f32"], tiny["text"], ctx=4, progress=False)
    with pytest.raises(lowbit.ParameterError, match="context"):
        lowbit.evaluate(tiny["f32"], tiny["text"], ctx=4096, progress=False)
    with pytest.raises(FileNotFoundError):
        lowbit.evaluate(tiny["f32"], tmp_path / "missing.txt", progress=False)
    other = tmp_path / "other"
    make_checkpoint(other, hidden=64, ffn=128, heads=4, kv_heads=2, vocab=330, seed=1)
    with pytest.raises(lowbit.ParameterError, match="vocabulary"):
        lowbit.evaluate(tiny["f32"], tiny["text"], reference=other, ctx=32, progress=False)


def test_cli_eval_and_generate(tiny: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    args = ["eval", str(tiny["q8_0"]), "--text", str(tiny["text"]), "--reference", str(tiny["f32"])]
    assert main([*args, "--ctx", "32", "--tokens", "64", "--json", "--no-progress"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["windows"] == 2 and rep["kld_mean"] > 0 and rep["ppl"] > 1
    assert main(["generate", str(tiny["f32"]), "--prompt", "It is", "--max-tokens", "5"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("It is") and "tokens/s" in out.err
    assert main(["eval", str(tiny["f32"]), "--text", str(tiny["text"]), "--ctx", "2"]) == 2
    assert "ctx" in capsys.readouterr().err
