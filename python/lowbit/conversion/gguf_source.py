"""GGUF → Hugging Face checkpoint: the demo's first step (ARCHITECTURE.md §6).

`gguf_to_hf` reads a llama-architecture GGUF file with the `gguf` package's memory-mapped
`GGUFReader`, dequantizes each tensor with lowbit's own dequantizers, maps the names to the HF
llama layout, undoes llama.cpp's q/k row permutation, and writes a checkpoint directory:

- `model-0000i-of-0000n.safetensors` (float32) + `model.safetensors.index.json`;
- `config.json` (`LlamaForCausalLM`) and `generation_config.json` from the `llama.*` metadata;
- `tokenizer.json` (byte-level BPE for the HF `tokenizers` library, built from the
  `tokenizer.ggml.*` metadata) and `tokenizer_config.json` (special tokens, chat template).

Everything is validated before anything is written (tensor types, names, shapes, metadata,
tokenizer), the output is assembled in a hidden temporary directory next to the destination and
renamed into place at the end: an error leaves no half-written checkpoint.
"""

from __future__ import annotations

import functools
import json
import math
import mmap
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ClosedError, FormatError, LowbitWarning, UnsupportedError
from ..qtensor import QTensor, dequantize
from .hf_writer import DEFAULT_SHARD_BYTES, write_hf_checkpoint
from .source import SourceTensor, release_pages

__all__ = ["SUPPORTED_ARCHITECTURES", "GGUFSource", "gguf_to_hf", "open_gguf", "permute_qk", "unpermute_qk"]

SUPPORTED_ARCHITECTURES = ("llama",)

# GGUF files start with these 4 bytes (ggml docs/gguf.md).
GGUF_MAGIC = b"GGUF"

# ggml type ids that are plain floats: read directly with numpy, no block decoding.
_GGML_F32 = 0
_GGML_F16 = 1

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type / gguf-py's TokenType).
_TOKEN_NORMAL, _TOKEN_UNKNOWN, _TOKEN_CONTROL, _TOKEN_USER_DEFINED, _TOKEN_UNUSED, _TOKEN_BYTE = 1, 2, 3, 4, 5, 6

# GGUF llama tensor names → HF llama names. Per-block names are matched as `blk.N.<key>.<suffix>`.
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
GGUF_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.([a-z_]+)\.(weight|bias)")

# tokenizer.ggml.pre → HF pre-tokenizer. The regexes are the split patterns llama.cpp applies
# for each pre-tokenizer name (src/llama-vocab.cpp), which reproduce the original HF
# tokenizer.json's pre-tokenizer.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_GPT2 = ("default", "gpt2", "gpt-2", "mpt", "olmo", "jais")
_PRE_DIGITS_GPT2 = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")
_PRE_LLAMA3 = ("llama-bpe", "llama3", "smaug-bpe")
_PRE_QWEN2 = ("qwen2",)


# ---------------------------------------------------------------------------------------------
# q/k row permutation


def permute_qk(w: npt.NDArray[Any], n_head: int) -> npt.NDArray[Any]:
    """llama.cpp's permutation of q/k rows (HF layout → GGUF layout): within each head, the rows
    of the first and second rotary halves are interleaved. `w` has shape (rows, ...) with
    rows divisible by 2·n_head; use n_head for q and n_head_kv for k. Returns a new array."""
    rows = _check_qk_rows(w, n_head)
    return np.ascontiguousarray(w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2)).reshape(w.shape)


def unpermute_qk(w: npt.NDArray[Any], n_head: int) -> npt.NDArray[Any]:
    """The inverse of `permute_qk` (GGUF layout → HF layout), ARCHITECTURE.md §6."""
    rows = _check_qk_rows(w, n_head)
    return np.ascontiguousarray(w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2)).reshape(w.shape)


def _check_qk_rows(w: npt.NDArray[Any], n_head: int) -> int:
    rows = int(w.shape[0]) if w.ndim else 0
    if n_head <= 0 or rows % (2 * n_head):
        raise FormatError(f"cannot (un)permute {rows} rows for {n_head} heads: rows must be a multiple of 2·heads")
    return rows


# ---------------------------------------------------------------------------------------------
# Reading the GGUF file


