"""Per-input-channel scaling of a decoder layer that leaves the float model unchanged (AWQ and
SmoothQuant): for a *scale group*, the linears reading one activation are multiplied by
`diag(s)` on their input columns and the tensor producing that activation is divided by `s`.

The llama family has four scale groups per layer (the taps of `lowbit.calib.capture`):

| tap       | produced by (divided by s)               | read by (columns × s)  | channels            |
|-----------|------------------------------------------|------------------------|---------------------|
| `attn_in` | `input_layernorm.weight`                 | q_proj, k_proj, v_proj | hidden              |
| `o_in`    | `self_attn.v_proj` rows (and its bias)   | o_proj                 | kv_heads · head_dim |
| `mlp_in`  | `post_attention_layernorm.weight`        | gate_proj, up_proj     | hidden              |
| `down_in` | `mlp.up_proj` rows                       | down_proj              | intermediate        |

Each fold is exact in real arithmetic: RMSNorm's output is linear in its weight; attention
output is a convex combination of value rows per head, so scaling v's rows scales o's inputs;
SwiGLU's `silu(gate) · up` is linear in `up`. With grouped-query attention the `n_heads / n_kv`
query heads sharing a value head read the same v row, so o's input columns are scaled by the
value channel they come from (`ScaleGroup.index`): one scale per *channel*, not per column —
this is how the v → o group is scaled in models where llm-awq skips it (v and o of different
shapes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..calib.capture import TAP_LINEARS as _TAP_READERS
from ..model import engine_config

__all__ = ["ScaleGroup", "fold", "scale_groups"]

F32 = npt.NDArray[np.float32]

_NORMS = ("input_layernorm.weight", "post_attention_layernorm.weight")


@dataclass(frozen=True)
class ScaleGroup:
    """One scale group of a layer.

    Attributes:
        tap: the activation (`lowbit.calib.capture.TAPS`).
        prev: the layer tensor producing it: a norm weight (divided by s) or a linear weight whose
            rows are divided by s (with its bias, if any).
        linears: the weights reading it (columns multiplied by s).
        index: int64 (cols,): input column → channel (None: the identity); `s[index]` scales
            the readers' columns.
        skip: why the group cannot be scaled ("" when it can).
    """

    tap: str
    prev: str
    linears: tuple[str, ...]
    index: npt.NDArray[np.int64] | None = None
    skip: str = ""

    def columns(self, s: npt.NDArray[np.floating[Any]]) -> F32:
        """The per-column scale of the readers, float32 (cols,), from per-channel `s`."""
        s = np.asarray(s, dtype=np.float32)
        return s if self.index is None else s[self.index]

    def reduce(self, v: npt.NDArray[np.floating[Any]], how: str = "mean") -> npt.NDArray[np.float64]:
        """A per-column statistic (cols,) → per channel, combining the columns sharing a channel by
        `how` ("mean" or "max")."""
        v64: npt.NDArray[np.float64] = np.asarray(v, dtype=np.float64)
        if self.index is None:
            return v64
        n = int(self.index.max()) + 1
        if how == "max":
            out = np.full(n, -np.inf)
            np.maximum.at(out, self.index, v64)
            return out
        return np.bincount(self.index, weights=v64, minlength=n) / np.bincount(self.index, minlength=n)


def scale_groups(config: Mapping[str, Any], weights: Mapping[str, Any]) -> list[ScaleGroup]:
    """The four scale groups of a llama-family layer (`weights`: the layer's tensors by their
    names under `model.layers.{i}.`, arrays or QTensors — only shapes are read), each with `skip`
    set when its shapes do not allow the fold (the group is then left unscaled)."""
    cfg = engine_config(dict(config))
    heads, kv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]

    def shape(name: str) -> tuple[int, ...]:
        return tuple(weights[name].shape) if name in weights else ()

    v, o = shape("self_attn.v_proj.weight"), shape("self_attn.o_proj.weight")
    o_skip = ""
    if heads % kv or len(v) != 2 or v[0] != kv * hd or len(o) != 2 or o[1] != heads * hd:
        o_skip = (
            f"o_proj's input columns {o[1:]} are not {heads} heads × {hd} fed by v_proj's rows {v[:1]} "
            f"({kv} value heads): the v → o scale cannot be folded"
        )
    cols = np.arange(heads * hd)
    o_index = (cols // hd // max(1, heads // kv)) * hd + cols % hd
    up, down = shape("mlp.up_proj.weight"), shape("mlp.down_proj.weight")
    down_skip = "" if len(up) == 2 and len(down) == 2 and up[0] == down[1] else "up_proj's rows do not feed down_proj"
    norm_skip = {n: "" if n in weights else f"{n} is missing" for n in _NORMS}
    return [
        ScaleGroup("attn_in", _NORMS[0], _TAP_READERS["attn_in"], None, norm_skip[_NORMS[0]]),
        ScaleGroup("o_in", "self_attn.v_proj", _TAP_READERS["o_in"], None if kv == heads else o_index, o_skip),
        ScaleGroup("mlp_in", _NORMS[1], _TAP_READERS["mlp_in"], None, norm_skip[_NORMS[1]]),
        ScaleGroup("down_in", "mlp.up_proj", _TAP_READERS["down_in"], None, down_skip),
    ]


def fold(weights: Mapping[str, Any], group: ScaleGroup, s: npt.NDArray[np.floating[Any]]) -> dict[str, F32]:
    """The tensors of `group` with the scale `s` (float, per channel, > 0) folded in: the producer
    divided by `s`, the readers' columns multiplied by `group.columns(s)`. Returns new float32
    arrays by name (the layer's other tensors are unchanged); `weights` is not modified."""
    s32 = np.asarray(s, dtype=np.float32)
    out: dict[str, F32] = {}
    if group.prev.endswith("_proj"):
        out[f"{group.prev}.weight"] = np.asarray(weights[f"{group.prev}.weight"], np.float32) / s32[:, None]
        bias = f"{group.prev}.bias"
        if bias in weights:
            out[bias] = np.asarray(weights[bias], np.float32) / s32
    else:
        out[group.prev] = np.asarray(weights[group.prev], np.float32) / s32
    cols = group.columns(s32)
    for lin in group.linears:
        out[f"{lin}.weight"] = np.asarray(weights[f"{lin}.weight"], np.float32) * cols[None, :]
    return out
