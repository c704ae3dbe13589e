"""Hugging Face checkpoints as a `Source`, and `resolve_source`, which turns what a user typed (a
directory, a GGUF file, a Hub repo id) into an opened `Source`.

A checkpoint directory holds `config.json` (required), optionally `generation_config.json`,
`tokenizer.json` and `tokenizer_config.json`, and its weights as safetensors: shards listed by
`model.safetensors.index.json`, or `model.safetensors`, or other `*.safetensors` files without an
index. Pickle checkpoints (`*.bin`, `*.pt`, `*.pth`, `*.ckpt`) are never loaded: unpickling runs
arbitrary code.

Everything is validated when the checkpoint is opened (JSON files, the index against the shards'
own headers, every shard header); tensor data is read, memory-mapped, only by
`SourceTensor.load()`.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import FormatError, ParameterError, UnsupportedError
from ..lbf import LBF_MAGIC
from ._files import unique_keys
from .gguf_source import GGUF_MAGIC as _GGUF_MAGIC
from .safetensors_io import SafetensorsFile
from .source import Source, SourceTensor

__all__ = ["HUB_ALLOW_PATTERNS", "HUB_IGNORE_PATTERNS", "HFCheckpoint", "open_hf_checkpoint", "resolve_source"]

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# What `resolve_source` downloads from the Hub: weights as safetensors, the JSON files (config,
# generation config, index, tokenizer) and the tokenizer's model/vocabulary files. No pickles.
HUB_ALLOW_PATTERNS = ["*.safetensors", "*.json", "tokenizer.model", "vocab.txt", "merges.txt"]
# Files in subfolders (alternative formats, "original/" weights) are not needed.
HUB_IGNORE_PATTERNS = ["*/*"]
# An HF repo id: `owner/name`, each part letters, digits, `-`, `_`, `.`, not starting or ending
# with `-` or `.`, no `--` or `..`, at most 96 characters in all (huggingface_hub's validation).
_REPO_ID = re.compile(r"[A-Za-z0-9_](?:[\w.-]*[A-Za-z0-9_])?/[A-Za-z0-9_](?:[\w.-]*[A-Za-z0-9_])?", re.ASCII)
_REPO_ID_MAX = 96
_DIGITS = re.compile(r"(\d+)")


def _pickle_refusal(what: str) -> UnsupportedError:
    return UnsupportedError(
        f"{what}: pickle checkpoints (.bin/.pt/.pth/.ckpt) are not loaded, since unpickling can run arbitrary "
        "code; lowbit reads safetensors. Convert the checkpoint once in a trusted environment, e.g. "
        "`AutoModelForCausalLM.from_pretrained(dir).save_pretrained(out_dir, safe_serialization=True)` "
        "with transformers, or use a safetensors revision of the model"
    )


def _natural_key(name: str) -> tuple[tuple[Any, ...], str]:
    """Sort key comparing digit runs as numbers: `layers.2` before `layers.10`."""
    parts = _DIGITS.split(name)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


def _read_json_object(path: Path, *, strict: bool = True) -> tuple[str, dict[str, Any]]:
    """The text of a JSON file and its top-level object. `strict` refuses duplicate keys.
    Raises FormatError (not UTF-8, not JSON, not an object) or OSError."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{path}: not valid UTF-8 ({e.reason})", e.start) from None
    try:
        obj = json.loads(text, object_pairs_hook=unique_keys) if strict else json.loads(text)
    except json.JSONDecodeError as e:
        at = len(text[: e.pos].encode("utf-8"))
        raise FormatError(f"{path}: invalid JSON: {e.msg} (line {e.lineno}, column {e.colno})", at) from None
    except ValueError as e:
        raise FormatError(f"{path}: {e}") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{path}: the JSON is a {type(obj).__name__}, not an object")
    return text, obj


def _optional_json(path: Path) -> dict[str, Any] | None:
    return _read_json_object(path)[1] if path.is_file() else None


