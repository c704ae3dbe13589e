"""Shared fixtures and input generators of the Python tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

import lowbit

ROOT = Path(__file__).resolve().parents[1]
# The demo model, fetched by `make demo-data` (which exports LOWBIT_DEMO_GGUF to the tests).
DEMO_GGUF = Path(
    os.environ.get("LOWBIT_DEMO_GGUF") or Path.home() / ".cache" / "lowbit" / "SmolLM2-135M-Instruct.Q4_1.gguf"
)

# The evaluation text (Botchan, from the sentencepiece sdist), fetched by `make demo-data`.
EVAL_TEXT = Path(os.environ.get("LOWBIT_EVAL_TEXT") or Path.home() / ".cache" / "lowbit" / "botchan.txt")

GGML_TYPES = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_nl"]
FLOAT_TYPES = ["f32", "f16", "bf16"]
# Types whose quantize rounding is pinned by gguf's numpy quantizers.
GGUF_QUANTIZE_TYPES = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "f16", "bf16"]
AFFINE_TYPES = ["int2", "int3", "int4", "int8"]
RAGGED_TYPES = ["q2_kr", "q3_kr", "q4_kr", "q5_kr", "q6_kr"]
DQ_TYPES = ["int2-g16-dq", "int3-g16-dq", "int4-g16-dq"]


def block_size(qtype: str) -> int:
    return next(t.block_size for t in lowbit.qtypes() if t.name == qtype)


def special_rows(cols: int, seed: int = 0) -> npt.NDArray[np.float32]:
    """Rows every quantizer must handle: normal data at several scales, zeros, constants, a
    spike, denormals, tiny values, heavy tails, ramps."""
    r = np.random.default_rng(seed)
    rows = [
        r.standard_normal(cols) * 0.02,
        r.standard_normal(cols),
        r.standard_normal(cols) * 100,
        np.zeros(cols),
        np.full(cols, 0.37),
        np.full(cols, -1.25),
        np.where(np.arange(cols) == cols // 3, 50.0, r.standard_normal(cols) * 0.01),
        r.standard_normal(cols) * 1e-39,
        r.standard_normal(cols) * 1e-30,
        r.standard_normal(cols) ** 3 * 0.05,
        np.linspace(-0.5, 0.5, cols),
        np.where(r.random(cols) < 0.125, r.standard_normal(cols), 0.0),
    ]
    return np.asarray(rows, dtype=np.float32)


@pytest.fixture(scope="session")
def isas() -> list[str]:
    return lowbit.available_isas()


@pytest.fixture(scope="session")
def demo_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model as a float32 HF checkpoint (made once per session from the GGUF)."""
    if not DEMO_GGUF.exists():
        pytest.skip(f"demo model not present ({DEMO_GGUF}); run `make demo-data`")
    from lowbit.conversion import gguf_to_hf

    return Path(gguf_to_hf(DEMO_GGUF, tmp_path_factory.mktemp("demo") / "hf", progress=False))


@pytest.fixture(scope="session")
def demo_degridded_hf(demo_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model with its weights moved off q4_1's grid (ARCHITECTURE.md §6), as an HF
    checkpoint: every 2-D weight plus seeded uniform noise of ±half q4_1's step, per row and group
    of 32 columns (step = (max − min) / 15 of the group); norms unchanged. The same rule as
    benches/quality_vs_llamacpp.py (not the same noise values)."""
    import shutil
    import zlib

    from safetensors.numpy import load_file, save_file

    out = tmp_path_factory.mktemp("degridded") / "hf"
    out.mkdir()
    tensors: dict[str, np.ndarray] = {}
    for shard in sorted(demo_hf.glob("*.safetensors")):
        tensors.update(load_file(str(shard)))
    for name, w in tensors.items():
        if w.ndim == 2:
            rows, cols = w.shape
            g = w.astype(np.float32).reshape(rows, cols // 32, 32)
            step = (g.max(axis=2, keepdims=True) - g.min(axis=2, keepdims=True)) / 15
            rng = np.random.default_rng(zlib.crc32(name.encode()))
            noise = rng.uniform(-0.5, 0.5, g.shape).astype(np.float32)
            tensors[name] = (g + noise * step).reshape(rows, cols).astype(np.float32)
    save_file(tensors, str(out / "model.safetensors"))
    for f in demo_hf.iterdir():
        if f.suffix != ".safetensors" and f.name != "model.safetensors.index.json":
            shutil.copyfile(f, out / f.name)
    return out
