"""Quality smoke test on the real demo model (SmolLM2-135M): the quantized files run by the engine
stay close to the float32 model on held-out English prose (Botchan).

The baseline is the float32 dequantization of the demo GGUF, whose weights sit on q4_1's grid
(4-bit, groups of 32, with a min); q4_0 (symmetric, no min) and the k-quant/legacy mix of q4_k_m
are different grids, so neither is trivially lossless (ARCHITECTURE.md §6)."""

from __future__ import annotations

from pathlib import Path

import pytest

import lowbit
from conftest import EVAL_TEXT

pytestmark = pytest.mark.slow

TOKENS = 1024  # two windows of 512


@pytest.fixture(scope="module")
def reports(demo_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, lowbit.EvalReport]:
    if not EVAL_TEXT.exists():
        pytest.skip(f"evaluation text not present ({EVAL_TEXT}); run `make demo-data`")
    d = tmp_path_factory.mktemp("quality")
    out = {}
    with lowbit.Model.load(demo_hf) as ref:
        for t in ("q8_0", "q4_k_m", "q4_0"):
            lowbit.convert(demo_hf, d / f"{t}.lbf", t, progress=False)
            out[t] = lowbit.evaluate(d / f"{t}.lbf", EVAL_TEXT, reference=ref, tokens=TOKENS, progress=False)
            (d / f"{t}.lbf").unlink()
    return out


def test_q8_0_is_nearly_lossless(reports: dict[str, lowbit.EvalReport]) -> None:
    r = reports["q8_0"]
    assert r.tokens_scored == 2 * 255
    assert r.kld_mean is not None and r.kld_mean < 0.005, r.format()
    assert r.top1_agreement is not None and r.top1_agreement > 0.95, r.format()
    # A working model on English prose (a broken forward pass gives PPL in the thousands).
    assert r.reference_ppl is not None and r.reference_ppl < 60, r.format()


def test_q4_k_m_beats_q4_0(reports: dict[str, lowbit.EvalReport]) -> None:
    k, q = reports["q4_k_m"].kld_mean, reports["q4_0"].kld_mean
    assert k is not None and q is not None
    assert k < 0.7 * q, f"q4_k_m KLD {k:.5f} vs q4_0 {q:.5f}"
    assert reports["q8_0"].kld_mean < k  # type: ignore[operator]
