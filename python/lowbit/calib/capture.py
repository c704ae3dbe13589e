"""Layer-by-layer forward passes over calibration tokens through the Rust engine, with the inputs
of each decoder layer's linear layers captured as statistics (ARCHITECTURE.md §1).

A decoder layer has four *taps*, the inputs of its groups of linear layers:

| tap       | width (values per token) | linears fed                 |
|-----------|--------------------------|-----------------------------|
| `attn_in` | hidden                   | q_proj, k_proj, v_proj      |
| `o_in`    | heads · head_dim         | o_proj                      |
| `mlp_in`  | hidden                   | gate_proj, up_proj          |
| `down_in` | intermediate             | down_proj                   |

`layer_forward` runs one layer (weights of any qtype, or float32 arrays) over a batch of
independent sequences; `collect` accumulates per tap the sum of x² per input column (llama.cpp's
importance matrix) and optionally Σ x xᵀ (GPTQ's Hessian, up to a factor 2/n). Only one layer's
activations are ever held: `tokens × hidden` float32 for the layer input, plus one chunk of taps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import _core
from ..conversion.source import SourceTensor
from ..errors import FormatError, ParameterError, ShapeError
from ..model import engine_config
from ..qtensor import QTensor
from .observers import Observer

__all__ = [
    "LAYER_VECTORS",
    "TAPS",
    "TAP_LINEARS",
    "LayerStats",
    "check_model",
    "collect",
    "embed",
    "layer_forward",
    "layer_weights",
    "linear_names",
]

TAP_LINEARS: dict[str, tuple[str, ...]] = {
    "attn_in": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "o_in": ("self_attn.o_proj",),
    "mlp_in": ("mlp.gate_proj", "mlp.up_proj"),
    "down_in": ("mlp.down_proj",),
}
"""Tap name → the linear layers (under `model.layers.{i}.`) that read it, in forward order."""

TAPS: tuple[str, ...] = tuple(TAP_LINEARS)

LAYER_VECTORS: tuple[str, ...] = (
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
    "self_attn.q_proj.bias",
    "self_attn.k_proj.bias",
    "self_attn.v_proj.bias",
    "self_attn.o_proj.bias",
)
"""The 1-D tensors of a decoder layer (the biases only with `attention_bias`)."""

Weight = QTensor | npt.NDArray[np.float32]


def linear_names() -> list[str]:
    """The seven weight names of a decoder layer (under `model.layers.{i}.`), in forward order."""
    return [f"{lin}.weight" for lins in TAP_LINEARS.values() for lin in lins]


def _matrix_arg(name: str, w: Any) -> tuple[Any, ...]:
    if isinstance(w, QTensor):
        rows, cols = w.shape
        act = None if w.act is None else w.act._wire()
        o = w.outliers
        outl = None if o is None else (o.row_ptr, o.cols, o.vals.view(np.uint16))
        return (w.data.reshape(-1), w.qtype, rows, cols, w.group_size, w.symmetric, w.perm, act, outl)
    if isinstance(w, np.ndarray) and w.ndim == 2 and w.dtype == np.float32:
        rows, cols = w.shape
        data = np.ascontiguousarray(w, dtype="<f4").view(np.uint8).reshape(-1)
        return (data, "f32", rows, cols, None, None, None, None, None)
    raise TypeError(f"layer tensor {name!r} must be a QTensor or a 2-D float32 array, got {type(w).__name__}")


def layer_forward(
    config: Mapping[str, Any],
    weights: Mapping[str, Weight],
    x: npt.NDArray[np.float32],
    seq_len: int,
    taps: Sequence[str] = (),
    *,
    isa: str | None = None,
) -> tuple[npt.NDArray[np.float32], dict[str, npt.NDArray[np.float32]]]:
    """One decoder layer over `x`.

    Args:
        config: the model's HF config.json (llama, mistral or qwen2).
        weights: the layer's tensors by their names under `model.layers.{i}.`: the seven
            linear weights (`QTensor`s of any qtype, act-order and W8A8 included, or float32 arrays of
            shape (out_features, in_features)) and the `LAYER_VECTORS` (float32 1-D).
        x: float32 (tokens, hidden): `tokens / seq_len` independent sequences, each starting
            at position 0.
        seq_len: tokens per sequence.
        taps: which linear inputs to return (`TAPS`).
        isa: force an instruction set.

    Returns `(y, acts)`: the layer's output hidden states, float32 (tokens, hidden), and per
    requested tap its input, float32 (tokens, width).

    Raises ShapeError (shapes against the config), ParameterError (missing tensors, unknown
    taps, a config the engine does not run), InvalidValueError (a non-finite activation).
    """
    cfg = engine_config(dict(config))
    tensors: dict[str, Any] = {}
    for name in linear_names():
        if name not in weights:
            raise ParameterError(f"layer tensor {name!r} is missing")
        tensors[name] = _matrix_arg(name, weights[name])
    for name in LAYER_VECTORS:
        if name in weights:
            tensors[name] = np.ascontiguousarray(weights[name], dtype=np.float32).reshape(-1)
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        raise ShapeError("x must be a 2-D float32 array (tokens, hidden)")
    unknown = [t for t in taps if t not in TAPS]
    if unknown:
        raise ParameterError(f"unknown taps {unknown}; valid: {', '.join(TAPS)}")
    y, acts = _core.layer_forward(cfg, tensors, np.ascontiguousarray(x, dtype=np.float32), seq_len, list(taps), isa)
    return y, dict(acts)


@dataclass
class LayerStats:
    """Statistics of one layer's linear inputs over the calibration tokens.

    Attributes:
        tokens: tokens seen.
        sum_sq: tap → Σ x² per input column, float64 (width,) (llama.cpp's `in_sum2`; the
            importance of a column is `sum_sq / tokens`).
        sum_abs: tap → Σ |x| per input column, float64 (width,) (AWQ's activation scale is
            `sum_abs / tokens`).
        max_abs: tap → max |x| per input column, float64 (width,) (SmoothQuant's).
        hessian: tap → Σ x xᵀ, float64 (width, width) (GPTQ's H is 2/tokens of it), when asked.
    """

    tokens: int = 0
    sum_sq: dict[str, npt.NDArray[np.float64]] = field(default_factory=dict)
    sum_abs: dict[str, npt.NDArray[np.float64]] = field(default_factory=dict)
    max_abs: dict[str, npt.NDArray[np.float64]] = field(default_factory=dict)
    hessian: dict[str, npt.NDArray[np.float64]] = field(default_factory=dict)

    def importance(self, tap: str) -> npt.NDArray[np.float32]:
        """Mean x² per input column of `tap`, float32 (width,)."""
        return (self.sum_sq[tap] / max(self.tokens, 1)).astype(np.float32)

    def add(self, acts: Mapping[str, npt.NDArray[np.float32]], hessian: bool) -> None:
        """Accumulate one chunk of tap activations (each (tokens, width) float32)."""
        n = 0
        for tap, a in acts.items():
            n = a.shape[0]
            sq = np.einsum("ij,ij->j", a, a, dtype=np.float64)
            self.sum_sq[tap] = self.sum_sq[tap] + sq if tap in self.sum_sq else sq
            mag = np.abs(a)
            sa = mag.sum(axis=0, dtype=np.float64)
            self.sum_abs[tap] = self.sum_abs[tap] + sa if tap in self.sum_abs else sa
            mx = mag.max(axis=0, initial=0.0).astype(np.float64)
            self.max_abs[tap] = np.maximum(self.max_abs[tap], mx) if tap in self.max_abs else mx
            if hessian:
                h = (a.T @ a).astype(np.float64)  # float32 BLAS per chunk, float64 across chunks
                self.hessian[tap] = self.hessian[tap] + h if tap in self.hessian else h
        self.tokens += n


def collect(
    config: Mapping[str, Any],
    weights: Mapping[str, Weight],
    x: npt.NDArray[np.float32],
    seq_len: int,
    *,
    taps: Sequence[str] = TAPS,
    hessian: bool = False,
    chunk_tokens: int = 4096,
    isa: str | None = None,
    on_chunk: Callable[[int], None] | None = None,
    observers: Mapping[str, Observer] | None = None,
) -> tuple[npt.NDArray[np.float32], LayerStats]:
    """Run a layer over all of `x` (float32 (tokens, hidden), sequences of `seq_len`) in chunks of
    whole sequences (about `chunk_tokens` tokens, at least one sequence) and accumulate
    `LayerStats` of `taps`. Returns the layer's output (float32 (tokens, hidden)) and the stats.
    `on_chunk(tokens)` is called after each chunk (progress); `observers` (tap → observer, taps
    among `taps`) see every chunk of their tap's activations. A non-finite activation raises
    `InvalidValueError` (every tap is the input of a matmul, which refuses NaN and ±Inf)."""
    if seq_len <= 0 or x.ndim != 2 or x.shape[0] % seq_len:
        raise ShapeError(f"x of shape {x.shape} is not a whole number of sequences of {seq_len} tokens")
    per = max(1, chunk_tokens // seq_len) * seq_len
    out = np.empty_like(x)
    stats = LayerStats()
    for start in range(0, x.shape[0], per):
        y, acts = layer_forward(config, weights, x[start : start + per], seq_len, taps, isa=isa)
        stats.add(acts, hessian)
        for tap, obs in (observers or {}).items():
            obs.update(acts[tap])
        out[start : start + per] = y
        if on_chunk is not None:
            on_chunk(y.shape[0])
    return out, stats


def rms_norm(x: npt.NDArray[np.floating[Any]], weight: npt.NDArray[Any], eps: float) -> npt.NDArray[np.float64]:
    """RMSNorm of `x` (tokens, hidden) with `weight` (hidden,), in float64 (the model's final norm
    where the engine is not used)."""
    x64 = x.astype(np.float64)
    out: npt.NDArray[np.float64] = x64 / np.sqrt((x64 * x64).mean(-1, keepdims=True) + eps) * weight
    return out


def layer_weights(tensors: Mapping[str, SourceTensor], i: int) -> dict[str, npt.NDArray[np.float32]]:
    """Decoder layer `i`'s tensors from a conversion source, as float32 arrays by their names
    under `model.layers.{i}.` (the matrices (out_features, in_features), the vectors 1-D)."""
    p = f"model.layers.{i}."
    wanted = [*linear_names(), *LAYER_VECTORS]
    return {k: tensors[p + k].load().reshape(tensors[p + k].shape) for k in wanted if p + k in tensors}


def embed(tensors: Mapping[str, SourceTensor], tokens: npt.NDArray[np.uint32]) -> npt.NDArray[np.float32]:
    """The embeddings of `tokens` ((samples, seq_len) uint32): float32 (samples · seq_len, hidden)."""
    e = tensors["model.embed_tokens.weight"]
    vocab = int(e.shape[0])
    table = e.load().reshape(vocab, -1)
    if tokens.size and int(tokens.max()) >= vocab:
        raise ParameterError(f"token id {int(tokens.max())} is outside the vocabulary of {vocab}")
    return np.ascontiguousarray(table[tokens.reshape(-1)])


def check_model(config: Mapping[str, Any], tensors: Mapping[str, SourceTensor]) -> int:
    """Check, before any work, that the engine runs this model and that every layer tensor is
    there; return the number of layers. Raises UnsupportedError / FormatError."""
    engine_config(dict(config))
    n = int(config["num_hidden_layers"])
    missing = [
        f"model.layers.{i}.{k}"
        for i in range(n)
        for k in (*linear_names(), "input_layernorm.weight", "post_attention_layernorm.weight")
        if f"model.layers.{i}.{k}" not in tensors
    ]
    if "model.embed_tokens.weight" not in tensors:
        missing.insert(0, "model.embed_tokens.weight")
    if missing:
        raise FormatError(f"the model lacks tensors the calibration needs: {', '.join(missing[:5])}", 0)
    return n
