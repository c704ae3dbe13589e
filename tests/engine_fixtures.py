"""Read the engine's logits fixtures (`tests/fixtures/engine/`, made by `tests/fixtures/make_engine_fixtures.py`
with Hugging Face transformers; see the README there). numpy only: tests never need torch.

The logits are causal, so row i is also the expected output for the prefix tokens[: i + 1]: incremental decoding
and batched prompts can be checked against the same arrays.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal, TypedDict

import numpy as np
import numpy.typing as npt

ENGINE_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "engine"
DEMO_FIXTURE = ENGINE_FIXTURES / "smollm2_first64.npz"
# The text whose first 64 tokens (demo tokenizer, no special tokens) DEMO_FIXTURE holds.
BOTCHAN_HEAD = ENGINE_FIXTURES.parent / "botchan_head.txt"


class DemoFixture(TypedDict):
    """Transformers' float64 logits of the demo checkpoint on the first T = 64 tokens of BOTCHAN_HEAD, stored
    compactly (all logits float32, in nats before softmax)."""

    tokens: npt.NDArray[np.int64]  # (T,) token ids
    logsumexp: npt.NDArray[np.float32]  # (T,) logsumexp of each position's full logits row
    top_ids: npt.NDArray[np.int64]  # (T, 16) the 16 largest logits' ids per position, descending
    top_logits: npt.NDArray[np.float32]  # (T, 16) those logits
    probe_ids: npt.NDArray[np.int64]  # (256,) sorted seeded-random vocabulary ids, the same for every position
    probe_logits: npt.NDArray[np.float32]  # (T, 256) the logits at probe_ids
    safetensors_file: str  # name of the checkpoint's weights file the logits came from
    safetensors_sha256: str  # its sha256 (hex)
    versions: str  # library versions used


def cases() -> list[str]:
    """Names of the tiny synthetic models, e.g. "llama_untied", "qwen2_bias" (sorted)."""
    return sorted(p.parent.name for p in ENGINE_FIXTURES.glob("*/expected.npz"))


def load_case(
    name: str, reference: Literal["float64", "float32"] = "float64"
) -> tuple[Path, npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """(hf_dir, tokens, logits) of one case: hf_dir holds config.json and model.safetensors (F32 weights),
    tokens is (L,) int64, logits (L, vocab) float32 as computed by transformers with the model in `reference`
    precision (float64: the reference to test against; float32: what an f32 implementation may drift to)."""
    hf_dir = ENGINE_FIXTURES / name
    with np.load(hf_dir / "expected.npz") as npz:
        tokens = npz["tokens"].astype(np.int64)
        logits = npz["logits" if reference == "float64" else "logits_f32"].astype(np.float32)
    if logits.shape[0] != tokens.shape[0]:
        raise ValueError(f"{name}: {tokens.shape[0]} tokens but logits of shape {logits.shape}")
    return hf_dir, tokens, logits


def demo_fixture() -> DemoFixture:
    """The demo model's fixture (see DemoFixture); check `demo_checkpoint_mismatch` before comparing."""
    with np.load(DEMO_FIXTURE) as npz:
        return DemoFixture(
            tokens=npz["tokens"].astype(np.int64),
            logsumexp=npz["logsumexp"].astype(np.float32),
            top_ids=npz["top_ids"].astype(np.int64),
            top_logits=npz["top_logits"].astype(np.float32),
            probe_ids=npz["probe_ids"].astype(np.int64),
            probe_logits=npz["probe_logits"].astype(np.float32),
            safetensors_file=str(npz["safetensors_file"]),
            safetensors_sha256=str(npz["safetensors_sha256"]),
            versions=str(npz["versions"]),
        )


def demo_checkpoint_mismatch(hf_dir: Path) -> str | None:
    """Why the local demo HF checkpoint in `hf_dir` is not the one the demo fixture came from (missing, or other
    weights: a reason to skip), or None when its weights file has the recorded sha256."""
    fx = demo_fixture()
    weights = hf_dir / fx["safetensors_file"]
    if not weights.is_file():
        return f"no demo checkpoint at {weights} (made by `make demo`)"
    h = hashlib.sha256()
    with weights.open("rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    if h.hexdigest() != fx["safetensors_sha256"]:
        return f"{weights} has sha256 {h.hexdigest()}, the fixture was made from {fx['safetensors_sha256']}"
    return None
