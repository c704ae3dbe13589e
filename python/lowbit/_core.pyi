# Type stubs of the compiled extension `lowbit._core` (rust/py/src/lib.rs). Keep in sync.
from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str

def qtypes() -> list[dict[str, Any]]: ...
def isa() -> str: ...
def available_isas() -> list[str]: ...
def layout(
    qtype: str, rows: int, cols: int, group_size: int | None = None, symmetric: bool | None = None
) -> tuple[str, int | None, bool | None, int]: ...
def quantize(
    x: npt.NDArray[Any],
    qtype: str,
    source_dtype: str,
    group_size: int | None = None,
    symmetric: bool | None = None,
    importance: npt.NDArray[np.float32] | None = None,
    clip_ratio: float | None = None,
    group_min: npt.NDArray[np.float32] | None = None,
    group_max: npt.NDArray[np.float32] | None = None,
    isa: str | None = None,
) -> tuple[str, int | None, bool | None, int, npt.NDArray[np.uint8]]: ...
def dequantize(
    data: npt.NDArray[np.uint8],
    qtype: str,
    rows: int,
    cols: int,
    group_size: int | None = None,
    symmetric: bool | None = None,
    isa: str | None = None,
) -> npt.NDArray[np.float32]: ...
def matmul(
    x: npt.NDArray[np.float32],
    data: npt.NDArray[np.uint8],
    qtype: str,
    rows: int,
    cols: int,
    group_size: int | None = None,
    symmetric: bool | None = None,
    perm: npt.NDArray[np.uint32] | None = None,
    row_ptr: npt.NDArray[np.uint64] | None = None,
    ocols: npt.NDArray[np.uint32] | None = None,
    ovals: npt.NDArray[np.uint16] | None = None,
    isa: str | None = None,
    reference: bool = False,
    act: tuple[str, float] | None = None,
    packed: bool = False,
) -> npt.NDArray[np.float32]: ...
def pack_rows(data: npt.NDArray[np.uint8], qtype: str, rows: int, cols: int) -> npt.NDArray[np.uint8]: ...

class MapOwner:
    """Base object of the numpy views of a mapped LBF file; keeps the map alive."""

    @property
    def path(self) -> str: ...

class LbfReader:
    def __init__(self, path: str) -> None: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    def header(self) -> dict[str, Any]: ...
    def metadata(self) -> list[tuple[str, str, Any]]: ...
    def tensors(
        self,
    ) -> list[tuple[str, str, int | None, bool | None, list[int], list[tuple[str, int, int, int]]]]: ...
    def parts(self, name: str) -> dict[str, npt.NDArray[np.uint8]]: ...
    def verify(self) -> list[tuple[str, str]]: ...

class LbfWriter:
    def __init__(self, path: str, inputs: list[str]) -> None: ...
    def add_tensor(
        self,
        name: str,
        qtype: str,
        dims: list[int],
        parts: list[tuple[str, npt.NDArray[np.uint8]]],
        group_size: int | None = None,
        symmetric: bool | None = None,
    ) -> None: ...
    def finish(self, metadata: list[tuple[str, str, Any]]) -> None: ...
    def abort(self) -> None: ...

# The engine (rust/py/src/model.rs). `config` keys: arch ("llama" | "mistral" | "qwen2"),
# vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
# num_key_value_heads, head_dim, rms_norm_eps, rope_theta, tie_word_embeddings, attention_bias,
# max_position_embeddings, rope_type ("default" | "linear" | "llama3"), and as the rope_type needs
# them rope_factor, rope_low_freq_factor, rope_high_freq_factor, rope_original_max_position_embeddings;
# optional: sliding_window (mistral).
class Engine:
    def __init__(self, path: str, config: dict[str, Any], isa: str | None = None) -> None: ...
    def session(self, max_context: int) -> Session: ...
    @property
    def isa(self) -> str: ...

class Session:
    def forward(self, tokens: npt.NDArray[np.uint32], all_logits: bool) -> npt.NDArray[np.float32]: ...
    @property
    def position(self) -> int: ...
    @property
    def max_context(self) -> int: ...
    def reset(self) -> None: ...
    def truncate(self, n: int) -> None: ...

def layer_forward(
    config: dict[str, Any],
    tensors: dict[str, Any],
    x: npt.NDArray[np.float32],
    seq_len: int,
    taps: list[str],
    isa: str | None = None,
) -> tuple[npt.NDArray[np.float32], dict[str, npt.NDArray[np.float32]]]: ...

class Sampler:
    def __init__(self, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> None: ...
    def sample(self, logits: npt.NDArray[np.float32]) -> int: ...
