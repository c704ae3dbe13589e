"""What every checkpoint reader gives the converter: a model's tensors, one at a time, in Hugging
Face names and layout, plus its config, generation config and tokenizer.

A `Source` is cheap to open: it validates the container (headers, index, names, shapes) and
describes each tensor without reading its data. `SourceTensor.load()` then reads one tensor
(memory-mapped where the container allows) and returns it as a fresh float32 array, so the
converter holds one tensor at a time.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["Source", "SourceTensor", "release_pages"]


@dataclass(frozen=True)
class SourceTensor:
    """One tensor of a source checkpoint.

    Attributes:
        name: the Hugging Face name (`model.layers.0.self_attn.q_proj.weight`); GGUF names are
            mapped, unknown names kept as they are.
        shape: numpy order, HF layout (a linear weight is (out_features, in_features)).
        dtype: the stored type, upper case: safetensors dtypes (`F32`, `F16`, `BF16`, `F64`) or
            ggml type names (`Q4_1`, `Q6_K`, ...).
        nbytes: bytes the tensor occupies in the source.
        loader: returns the values as a C-contiguous float32 array of `shape` (a new array, not a
            view of the file).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    loader: Callable[[], npt.NDArray[np.float32]] = field(repr=False, compare=False)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def load(self) -> npt.NDArray[np.float32]:
        return self.loader()


class Source(Protocol):
    """An opened checkpoint. Close it (or use it as a context manager) to release its maps.

    path: the file or directory read; kind: "hf", "gguf" or "lbf"; config: the HF config.json
    (built from metadata for GGUF sources); generation_config, tokenizer_config: those HF JSON
    files, if any; tokenizer_json: the HF tokenizers JSON, verbatim, if any; tensors: in a stable
    order (layers 0, 1, 2, ... for HF checkpoints)."""

    @property
    def path(self) -> Path: ...
    @property
    def kind(self) -> str: ...
    @property
    def config(self) -> dict[str, Any]: ...
    @property
    def generation_config(self) -> dict[str, Any] | None: ...
    @property
    def tokenizer_json(self) -> str | None: ...
    @property
    def tokenizer_config(self) -> dict[str, Any] | None: ...
    @property
    def tensors(self) -> Sequence[SourceTensor]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> None: ...


def release_pages(mm: mmap.mmap, offset: int, length: int) -> None:
    """Drop the pages of `mm[offset:offset + length]` from this process (MADV_DONTNEED on a
    read-only file map: they stay in the page cache but leave our RSS). Readers call it after
    copying a tensor out, so streaming a model through a map costs one tensor of RSS, not the
    file. No-op where madvise is unavailable."""
    if length <= 0 or not hasattr(mmap, "MADV_DONTNEED"):
        return
    start = offset - offset % mmap.PAGESIZE
    end = min(len(mm), offset + length)
    if end > start:
        mm.madvise(mmap.MADV_DONTNEED, start, end - start)
