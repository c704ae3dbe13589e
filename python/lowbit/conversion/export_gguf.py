"""LBF → GGUF: hand a lowbit model to llama.cpp.

`export_gguf` reads an LBF file made by the converter (Hugging Face tensor names and layout, the
HF `config.json` in `model.config`, the HF tokenizer in `tokenizer.json` / `tokenizer.config`) and
writes a single GGUF file that llama.cpp loads as it would one made by its own
`convert_hf_to_gguf.py`:

- architectures: HF `llama` and `mistral` → GGUF `llama` (q/k rows permuted to llama.cpp's rotary
  layout, biases included, as its LlamaModel does), `qwen2` → GGUF `qwen2` (no permutation);
- tensors of a ggml type (`lowbit.qtypes()` entries with a `gguf_type`) are copied byte for byte:
  lowbit's blocks are ggml's. Permuting q/k moves whole rows, and a quantized row is
  self-contained, so the permuted copy is exact. 1-D tensors are written as F32;
- metadata: `general.*`, the `{arch}.*` hyper-parameters, and a byte-level BPE tokenizer
  (`tokenizer.ggml.*`, chat template).

Everything is checked before the first byte is written (architecture, config, every tensor's
name, shape and type, the tokenizer); tensors are then streamed one at a time into a temporary
file next to the destination, which is fsynced and renamed into place at the end.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import DestinationExistsError, FormatError, ParameterError, UnsupportedError
from ..lbf import LBFFile, load
from ._files import progress_bar, publish_file
from .gguf_source import GGUF_BLOCK_NAMES, _pre_tokenizer, permute_qk
from .lbf_source import json_metadata

__all__ = ["SUPPORTED_MODEL_TYPES", "ExportReport", "export_gguf"]

# HF model_type → GGUF architecture.
SUPPORTED_MODEL_TYPES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
_HF_ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2"}

# ggml type id of the 1-D tensors, and the stored types they are converted from (raw bytes → f32).
_GGML_F32 = 0
_FLOAT_1D: dict[str, Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.float32]]] = {
    "f32": lambda b: b.view(np.float32),
    "f16": lambda b: b.view(np.float16).astype(np.float32),
    "bf16": lambda b: (b.view(np.uint16).astype(np.uint32) << 16).view(np.float32),
}

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type / gguf-py's TokenType).
_TOKEN_NORMAL, _TOKEN_CONTROL, _TOKEN_USER_DEFINED, _TOKEN_UNUSED = 1, 3, 4, 5

# general.file_type (llama.cpp's llama_ftype) by the qtype holding most of the weights. For the
# k-quants the "_M" mixes, the ones llama-quantize defaults to for these types.
_FILE_TYPES = {
    "f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "q2_k": 10, "q3_k": 12,
    "q4_k": 15, "q5_k": 17, "q6_k": 18, "iq4_nl": 25, "bf16": 32,
}  # fmt: skip
_FILE_TYPE_GUESSED = 1024  # llama_ftype's "not specified", for a type missing above
_GGML_QUANT_VERSION = 2  # ggml.h GGML_QNT_VERSION, which llama.cpp's converter always writes

# tokenizer.ggml.pre names lowbit writes, one per pre-tokenizer that gguf_source rebuilds (the
# other names of gguf_source's table are aliases of these).
_PRE_NAMES = ("gpt2", "smollm", "llama-bpe", "qwen2")

# HF tensor name (after `model.layers.N.`) → GGUF name (after `blk.N.`): gguf_source's table, inverted.
_BLOCK_NAMES = {hf: gg for gg, hf in GGUF_BLOCK_NAMES.items()}


@dataclass(frozen=True)
class ExportReport:
    """What `export_gguf` wrote: `n_tensors` tensors holding `tensor_bytes` bytes of data (without
    alignment padding) in a GGUF file of `file_bytes` bytes at `path`, for GGUF architecture
    `architecture`."""

    path: Path
    architecture: str
    n_tensors: int
    tensor_bytes: int
    file_bytes: int


@dataclass(frozen=True)
class _HParams:
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_vocab: int
    n_ctx: int
    rms_eps: float
    rope_theta: float


@dataclass(frozen=True)
class _Item:
    """One tensor to write: LBF (HF) name, GGUF name, ggml type, numpy-order shape, bytes, and
    the head count of its q/k row permutation (0: none)."""

    name: str
    gguf_name: str
    qtype: str
    ggml_type: int
    shape: tuple[int, ...]
    nbytes: int
    n_head: int

    @property
    def byte_shape(self) -> tuple[int, ...]:
        """(..., bytes per row): the shape gguf's writer turns back into values per row."""
        rows = int(np.prod(self.shape[:-1], dtype=np.int64))
        return (*self.shape[:-1], self.nbytes // rows if rows else 0)


# ---------------------------------------------------------------------------------------------
# Metadata and config


def _architecture(cfg: dict[str, Any]) -> tuple[str, str]:
    """(HF model_type, GGUF architecture)."""
    model_type = cfg.get("model_type")
    if model_type is None:
        archs = cfg.get("architectures") or []
        model_type = _HF_ARCHITECTURES.get(archs[0]) if isinstance(archs, list) and archs else None
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedError(
            f"model_type {model_type!r} (architectures {cfg.get('architectures')}) cannot be exported to GGUF "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    if cfg.get("hidden_act", "silu") != "silu":
        raise UnsupportedError(f"hidden_act {cfg['hidden_act']!r}: llama.cpp's {model_type} graph uses silu")
    return model_type, SUPPORTED_MODEL_TYPES[model_type]


def _cfg_num(cfg: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    v = cfg.get(key)
    v = default if v is None else v
    if v is None:
        raise FormatError(f"model.config has no {key}")
    ok = isinstance(v, int) if kind is int else isinstance(v, int | float)
    if isinstance(v, bool) or not ok or v <= 0:
        raise FormatError(f"model.config {key} = {v!r} is not a positive {kind.__name__}")
    return kind(v)


def _hparams(cfg: dict[str, Any]) -> _HParams:
    n_embd = _cfg_num(cfg, "hidden_size", int)
    n_head = _cfg_num(cfg, "num_attention_heads", int)
    head_dim = _cfg_num(cfg, "head_dim", int, n_embd // n_head or None)
    return _HParams(
        n_layer=_cfg_num(cfg, "num_hidden_layers", int),
        n_embd=n_embd,
        n_ff=_cfg_num(cfg, "intermediate_size", int),
        n_head=n_head,
        n_head_kv=_cfg_num(cfg, "num_key_value_heads", int, n_head),
        head_dim=head_dim,
        n_vocab=_cfg_num(cfg, "vocab_size", int),
        n_ctx=_cfg_num(cfg, "max_position_embeddings", int),
        rms_eps=_cfg_num(cfg, "rms_norm_eps", float),
        rope_theta=_cfg_num(cfg, "rope_theta", float, 10000.0),
    )


def _rope_scaling(cfg: dict[str, Any]) -> tuple[str, float, int | None] | None:
    """(GGUF rope.scaling.type, factor, original context length) or None."""
    rs = cfg.get("rope_scaling")
    if rs is None:
        return None
    if not isinstance(rs, dict):
        raise FormatError(f"model.config rope_scaling = {rs!r} is not an object")
    kind = rs.get("rope_type", rs.get("type"))
    if kind in (None, "default"):
        return None
    if kind not in ("linear", "yarn"):
        raise UnsupportedError(f"rope_scaling type {kind!r} cannot be exported (supported: linear, yarn)")
    factor = _cfg_num(rs, "factor", float)
    orig = rs.get("original_max_position_embeddings")
    return kind, factor, None if orig is None else _cfg_num(rs, "original_max_position_embeddings", int)


# ---------------------------------------------------------------------------------------------
# Tensors: every one checked before anything is written


def _expected(hp: _HParams, permute: bool) -> dict[str, tuple[str, tuple[int, ...], int]]:
    """HF name → (GGUF name, numpy shape, permutation heads) of every tensor the architecture
    may have."""
    q, kv, h = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim, hp.n_embd
    out: dict[str, tuple[str, tuple[int, ...], int]] = {
        "model.embed_tokens.weight": ("token_embd.weight", (hp.n_vocab, h), 0),
        "model.norm.weight": ("output_norm.weight", (h,), 0),
        "lm_head.weight": ("output.weight", (hp.n_vocab, h), 0),
    }
    per_layer: dict[str, tuple[tuple[int, ...], int]] = {
        "self_attn.q_proj.weight": ((q, h), hp.n_head),
        "self_attn.k_proj.weight": ((kv, h), hp.n_head_kv),
        "self_attn.v_proj.weight": ((kv, h), 0),
        "self_attn.o_proj.weight": ((h, q), 0),
        "self_attn.q_proj.bias": ((q,), hp.n_head),
        "self_attn.k_proj.bias": ((kv,), hp.n_head_kv),
        "self_attn.v_proj.bias": ((kv,), 0),
        "mlp.gate_proj.weight": ((hp.n_ff, h), 0),
        "mlp.up_proj.weight": ((hp.n_ff, h), 0),
        "mlp.down_proj.weight": ((h, hp.n_ff), 0),
        "input_layernorm.weight": ((h,), 0),
        "post_attention_layernorm.weight": ((h,), 0),
    }
    for i in range(hp.n_layer):
        for key, (shape, heads) in per_layer.items():
            module, suffix = key.rsplit(".", 1)
            gguf_name = f"blk.{i}.{_BLOCK_NAMES[module]}.{suffix}"
            out[f"model.layers.{i}.{key}"] = (gguf_name, shape, heads if permute else 0)
    return out


def _required(hp: _HParams, tied: bool, biases: bool) -> list[str]:
    names = ["model.embed_tokens.weight", "model.norm.weight"] + ([] if tied else ["lm_head.weight"])
    for i in range(hp.n_layer):
        names += [f"model.layers.{i}.{m}.weight" for m in _BLOCK_NAMES]
        if biases:
            names += [f"model.layers.{i}.self_attn.{p}_proj.bias" for p in "qkv"]
    return names


def _plan(f: LBFFile, model_type: str, arch: str, hp: _HParams, cfg: dict[str, Any]) -> list[_Item]:
    from .. import qtypes

    ggml_ids = {t.name: t.gguf_type for t in qtypes() if t.gguf_type is not None}
    permute = arch == "llama"
    if permute and hp.head_dim % 2:
        raise FormatError(f"head_dim {hp.head_dim} is odd: q/k rows cannot be split into two rotary halves")
    expected = _expected(hp, permute)
    tied = "lm_head.weight" not in f
    if tied and cfg.get("tie_word_embeddings") is False:
        raise FormatError("the LBF has no lm_head.weight but model.config says tie_word_embeddings = false")
    offenders: list[str] = []
    unknown: list[str] = []
    bad_shape: list[str] = []
    items: list[_Item] = []
    for info in f.tensors:
        kinds = sorted(p.kind for p in info.parts if p.kind != "data")
        if info.qtype not in (_FLOAT_1D if len(info.shape) == 1 else ggml_ids) or kinds:
            offenders.append(f"{info.name} ({info.qtype}{' with ' + '+'.join(kinds) if kinds else ''})")
        if info.name not in expected:
            unknown.append(info.name)
            continue
        gguf_name, shape, heads = expected[info.name]
        if info.shape != shape:
            bad_shape.append(f"{info.name} {info.shape} (expected {shape})")
        if offenders or unknown or bad_shape:
            continue
        one_d = len(shape) == 1
        ggml_type = _GGML_F32 if one_d else ggml_ids[info.qtype]
        nbytes = 4 * shape[0] if one_d else info.nbytes
        items.append(_Item(info.name, gguf_name, info.qtype, ggml_type, shape, nbytes, heads))
    if offenders:
        raise UnsupportedError(
            f"{len(offenders)} tensor(s) have no GGUF equivalent: {', '.join(offenders)}. GGUF holds the ggml "
            f"types only ({', '.join(ggml_ids)}) and no outlier/permutation parts: quantize with a ggml recipe "
            "(e.g. q4_k, q8_0), or export with `--to hf` for other tools"
            + (
                "; the ragged k-types (q*_kr) come from k-quant recipes on rows that are not a multiple of 256: "
                "convert with --gguf-compatible to get llama.cpp's fallback types there"
                if any("_kr" in o for o in offenders)
                else ""
            )
        )
    if unknown:
        raise UnsupportedError(f"{len(unknown)} tensor(s) without a GGUF {arch} name: {', '.join(unknown)}")
    if bad_shape:
        raise FormatError(f"{len(bad_shape)} tensor(s) do not match model.config: {', '.join(bad_shape)}")
    missing = [n for n in _required(hp, tied, model_type == "qwen2") if n not in f]
    if missing:
        raise FormatError(f"{len(missing)} tensor(s) missing from the LBF: {', '.join(missing)}")
    return items


def _tensor_bytes(f: LBFFile, it: _Item) -> npt.NDArray[np.uint8]:
    """The GGUF bytes of one tensor, shape `it.byte_shape` (a view of the mapped LBF when no
    conversion or permutation is needed)."""
    data = f.parts(it.name)["data"].reshape(-1)
    if len(it.shape) == 1:
        data = _FLOAT_1D[it.qtype](data).view(np.uint8)
    rows = data.reshape(it.byte_shape)
    return permute_qk(rows, it.n_head) if it.n_head else rows


def _file_type(items: list[_Item]) -> int:
    """general.file_type: the type of most 2-D weights, counted in values."""
    counts: dict[str, int] = {}
    for it in items:
        if len(it.shape) == 2:
            counts[it.qtype] = counts.get(it.qtype, 0) + it.shape[0] * it.shape[1]
    return _FILE_TYPES.get(max(counts, key=counts.__getitem__), _FILE_TYPE_GUESSED) if counts else 0


# ---------------------------------------------------------------------------------------------
# Tokenizer


@dataclass(frozen=True)
class _Vocab:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    special_ids: dict[str, int]  # bos/eos/unk/pad → id
    add_bos: bool
    add_eos: bool
    chat_template: str | list[dict[str, str]] | None


def _pre_signature(pt: Any) -> list[tuple[Any, ...]]:
    """The fields of an HF pre-tokenizer that decide how text is split, as a flat list."""
    if not isinstance(pt, dict):
        return [("?", repr(pt))]
    kind = pt.get("type")
    if kind == "Sequence":
        return [s for p in pt.get("pretokenizers", []) for s in _pre_signature(p)]
    if kind == "ByteLevel":
        return [(kind, bool(pt.get("add_prefix_space")), pt.get("use_regex", True))]
    if kind == "Split":
        return [(kind, json.dumps(pt.get("pattern"), sort_keys=True), pt.get("behavior"), pt.get("invert"))]
    if kind == "Digits":
        return [(kind, pt.get("individual_digits"))]
    return [("?", json.dumps(pt, sort_keys=True))]


def _pre_name(pt: Any) -> str:
    sig = _pre_signature(pt)
    for name in _PRE_NAMES:
        if _pre_signature(_pre_tokenizer(name)) == sig:
            return name
    raise UnsupportedError(
        f"the tokenizer's pre-tokenizer ({json.dumps(pt)[:200]}) is not one llama.cpp knows by name "
        f"(lowbit maps {', '.join(_PRE_NAMES)}); llama.cpp would split text differently"
    )


def _token_content(v: Any) -> str | None:
    """tokenizer_config's `bos_token` etc.: a string or an AddedToken object."""
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


def _adds(post: Any, token: str | None) -> tuple[bool, bool]:
    """Whether an HF post-processor puts `token` first / last of a single sequence."""
    if not isinstance(post, dict) or token is None:
        return False, False
    if post.get("type") == "Sequence":
        found = [_adds(p, token) for p in post.get("processors", [])]
        return any(a for a, _ in found), any(b for _, b in found)
    single = post.get("single") if post.get("type") == "TemplateProcessing" else None
    if not isinstance(single, list) or not single:
        return False, False

    def is_tok(x: Any) -> bool:
        return isinstance(x, dict) and x.get("SpecialToken", {}).get("id") == token

    return is_tok(single[0]), is_tok(single[-1])


def _vocab(tok: dict[str, Any], tok_cfg: dict[str, Any], cfg: dict[str, Any], n_vocab: int) -> _Vocab:
    model = tok.get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE" or model.get("byte_fallback"):
        kind = model.get("type") if isinstance(model, dict) else None
        raise UnsupportedError(
            f"tokenizer model {kind!r}{' with byte_fallback' if kind == 'BPE' else ''}: only byte-level BPE "
            "tokenizers (GGUF 'gpt2') can be exported for now"
        )
    norm = tok.get("normalizer")
    if norm is not None and not (isinstance(norm, dict) and norm.get("type") == "NFC"):
        raise UnsupportedError(f"tokenizer normalizer {json.dumps(norm)[:200]}: llama.cpp's BPE has none")
    pre = _pre_name(tok.get("pre_tokenizer"))
    vocab, added_list = model.get("vocab"), tok.get("added_tokens") or []
    if not isinstance(vocab, dict) or not isinstance(added_list, list):
        raise FormatError("tokenizer.json: model.vocab is not an object or added_tokens is not a list")
    by_id: dict[int, str] = {}
    for text, i in vocab.items():
        if not isinstance(i, int) or isinstance(i, bool):
            raise FormatError(f"tokenizer.json vocab entry {text!r} has id {i!r}, not an integer")
        by_id.setdefault(i, text)
    added: dict[int, dict[str, Any]] = {}
    for a in added_list:
        if not (isinstance(a, dict) and isinstance(a.get("id"), int) and isinstance(a.get("content"), str)):
            raise FormatError(f"tokenizer.json added token {a!r} has no integer id and string content")
        added[a["id"]] = a
        by_id[a["id"]] = a["content"]
    if not by_id or min(by_id) < 0 or max(by_id) >= n_vocab:
        raise FormatError(f"tokenizer ids span {min(by_id, default=0)}..{max(by_id, default=-1)}, "
                          f"outside the model's vocab_size {n_vocab}")  # fmt: skip
    # As llama.cpp's converter: ids the tokenizer does not use become unused padding tokens.
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(n_vocab)]
    types = [_TOKEN_NORMAL if i in by_id else _TOKEN_UNUSED for i in range(n_vocab)]
    for i, a in added.items():
        types[i] = _TOKEN_CONTROL if a.get("special") else _TOKEN_USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    ids = {text: i for i, text in sorted(by_id.items(), reverse=True)}  # the lowest id of a repeated string

    special: dict[str, int] = {}
    for key in ("bos", "eos", "unk", "pad"):
        content = _token_content(tok_cfg.get(f"{key}_token"))
        v = ids.get(content) if content is not None else cfg.get(f"{key}_token_id")
        if isinstance(v, list):  # config.json eos_token_id may list several; llama.cpp takes the first
            v = v[0] if v else None
        if content is not None and v is None:
            raise FormatError(f"tokenizer.config {key}_token {content!r} is not in the vocabulary")
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n_vocab:
            special[key] = v
    bos, eos = (tokens[special[k]] if k in special else None for k in ("bos", "eos"))
    add_bos, add_eos = _adds(tok.get("post_processor"), bos)[0], _adds(tok.get("post_processor"), eos)[1]
    add_bos = tok_cfg.get("add_bos_token", add_bos) is True
    add_eos = tok_cfg.get("add_eos_token", add_eos) is True
    template = tok_cfg.get("chat_template")
    return _Vocab(tokens, types, merges, pre, special, add_bos, add_eos,
                  template if isinstance(template, str | list) else None)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Writing


def _add_metadata(w: Any, name: str, hp: _HParams, cfg: dict[str, Any], items: list[_Item],
                  vocab: _Vocab) -> None:  # fmt: skip
    from gguf import RopeScalingType

    w.add_name(name)
    w.add_type("model")
    w.add_file_type(_file_type(items))
    w.add_quantization_version(_GGML_QUANT_VERSION)
    w.add_block_count(hp.n_layer)
    w.add_context_length(hp.n_ctx)
    w.add_embedding_length(hp.n_embd)
    w.add_feed_forward_length(hp.n_ff)
    w.add_head_count(hp.n_head)
    w.add_head_count_kv(hp.n_head_kv)
    w.add_layer_norm_rms_eps(hp.rms_eps)
    w.add_rope_freq_base(hp.rope_theta)
    w.add_rope_dimension_count(hp.head_dim)
    if "head_dim" in cfg:
        w.add_key_length(hp.head_dim)
        w.add_value_length(hp.head_dim)
    w.add_vocab_size(hp.n_vocab)
    scaling = _rope_scaling(cfg)
    if scaling is not None:
        kind, factor, orig = scaling
        w.add_rope_scaling_type(RopeScalingType(kind))
        w.add_rope_scaling_factor(factor)
        if orig is not None:
            w.add_rope_scaling_orig_ctx_len(orig)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    w.add_token_merges(vocab.merges)
    for key, add in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id), ("unk", w.add_unk_token_id),
                     ("pad", w.add_pad_token_id)):  # fmt: skip
        if key in vocab.special_ids:
            add(vocab.special_ids[key])
    w.add_add_bos_token(vocab.add_bos)
    w.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        w.add_chat_template(vocab.chat_template)


def _check_destination(src: Path, dst: Path, overwrite: bool) -> None:
    if dst.is_dir():
        raise ParameterError(f"{dst} is a directory, not a GGUF file path")
    if not dst.exists():
        return
    if src.exists() and os.path.samefile(src, dst):
        raise ParameterError(f"{dst} is the LBF file being exported: choose another destination")
    if not overwrite:
        raise DestinationExistsError(f"{dst} exists (pass overwrite=True to replace it)")


def export_gguf(
    lbf_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    progress: bool = True,
    overwrite: bool = False,
) -> ExportReport:
    """Write the model in the LBF file `lbf_path` as a GGUF file `out_path` for llama.cpp.

    The LBF must follow the converter's conventions (HF tensor names and layout, `model.config`,
    `tokenizer.json`, `tokenizer.config` metadata) for a llama, mistral or qwen2 model. Quantized
    tensors keep their bytes (q/k rows of llama/mistral permuted to llama.cpp's rotary layout);
    f32/f16/bf16 weights stay F32/F16/BF16; 1-D tensors (norms, biases) are written as F32. A
    tied lm_head is left out (llama.cpp reuses token_embd). One tensor is held in memory at a
    time; `progress` shows a tqdm bar (bytes).

    Raises, before anything is written:
        UnsupportedError: an architecture other than llama/mistral/qwen2, a tensor of a non-ggml
            qtype (group-affine int2..int8, or with outlier/permutation parts; the message lists
            every one), an unknown tensor name, a tokenizer that is not byte-level BPE or whose
            pre-tokenizer llama.cpp does not know, an unsupported rope scaling.
        FormatError: an LBF that is not a converter output (missing or invalid config or
            tokenizer metadata, missing tensors, shapes that contradict the config).
        ParameterError: `out_path` is `lbf_path` itself, or a directory.
        DestinationExistsError: `out_path` exists and `overwrite` is false.
        OSError: the destination folder cannot be written.
    On any error or interrupt the temporary file is removed and `out_path` is left as it was.
    """
    from gguf import GGMLQuantizationType, GGUFWriter

    src, dst = Path(lbf_path), Path(out_path)
    _check_destination(src, dst, overwrite)
    with load(src) as f:
        cfg = json_metadata(f, "model.config")
        if not isinstance(cfg, dict):
            raise FormatError(f"{src}: no model.config object in the metadata (not made by `lowbit convert`?)")
        model_type, arch = _architecture(cfg)
        hp = _hparams(cfg)
        items = _plan(f, model_type, arch, hp, cfg)
        tok = json_metadata(f, "tokenizer.json")
        if not isinstance(tok, dict):
            raise FormatError(f"{src}: no tokenizer.json object in the metadata; llama.cpp needs the tokenizer")
        tok_cfg = json_metadata(f, "tokenizer.config") or {}
        vocab = _vocab(tok, tok_cfg if isinstance(tok_cfg, dict) else {}, cfg, hp.n_vocab)
        name_or_path = cfg.get("_name_or_path")
        name = PurePosixPath(name_or_path).name if isinstance(name_or_path, str) else ""
        total = sum(it.nbytes for it in items)

        fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        w: Any = None
        try:
            w = GGUFWriter(tmp, arch)
            _add_metadata(w, name or src.stem, hp, cfg, items, vocab)
            for it in items:
                raw_dtype = GGMLQuantizationType(it.ggml_type)
                w.add_tensor_info(it.gguf_name, it.byte_shape, np.dtype(np.uint8), it.nbytes, raw_dtype=raw_dtype)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            with progress_bar(total, progress, f"{src.name} → GGUF") as bar:
                for it in items:
                    w.write_tensor_data(_tensor_bytes(f, it))
                    if bar is not None:
                        bar.update(it.nbytes)
            w.flush()
            os.fsync(w.fout[0].fileno())
            w.close()
            publish_file(tmp, dst, overwrite)
        except BaseException:
            if w is not None:
                w.close()
            tmp.unlink(missing_ok=True)
            raise
    return ExportReport(dst, arch, len(items), total, dst.stat().st_size)
