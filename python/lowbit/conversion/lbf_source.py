"""An LBF file as a converter `Source` (tensors dequantized to float32 on load), and
`export_hf`, which writes it back out as a Hugging Face checkpoint."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import FormatError
from ..lbf import LBFFile, load
from ..qtensor import QTensor, dequantize
from .hf_writer import DEFAULT_SHARD_BYTES, write_hf_checkpoint
from .source import SourceTensor

__all__ = ["LBFSource", "export_hf", "json_metadata", "open_lbf"]


def json_metadata(f: LBFFile, key: str, required: bool = False) -> Any:
    """The JSON text stored under metadata `key`, parsed; None when absent (FormatError when
    `required`). A value that is not a string of valid JSON is a FormatError."""
    if key not in f.metadata_types:
        if required:
            raise FormatError(f"{f.path}: metadata {key!r} is missing (not a model converted by lowbit?)")
        return None
    try:
        return json.loads(f.get_str(key))
    except (json.JSONDecodeError, TypeError) as e:
        raise FormatError(f"{f.path}: metadata {key!r} is not valid JSON text: {e}") from e


class LBFSource:
    """An LBF model file opened as a `Source`: names and layout as stored (HF), values
    dequantized to float32 one tensor at a time."""

    kind = "lbf"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._f = load(self.path)
        try:
            config = json_metadata(self._f, "model.config", required=True)
            if not isinstance(config, dict):
                raise FormatError(f"{self.path}: metadata 'model.config' is not a JSON object")
            self.config: dict[str, Any] = config
            self.generation_config: dict[str, Any] | None = json_metadata(self._f, "model.generation_config")
            self.tokenizer_config: dict[str, Any] | None = json_metadata(self._f, "tokenizer.config")
            self.tokenizer_json: str | None = (
                self._f.get_str("tokenizer.json") if "tokenizer.json" in self._f.metadata_types else None
            )
            self.tensors = []
            for name in self._f:
                info = self._f.info(name)
                self.tensors.append(
                    SourceTensor(name, info.shape, info.qtype.upper(), info.nbytes, functools.partial(self._load, name))
                )
        except BaseException:
            self._f.close()
            raise

    def _load(self, name: str) -> npt.NDArray[np.float32]:
        t = self._f[name]
        if isinstance(t, QTensor):
            return dequantize(t)
        return np.array(t, dtype=np.float32, order="C")

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> LBFSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_lbf(path: str | os.PathLike[str]) -> LBFSource:
    """Open an LBF model file (one made by `lowbit convert`: it carries `model.config`)."""
    return LBFSource(path)


def export_hf(
    lbf_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write an LBF model as a Hugging Face checkpoint: every tensor dequantized to float32
    safetensors (HF names and layout), plus config.json, generation_config.json, tokenizer.json
    and tokenizer_config.json from the file's metadata, so any HF tool can load or evaluate the
    quantized model. See `write_hf_checkpoint` for sharding, memory and atomicity."""
    with open_lbf(lbf_path) as src:
        return write_hf_checkpoint(src, out_dir, shard_bytes=shard_bytes, progress=progress, overwrite=overwrite)