class HFCheckpoint:
    """An opened Hugging Face checkpoint directory (`Source` of kind "hf").

    `tensors` is sorted by name in natural order (digit runs compared as numbers, so
    `model.layers.2.*` comes before `model.layers.10.*`); each `SourceTensor.dtype` is the
    safetensors dtype and `load()` returns float32 (F64/F32/F16/BF16 tensors; other dtypes raise
    `UnsupportedError` when loaded). `shards` are the opened safetensors files, closed by `close()`.
    """

    kind = "hf"

    def __init__(
        self,
        path: Path,
        config: dict[str, Any],
        generation_config: dict[str, Any] | None,
        tokenizer_json: str | None,
        tokenizer_config: dict[str, Any] | None,
        shards: Sequence[SafetensorsFile],
    ) -> None:
        self.path = path
        self.config = config
        self.generation_config = generation_config
        self.tokenizer_json = tokenizer_json
        self.tokenizer_config = tokenizer_config
        self.shards = list(shards)
        items = [
            SourceTensor(name, e.shape, e.dtype, e.nbytes, functools.partial(sf.load_f32, name))
            for sf in self.shards
            for name, e in sf.tensors.items()
        ]
        self.tensors: Sequence[SourceTensor] = sorted(items, key=lambda t: _natural_key(t.name))

    def close(self) -> None:
        for sf in self.shards:
            sf.close()

    def __enter__(self) -> HFCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shard_path(root: Path, index: Path, name: str, file: object) -> Path:
    """The shard file the index names for tensor `name`: a relative POSIX path inside the
    checkpoint directory (no absolute paths, `..`, `.` or empty components, no backslashes)."""
    if not isinstance(file, str) or not file:
        raise FormatError(f"{index}: weight_map[{name!r}] must be a non-empty file name, got {file!r}")
    parts = file.split("/")
    if "\\" in file or "\0" in file or any(p in ("", ".", "..") for p in parts):
        raise FormatError(f"{index}: weight_map[{name!r}] = {file!r} is not a plain relative path inside {root}")
    return root.joinpath(*parts)


def _open_indexed(root: Path, index: Path) -> list[SafetensorsFile]:
    """Open the shards an index lists and check the index against what each shard holds."""
    _, obj = _read_json_object(index)
    weight_map = obj.get("weight_map")
    if not isinstance(weight_map, dict):
        raise FormatError(f"{index}: 'weight_map' must be an object of tensor name → shard file")
    if not weight_map:
        raise FormatError(f"{index}: 'weight_map' is empty")
    files = {name: _shard_path(root, index, name, f) for name, f in weight_map.items()}
    shards: dict[Path, SafetensorsFile] = {}
    try:
        for p in dict.fromkeys(files.values()):
            if not p.is_file():
                raise FormatError(f"{index}: shard {p.relative_to(root)} is missing from {root}")
            shards[p] = SafetensorsFile(p)
        holder: dict[str, Path] = {}
        for p, sf in shards.items():
            for name in sf.tensors:
                if name in holder:
                    raise FormatError(
                        f"tensor {name!r} is in two shards: {holder[name].relative_to(root)} and {p.relative_to(root)}"
                    )
                holder[name] = p
                if name not in files:
                    raise FormatError(
                        f"{index}: shard {p.relative_to(root)} holds tensor {name!r}, which the index does not list"
                    )
                if files[name] != p:
                    raise FormatError(
                        f"{index}: shard {p.relative_to(root)} holds tensor {name!r}, which the index assigns to "
                        f"{files[name].relative_to(root)}"
                    )
        for name, p in files.items():
            if name not in holder:
                raise FormatError(
                    f"{index}: puts tensor {name!r} in shard {p.relative_to(root)}, which does not hold it"
                )
    except BaseException:
        for sf in shards.values():
            sf.close()
        raise
    return list(shards.values())


def _open_unindexed(root: Path, files: list[Path]) -> list[SafetensorsFile]:
    """Open shards found without an index; a tensor in two of them is an error."""
    shards: list[SafetensorsFile] = []
    try:
        holder: dict[str, Path] = {}
        for p in files:
            sf = SafetensorsFile(p)
            shards.append(sf)
            for name in sf.tensors:
                if name in holder:
                    raise FormatError(f"{root}: tensor {name!r} is in both {holder[name].name} and {p.name}")
                holder[name] = p
    except BaseException:
        for sf in shards:
            sf.close()
        raise
    return shards


def open_hf_checkpoint(path: str | os.PathLike[str]) -> HFCheckpoint:
    """Open the Hugging Face checkpoint directory `path` (see the module docstring for what it
    holds). Weights come from `model.safetensors.index.json` if present, else `model.safetensors`,
    else every `*.safetensors` in the directory.

    Raises `FormatError` (config.json missing or invalid, bad JSON, a malformed safetensors file,
    an index that disagrees with its shards, a tensor in two files, no weights),
    `UnsupportedError` (only pickle weights), `NotADirectoryError`/`FileNotFoundError`, `OSError`.
    """
    root = Path(path)
    if not root.is_dir():
        if root.exists():
            raise NotADirectoryError(f"{root}: a Hugging Face checkpoint is a directory (with config.json)")
        raise FileNotFoundError(f"{root}: no such checkpoint directory")
    cfg = root / "config.json"
    if not cfg.is_file():
        raise FormatError(f"{root}: config.json is missing; it is required to describe the model")
    _, config = _read_json_object(cfg)
    generation_config = _optional_json(root / "generation_config.json")
    tokenizer_config = _optional_json(root / "tokenizer_config.json")
    tok = root / "tokenizer.json"
    tokenizer_json = _read_json_object(tok, strict=False)[0] if tok.is_file() else None

    files = sorted(
        (p for p in root.iterdir() if p.suffix == ".safetensors" and p.is_file()), key=lambda p: _natural_key(p.name)
    )
    index = root / INDEX_NAME
    if index.is_file():
        shards = _open_indexed(root, index)
    elif files:
        shards = _open_unindexed(root, [root / SINGLE_NAME] if (root / SINGLE_NAME).is_file() else files)
    elif any(p.suffix in PICKLE_SUFFIXES and p.is_file() for p in root.iterdir()):
        raise _pickle_refusal(str(root))
    else:
        raise FormatError(f"{root}: no weights found (expected {INDEX_NAME}, {SINGLE_NAME} or *.safetensors)")
    return HFCheckpoint(root, config, generation_config, tokenizer_json, tokenizer_config, shards)


