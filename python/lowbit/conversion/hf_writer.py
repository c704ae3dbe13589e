"""Writing a Hugging Face checkpoint directory from any converter `Source`: float32
safetensors shards + `model.safetensors.index.json`, `config.json`, `generation_config.json`,
`tokenizer.json` and `tokenizer_config.json`.

Used by `gguf_to_hf` (GGUF → HF, the demo's first step) and by `export_hf` (LBF → HF,
dequantized), so both share one sharding rule, one memory bound and one way of publishing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import DestinationExistsError, ParameterError
from ._files import file_mode, progress_bar
from .safetensors_io import SafetensorsWriter
from .source import Source, SourceTensor

__all__ = ["DEFAULT_SHARD_BYTES", "write_hf_checkpoint"]

# Default largest shard: 2 GiB of float32 values (HF's own default is in the same range).
DEFAULT_SHARD_BYTES = 2**31


def _shards(tensors: Sequence[SourceTensor], shard_bytes: int) -> list[list[SourceTensor]]:
    """Greedy in source order: a shard closes when the next tensor would overflow it; a tensor
    larger than `shard_bytes` gets a shard of its own."""
    shards: list[list[SourceTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + 4 * t.numel > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += 4 * t.numel
    return shards


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_hf_checkpoint(
    source: Source,
    out_dir: str | os.PathLike[str],
    *,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write `source` as a Hugging Face checkpoint directory `out_dir`.

    Every tensor is loaded as float32 and streamed into safetensors shards of at most
    `shard_bytes` bytes (a larger tensor gets a shard of its own), so one tensor is in memory at
    a time. The directory is assembled in a hidden temporary folder next to `out_dir` and
    renamed into place at the end: on any error (or Ctrl-C) nothing is left at `out_dir`.

    Raises `ParameterError` (shard_bytes ≤ 0), `DestinationExistsError` (`out_dir` exists and
    `overwrite` is false), and whatever loading a tensor raises. Returns `out_dir` as a `Path`.
    """
    dst = Path(out_dir)
    if shard_bytes <= 0:
        raise ParameterError(f"shard_bytes must be positive, got {shard_bytes}")
    if dst.exists() and not overwrite:
        raise DestinationExistsError(f"{dst} exists (pass overwrite=True to replace it)")
    shards = _shards(source.tensors, shard_bytes)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    try:
        n = len(shards)
        weight_map: dict[str, str] = {}
        total = sum(4 * t.numel for t in source.tensors)
        with progress_bar(total, progress, f"{source.path.name} → HF") as bar:
            for k, shard in enumerate(shards, 1):
                fname = f"model-{k:05d}-of-{n:05d}.safetensors"
                specs = [(t.name, "F32", t.shape) for t in shard]
                with SafetensorsWriter(tmp / fname, specs, metadata={"format": "pt"}) as w:
                    for t in shard:
                        w.write(t.name, t.load())
                        weight_map[t.name] = fname
                        if bar is not None:
                            bar.update(4 * t.numel)
        _write_json(
            tmp / "model.safetensors.index.json",
            {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
        )
        _write_json(tmp / "config.json", {**source.config, "torch_dtype": "float32"})
        if source.generation_config is not None:
            _write_json(tmp / "generation_config.json", source.generation_config)
        if source.tokenizer_json is not None:
            (tmp / "tokenizer.json").write_text(source.tokenizer_json, encoding="utf-8")
        if source.tokenizer_config is not None:
            _write_json(tmp / "tokenizer_config.json", source.tokenizer_config)
        _chmod_umask(tmp)
        _publish(tmp, dst, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def _chmod_umask(d: Path) -> None:
    """mkdtemp makes the directory private (0700): give the finished checkpoint the modes a
    plain mkdir/open would have under the current umask."""
    d.chmod(file_mode(directory=True))
    for f in d.iterdir():
        f.chmod(file_mode())


def _publish(tmp: Path, dst: Path, overwrite: bool) -> None:
    """Move the finished directory into place; an existing `dst` (when allowed) is moved aside
    first and removed only after the rename succeeded."""
    if not dst.exists():
        try:
            tmp.rename(dst)
        except FileExistsError:
            raise DestinationExistsError(f"{dst} appeared while converting") from None
        return
    if not overwrite:
        raise DestinationExistsError(f"{dst} appeared while converting")
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
    old.rmdir()
    dst.rename(old)
    try:
        tmp.rename(dst)
    except BaseException:
        old.rename(dst)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()