def _open_reader(path: Path) -> Any:
    """Open `path` with gguf's GGUFReader, turning its failures into `FormatError`s."""
    try:
        from gguf import GGUFReader
    except ImportError as e:  # pragma: no cover - gguf is a dependency of convert
        raise UnsupportedError("reading GGUF files needs the `gguf` package (pip install gguf)") from e
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            magic = f.read(4)
    except IsADirectoryError:
        raise FormatError(f"{path} is a directory, not a GGUF file") from None
    if magic != GGUF_MAGIC:
        raise FormatError(f"{path} is not a GGUF file: it starts with {magic!r}, not {GGUF_MAGIC!r}", offset=0)
    try:
        reader = GGUFReader(path, "r")
    except (ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError, TypeError) as e:
        # GGUFReader reads a truncated file as short slices that then fail to reshape; an unknown
        # ggml type id or value type is a ValueError too.
        raise FormatError(f"{path} ({size} bytes) is not a readable GGUF file (truncated or corrupt?): {e}") from e
    if reader.byte_order != "I":
        raise UnsupportedError(f"{path} is a GGUF file of the other byte order (big-endian): not supported")
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise FormatError(f"tensor {t.name} ends at byte {end}, past the end of the file ({size})", t.data_offset)
    return reader


def _field(reader: Any, key: str) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return None
    try:
        return f.contents()
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        raise FormatError(f"GGUF metadata {key} cannot be read: {e}", offset=int(f.offset)) from e