def _open_gguf(path: Path) -> Source:
    from .gguf_source import open_gguf

    return open_gguf(path)


def _looks_like_repo_id(s: str) -> bool:
    return len(s) <= _REPO_ID_MAX and "--" not in s and ".." not in s and _REPO_ID.fullmatch(s) is not None


def _download(repo_id: str, revision: str | None) -> Path:
    """Snapshot the repo's weights, config and tokenizer files into the HF cache (honouring
    HF_HOME, HF_HUB_OFFLINE, HF_TOKEN); returns the snapshot directory."""
    import huggingface_hub

    at = f"{repo_id}@{revision}" if revision else repo_id
    # huggingface_hub's errors derive from builtins across its versions: LocalEntryNotFoundError
    # (offline or unreachable, not cached) from FileNotFoundError, HTTP errors (no such repo or
    # revision, gated, server errors) from OSError, HFValidationError from ValueError.
    try:
        snapshot = huggingface_hub.snapshot_download(
            repo_id, revision=revision, allow_patterns=HUB_ALLOW_PATTERNS, ignore_patterns=HUB_IGNORE_PATTERNS
        )
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{at}: not a local path, and this Hugging Face repo is not in the local cache and cannot be "
            f"downloaded (offline, HF_HUB_OFFLINE set, or no network): {e}"
        ) from e
    except OSError as e:
        raise OSError(f"{at}: not a local path, and downloading it from the Hugging Face Hub failed: {e}") from e
    except ValueError as e:
        raise ParameterError(f"{at}: not a valid Hugging Face repo id or revision: {e}") from e
    return Path(snapshot)


def resolve_source(src: str | os.PathLike[str], *, revision: str | None = None) -> Source:
    """Open what `src` names as a `Source`:

    - a directory → `open_hf_checkpoint`;
    - a file starting with the GGUF magic → the GGUF reader;
    - a pickle file (`.bin`, `.pt`, `.pth`, `.ckpt`) → `UnsupportedError`;
    - a `.safetensors` file → `ParameterError` (pass its checkpoint directory: config.json is needed);
    - a file starting with LBF's magic → the LBF model (`open_lbf`, values dequantized);
    - any other file → `FormatError`;
    - a string that is not an existing path and looks like an HF repo id (`owner/name`) → the
      repo's safetensors, JSON and tokenizer files are downloaded (or found in the cache) with
      `huggingface_hub.snapshot_download` at `revision`, and the snapshot is opened;
    - anything else → `FileNotFoundError`.

    `revision` (branch, tag or commit) applies to repo ids only; with a local path it raises
    `ParameterError`. Download failures name the repo id: `FileNotFoundError` (offline or
    unreachable, and not cached), `OSError` (no such repo or revision, gated or private, server
    or network errors), `ParameterError` (an id or revision the Hub client refuses).
    """
    p = Path(src)
    if p.exists():
        if revision is not None:
            raise ParameterError(f"{p}: revision={revision!r} applies to Hugging Face repo ids, not local paths")
        if p.is_dir():
            return open_hf_checkpoint(p)
        with open(p, "rb") as f:
            magic = f.read(8)
        if magic[: len(_GGUF_MAGIC)] == _GGUF_MAGIC:
            return _open_gguf(p)
        if magic == LBF_MAGIC:
            from .lbf_source import open_lbf

            return open_lbf(p)
        if p.suffix.lower() in PICKLE_SUFFIXES:
            raise _pickle_refusal(str(p))
        if p.suffix.lower() == ".safetensors":
            raise ParameterError(
                f"{p}: pass the checkpoint directory holding this file and its config.json, not the file"
            )
        raise FormatError(f"{p}: neither a GGUF or LBF file (magic {magic!r}) nor a checkpoint directory")
    if isinstance(src, str) and _looks_like_repo_id(src):
        return open_hf_checkpoint(_download(src, revision))
    raise FileNotFoundError(f"{src}: no such file or directory, and not a Hugging Face repo id (owner/name)")
