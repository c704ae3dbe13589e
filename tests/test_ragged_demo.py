"""Issue 9 on the real demo model (hidden 576: every q/k/v/o/gate/up row and the embedding are
576 long, not a multiple of 256): lowbit's ragged k-quant recipes against the same recipes with
llama.cpp's legacy fallbacks (`gguf_compatible=True`, the plan llama-quantize makes), quantized by
lowbit from a de-gridded baseline (conftest `demo_degridded_hf`) and evaluated weights-only (each
file dequantized, run in float32) against it. Side by side with llama.cpp's own quantizer:
benches/quality_vs_llamacpp.py and BENCHMARKS.md."""

from __future__ import annotations

from pathlib import Path

import pytest

import lowbit
from conftest import EVAL_TEXT
from lowbit.conversion import convert, export_hf

pytestmark = pytest.mark.slow

TOKENS = 2048  # four windows of 512

# (label, recipe, gguf_compatible)
FILES = [("q5_k_m", "q5_k_m", False), ("q4_k_m", "q4_k_m", False), ("q4_k_m-gguf", "q4_k_m", True),
         ("q3_k_m-gguf", "q3_k_m", True)]  # fmt: skip


@pytest.fixture(scope="module")
def results(demo_degridded_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[float, float]]:
    """label → (bits per weight over all tensors, weights-only mean KLD)."""
    if not EVAL_TEXT.exists():
        pytest.skip(f"evaluation text not present ({EVAL_TEXT}); run `make demo-data`")
    d = tmp_path_factory.mktemp("ragged")
    out = {}
    with lowbit.Model.load(demo_degridded_hf) as ref:
        for label, recipe, gguf in FILES:
            rep = convert(demo_degridded_hf, d / f"{label}.lbf", recipe, gguf_compatible=gguf, progress=False)
            export_hf(d / f"{label}.lbf", d / label, progress=False)
            ev = lowbit.evaluate(d / label, EVAL_TEXT, reference=ref, tokens=TOKENS, progress=False)
            assert ev.kld_mean is not None
            out[label] = (rep.bits_per_weight, ev.kld_mean)
    return out


def test_ragged_q5_k_m_beats_the_gguf_q4_k_m_plan_at_a_smaller_size(results: dict[str, tuple[float, float]]) -> None:
    (bpw, kld), (bpw_g, kld_g) = results["q5_k_m"], results["q4_k_m-gguf"]
    assert bpw < bpw_g - 0.2 and kld < 0.85 * kld_g, results


def test_ragged_q4_k_m_beats_the_gguf_q3_k_m_plan_at_a_smaller_size(results: dict[str, tuple[float, float]]) -> None:
    (bpw, kld), (bpw_g, kld_g) = results["q4_k_m"], results["q3_k_m-gguf"]
    assert bpw < bpw_g and kld < 0.9 * kld_g, results