def _req(reader: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    v = _field(reader, key)
    if v is None:
        raise FormatError(f"GGUF metadata {key} is missing")
    return _typed(reader, key, v, kind)


def _opt(reader: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    v = _field(reader, key)
    return None if v is None else _typed(reader, key, v, kind)


def _typed(reader: Any, key: str, v: Any, kind: type | tuple[type, ...]) -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int subclass: never accept it where a number is meant, and vice versa.
    ok = isinstance(v, kinds) and not (isinstance(v, bool) and bool not in kinds)
    if not ok:
        names = "/".join(k.__name__ for k in kinds)
        raise FormatError(
            f"GGUF metadata {key} should be {names}, got {type(v).__name__}", int(reader.fields[key].offset)
        )
    return v


# ---------------------------------------------------------------------------------------------
# The plan: every tensor checked before anything is written


@dataclass(frozen=True)
class _Item:
    gguf_name: str
    hf_name: str
    qtype: str  # lowbit qtype name, or "f32"/"f16" read directly
    ggml_type: int
    shape: tuple[int, ...]  # numpy order (GGUF ne reversed)
    n_head: int  # > 0: undo the q/k permutation with this many heads
    index: int  # position in reader.tensors

    @property
    def out_bytes(self) -> int:
        return 4 * math.prod(self.shape)


def _hf_name(name: str) -> str | None:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    m = _BLOCK_RE.fullmatch(name)
    if m and m.group(2) in GGUF_BLOCK_NAMES:
        return f"model.layers.{int(m.group(1))}.{GGUF_BLOCK_NAMES[m.group(2)]}.{m.group(3)}"
    return None


def _plan(reader: Any, n_head: int, n_head_kv: int) -> list[_Item]:
    from .. import qtypes

    table = [t for t in qtypes() if t.gguf_type is not None]
    by_id = {t.gguf_type: t.name for t in table}
    block = {t.gguf_type: t.block_size for t in table}
    items: list[_Item] = []
    unsupported: list[str] = []
    unknown: list[str] = []
    for i, t in enumerate(reader.tensors):
        ggml_type = int(t.tensor_type)
        if ggml_type not in by_id:
            unsupported.append(f"{t.name} ({t.tensor_type.name})")
            continue
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        if shape and shape[-1] % block[ggml_type]:
            raise FormatError(
                f"{t.name}: rows of {shape[-1]} values do not fill whole {t.tensor_type.name} blocks "
                f"of {block[ggml_type]}",
                int(t.data_offset),
            )
        hf = _hf_name(t.name)
        if hf is None:
            unknown.append(t.name)
            hf = t.name
        heads = 0
        if re.fullmatch(r"blk\.\d+\.attn_q\.(weight|bias)", t.name):
            heads = n_head
        elif re.fullmatch(r"blk\.\d+\.attn_k\.(weight|bias)", t.name):
            heads = n_head_kv
        if heads and (not shape or shape[0] % (2 * heads)):
            raise FormatError(f"{t.name} has shape {shape}: its rows do not split into {heads} heads × 2 halves")
        items.append(_Item(t.name, hf, by_id[ggml_type], ggml_type, shape, heads, i))
    if unsupported:
        known = ", ".join(sorted(by_id.values()))
        raise UnsupportedError(
            f"{len(unsupported)} tensor(s) of a ggml type lowbit cannot dequantize: {', '.join(unsupported[:8])}"
            + (" ..." if len(unsupported) > 8 else "")
            + f" (supported: {known})"
        )
    seen: dict[str, str] = {}
    for it in items:
        if it.hf_name in seen:
            raise FormatError(f"tensors {seen[it.hf_name]} and {it.gguf_name} both map to {it.hf_name}")
        seen[it.hf_name] = it.gguf_name
    if unknown:
        warnings.warn(
            f"{len(unknown)} GGUF tensor name(s) without an HF llama equivalent, kept as they are: "
            + ", ".join(unknown[:8])
            + (" ..." if len(unknown) > 8 else ""),
            LowbitWarning,
            stacklevel=3,
        )
    return items


def _dequantize(reader: Any, mm: mmap.mmap, it: _Item) -> npt.NDArray[np.float32]:
    """One tensor as float32 in numpy order, q/k rows un-permuted. Its bytes are read through
    `mm` (a map of the same file) and released from the process afterwards."""
    t = reader.tensors[it.index]
    n = math.prod(it.shape)
    offset, nbytes = int(t.data_offset), int(t.n_bytes)
    if n == 0:
        out = np.zeros(it.shape, np.float32)
    elif it.ggml_type == _GGML_F32:
        out = np.frombuffer(mm, "<f4", n, offset).reshape(it.shape).copy()
    elif it.ggml_type == _GGML_F16:
        out = np.frombuffer(mm, "<f2", n, offset).astype(np.float32).reshape(it.shape)
    else:
        cols = it.shape[-1]
        raw = np.frombuffer(mm, np.uint8, nbytes, offset)
        out = dequantize(QTensor.from_bytes(raw, it.qtype, (n // cols, cols))).reshape(it.shape)
        del raw
    release_pages(mm, offset, nbytes)
    if it.n_head:
        out = unpermute_qk(out, it.n_head)
    return np.ascontiguousarray(out)


# ---------------------------------------------------------------------------------------------
# config.json


def _config(reader: Any, arch: str, items: list[_Item], n_vocab: int, tok: dict[str, Any]) -> dict[str, Any]:
    p = f"{arch}."
    hidden = _req(reader, p + "embedding_length", int)
    n_head = _req(reader, p + "attention.head_count", int)
    n_head_kv = _opt(reader, p + "attention.head_count_kv", int) or n_head
    names = {it.gguf_name: it for it in items}
    emb = names.get("token_embd.weight")
    if emb is None:
        raise FormatError("the GGUF file has no token_embd.weight tensor")
    if emb.shape[0] != n_vocab:
        warnings.warn(
            f"token_embd.weight has {emb.shape[0]} rows but the tokenizer has {n_vocab} tokens; "
            "config.json uses the embedding's row count",
            LowbitWarning,
            stacklevel=3,
        )
    cfg: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": _req(reader, p + "feed_forward_length", int),
        "num_hidden_layers": _req(reader, p + "block_count", int),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_head_kv,
        "max_position_embeddings": _req(reader, p + "context_length", int),
        "rms_norm_eps": _req(reader, p + "attention.layer_norm_rms_epsilon", float),
        "rope_theta": float(_opt(reader, p + "rope.freq_base", (float, int)) or 10000.0),
        "vocab_size": emb.shape[0],
        "tie_word_embeddings": "output.weight" not in names,
        "hidden_act": "silu",
        "attention_bias": "blk.0.attn_q.bias" in names,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }
    head_dim = _opt(reader, p + "attention.key_length", int) or _opt(reader, p + "rope.dimension_count", int)
    if head_dim and head_dim != hidden // n_head:
        cfg["head_dim"] = head_dim
    scaling = _opt(reader, p + "rope.scaling.type", str)
    if scaling and scaling != "none":
        factor = _opt(reader, p + "rope.scaling.factor", (float, int))
        cfg["rope_scaling"] = {"type": scaling, "factor": float(factor or 1.0)}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if tok.get(key) is not None:
            cfg[key] = tok[key]
    n_layers = cfg["num_hidden_layers"]
    for it in items:
        m = _BLOCK_RE.fullmatch(it.gguf_name)
        if m and int(m.group(1)) >= n_layers:
            raise FormatError(f"{it.gguf_name} names a block past {p}block_count = {n_layers}")
    return cfg


# ---------------------------------------------------------------------------------------------
# tokenizer.json


def _byte_level(use_regex: bool) -> dict[str, Any]:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


def _pre_tokenizer(pre: str) -> dict[str, Any]:
    def split(regex: str) -> dict[str, Any]:
        return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}

    if pre in _PRE_GPT2:
        return _byte_level(True)
    if pre in _PRE_DIGITS_GPT2:
        return {
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": True}, _byte_level(True)],
        }
    if pre in _PRE_LLAMA3:
        return {"type": "Sequence", "pretokenizers": [split(_LLAMA3_SPLIT), _byte_level(False)]}
    if pre in _PRE_QWEN2:
        return {"type": "Sequence", "pretokenizers": [split(_QWEN2_SPLIT), _byte_level(False)]}
    known = ", ".join(_PRE_GPT2 + _PRE_DIGITS_GPT2 + _PRE_LLAMA3 + _PRE_QWEN2)
    warnings.warn(
        f"tokenizer.ggml.pre = {pre!r} is not one lowbit knows ({known}): using GPT-2's byte-level "
        "pre-tokenizer, text may split differently from the original tokenizer",
        LowbitWarning,
        stacklevel=4,
    )
    return _byte_level(True)


def _tokenizer(reader: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(tokenizer.json, tokenizer_config.json, special ids and `n_tokens`) from the
    tokenizer.ggml.* metadata."""
    model = _req(reader, "tokenizer.ggml.model", str)
    if model != "gpt2":
        raise UnsupportedError(
            f"tokenizer.ggml.model = {model!r}: only byte-level BPE tokenizers ('gpt2') can be rebuilt "
            "for now (sentencepiece 'llama' tokenizers are not supported yet)"
        )
    tokens: list[str] = _req(reader, "tokenizer.ggml.tokens", list)
    merges: list[str] = _opt(reader, "tokenizer.ggml.merges", list) or []
    types: list[int] = _opt(reader, "tokenizer.ggml.token_type", list) or [_TOKEN_NORMAL] * len(tokens)
    if not tokens:
        raise FormatError("tokenizer.ggml.tokens is empty")
    if len(types) != len(tokens):
        raise FormatError(f"tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
    vocab: dict[str, int] = {}
    dups = 0
    for i, tok in enumerate(tokens):
        if tok in vocab:
            dups += 1
        else:
            vocab[tok] = i
    if dups:
        warnings.warn(f"{dups} duplicate token string(s) in tokenizer.ggml.tokens: the first id is kept",
                      LowbitWarning, stacklevel=3)  # fmt: skip
    pairs: list[list[str]] = []
    for i, m in enumerate(merges):
        # llama.cpp splits a merge at the first space after its first character.
        cut = m.find(" ", 1)
        if cut < 0:
            raise FormatError(f"tokenizer.ggml.merges[{i}] = {m!r} is not two tokens separated by a space")
        pairs.append([m[:cut], m[cut + 1 :]])

    def special_id(key: str) -> int | None:
        v: int | None = _opt(reader, f"tokenizer.ggml.{key}", int)
        if v is not None and not 0 <= v < len(tokens):
            raise FormatError(f"tokenizer.ggml.{key} = {v} is outside the vocabulary (0..{len(tokens) - 1})")
        return v

    ids = {
        "bos_token_id": special_id("bos_token_id"),
        "eos_token_id": special_id("eos_token_id"),
        "unk_token_id": special_id("unknown_token_id"),
        "pad_token_id": special_id("padding_token_id"),
    }
    special_ids = {v for v in ids.values() if v is not None}
    added = []
    for i, (tok, ty) in enumerate(zip(tokens, types, strict=True)):
        if ty in (_TOKEN_CONTROL, _TOKEN_UNKNOWN, _TOKEN_USER_DEFINED) or i in special_ids:
            special = ty != _TOKEN_USER_DEFINED
            added.append(
                {
                    "id": i,
                    "content": tok,
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": not special,
                    "special": special,
                }
            )
    add_bos = bool(_opt(reader, "tokenizer.ggml.add_bos_token", bool))
    add_eos = bool(_opt(reader, "tokenizer.ggml.add_eos_token", bool))
    pre = _opt(reader, "tokenizer.ggml.pre", str) or "default"
    post: dict[str, Any] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    if (add_bos and ids["bos_token_id"] is not None) or (add_eos and ids["eos_token_id"] is not None):
        post = _template(tokens, ids["bos_token_id"] if add_bos else None, ids["eos_token_id"] if add_eos else None)
    tokenizer_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": _pre_tokenizer(pre),
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": pairs,
        },
    }
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": False,
        "model_max_length": _opt(reader, f"{_req(reader, 'general.architecture', str)}.context_length", int) or 2048,
        "added_tokens_decoder": {
            str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
            for a in added
        },
    }
    for key, name in (("bos_token_id", "bos_token"), ("eos_token_id", "eos_token"), ("unk_token_id", "unk_token"),
                      ("pad_token_id", "pad_token")):  # fmt: skip
        if ids[key] is not None:
            config[name] = tokens[ids[key]]  # type: ignore[index]
    template = _opt(reader, "tokenizer.chat_template", str)
    if template is not None:
        config["chat_template"] = template
    return tokenizer_json, config, {**ids, "n_tokens": len(tokens)}


def _template(tokens: list[str], bos: int | None, eos: int | None) -> dict[str, Any]:
    def seq(name: str, type_id: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if bos is not None:
            out.append({"SpecialToken": {"id": tokens[bos], "type_id": type_id}})
        out.append({"Sequence": {"id": name, "type_id": type_id}})
        if eos is not None:
            out.append({"SpecialToken": {"id": tokens[eos], "type_id": type_id}})
        return out

    specials = {tokens[i]: {"id": tokens[i], "ids": [i], "tokens": [tokens[i]]} for i in (bos, eos) if i is not None}
    return {"type": "TemplateProcessing", "single": seq("A", 0), "pair": seq("A", 0) + seq("B", 1),
            "special_tokens": specials}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Writing


class GGUFSource:
    """A llama-architecture GGUF file opened as a converter `Source` (see `source.py`): HF
    names and layout (q/k rows un-permuted), config.json, generation config and tokenizer.json
    rebuilt from the metadata. Each tensor is dequantized by lowbit when loaded."""

    kind = "gguf"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        reader = _open_reader(self.path)
        arch = _req(reader, "general.architecture", str)
        if arch not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedError(
                f"GGUF architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
            )
        n_head = _req(reader, f"{arch}.attention.head_count", int)
        n_head_kv = _opt(reader, f"{arch}.attention.head_count_kv", int) or n_head
        if n_head <= 0 or n_head_kv <= 0:
            raise FormatError(f"head counts must be positive, got {n_head} and {n_head_kv}")
        items = _plan(reader, n_head, n_head_kv)
        tokenizer_json, self.tokenizer_config, ids = _tokenizer(reader)
        self.tokenizer_json: str | None = json.dumps(tokenizer_json, ensure_ascii=False)
        self.config = _config(reader, arch, items, ids["n_tokens"], ids)
        self.generation_config: dict[str, Any] | None = {
            k: ids[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if ids[k] is not None
        }
        self._reader: Any = reader
        with self.path.open("rb") as fh:
            self._mm: mmap.mmap | None = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self.tensors = [
            SourceTensor(
                it.hf_name,
                it.shape,
                reader.tensors[it.index].tensor_type.name,
                int(reader.tensors[it.index].n_bytes),
                functools.partial(self._load, it),
            )
            for it in items
        ]

    def _load(self, it: _Item) -> npt.NDArray[np.float32]:
        if self._reader is None or self._mm is None:
            raise ClosedError(f"{self.path} is closed")
        return _dequantize(self._reader, self._mm, it)

    def close(self) -> None:
        self._reader = None
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    def __enter__(self) -> GGUFSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_gguf(path: str | os.PathLike[str]) -> GGUFSource:
    """Open a llama-architecture GGUF file as a converter source. Raises `FormatError` (not a
    GGUF file, truncated, inconsistent metadata) or `UnsupportedError` (architecture other than
    llama, a tensor type lowbit cannot dequantize, a non-BPE tokenizer)."""
    return GGUFSource(path)


def gguf_to_hf(
    gguf_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Turn a llama-architecture GGUF file into a Hugging Face checkpoint directory `out_dir`.

    Weights are dequantized with lowbit's dequantizers (every ggml type in `lowbit.qtypes()`
    with a `gguf_type`) and stored as float32 safetensors shards, with llama.cpp's q/k row
    permutation undone; see `write_hf_checkpoint` for sharding, memory and atomicity.

    Raises what `open_gguf` and `write_hf_checkpoint` raise. Returns `out_dir` as a `Path`.
    """
    with open_gguf(gguf_path) as src:
        return write_hf_checkpoint(src, out_dir, shard_bytes=shard_bytes, progress=progress, overwrite=overwrite)
