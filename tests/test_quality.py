"""Quantization error behaves as the bits say, on random data and on real weight rows of the demo
model (SmolLM2-135M; `make demo-data` fetches it, `make test` does so first).

The demo weights are stored as q4_1 (4-bit, 32-value groups), so they are de-gridded with seeded
noise of 0.3 q4_1 steps before use (ARCHITECTURE.md §6); otherwise every type whose grid contains
q4_1's would look artificially perfect."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
import numpy.typing as npt
import pytest

import lowbit
from conftest import DEMO_GGUF

F32 = npt.NDArray[np.float32]


def rel_rmse(x: F32, qtype: str, **opts: object) -> float:
    y = lowbit.quantize(x, qtype, **opts).dequantize()  # type: ignore[arg-type]
    return float(np.sqrt(np.mean((y - x) ** 2) / np.mean(x**2)))


@cache
def real_rows() -> F32:
    """512 rows × 1536 of ffn_down weights from 4 layers of the demo model, de-gridded."""
    if not DEMO_GGUF.exists():
        pytest.skip(f"demo model not present ({DEMO_GGUF}); run `make demo-data`")
    from gguf import GGUFReader
    from gguf import quants as gq

    reader = GGUFReader(DEMO_GGUF)
    rows = []
    for t in reader.tensors:
        if t.name.endswith("ffn_down.weight") and t.name.split(".")[1] in {"0", "9", "19", "29"}:
            cols = int(t.shape[0])
            w = gq.dequantize(t.data, t.tensor_type).reshape(-1, cols)[:128].astype(np.float32)
            rows.append(w)
    x = np.concatenate(rows)
    blocks = x.reshape(-1, 32)
    step = (blocks.max(1, keepdims=True) - blocks.min(1, keepdims=True)) / 15
    noise = np.random.default_rng(0).standard_normal(blocks.shape).astype(np.float32) * 0.3 * step
    return np.ascontiguousarray((blocks + noise).reshape(x.shape))


def random_rows() -> F32:
    return np.random.default_rng(0).standard_normal((256, 1024), dtype=np.float32)


SOURCES: dict[str, Callable[[], F32]] = {"random": random_rows, "real": real_rows}


@pytest.mark.parametrize("source", SOURCES)
def test_more_bits_less_error(source: str) -> None:
    x = SOURCES[source]()
    kq = [rel_rmse(x, q) for q in ("q6_k", "q5_k", "q4_k", "q3_k", "q2_k")]
    assert kq == sorted(kq), kq
    legacy = [rel_rmse(x, q) for q in ("q8_0", "q5_1", "q5_0", "q4_0")]
    assert legacy == sorted(legacy), legacy
    affine = [rel_rmse(x, f"int{b}-g128") for b in (8, 4, 3, 2)]
    assert affine == sorted(affine), affine
    # Same bits, more scales: smaller groups do better.
    groups = [rel_rmse(x, f"int4-g{g}") for g in (32, 64, 128, 256)]
    assert groups == sorted(groups), groups
    # q4_k (4.5 bpw, 6-bit sub-scales + mins) beats q4_0 (4.5 bpw, one scale per 32).
    assert rel_rmse(x, "q4_k") < rel_rmse(x, "q4_0")


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("qtype", ["q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_nl", "q4_0", "int4-g128"])
def test_importance_lowers_weighted_error(source: str, qtype: str) -> None:
    x = SOURCES[source]()
    cols = x.shape[1]
    # Activation statistics are heavy-tailed across channels; model that with a log-normal.
    imp = np.exp(np.random.default_rng(1).standard_normal(cols) * 1.5).astype(np.float32)

    def weighted(y: F32) -> float:
        return float((((y - x) ** 2) * imp).sum())

    plain = weighted(lowbit.quantize(x, qtype).dequantize())
    with_imp = weighted(lowbit.quantize(x, qtype, importance=imp).dequantize())
    assert with_imp < plain, (with_imp, plain)


def test_f16_bf16_error_bounds() -> None:
    x = random_rows()
    assert rel_rmse(x, "f32") == 0.0
    assert 0 < rel_rmse(x, "f16") < 2**-11
    assert 0 < rel_rmse(x, "bf16") < 2**-8
