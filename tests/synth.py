"""Tiny synthetic Hugging Face checkpoints for the convert/export tests: llama, mistral and qwen2
(q/k/v biases) configs, tied or untied embeddings, GQA, F32/F16/BF16 weights in one or several
safetensors shards. The safetensors files are written here by hand (struct + JSON), independently
of lowbit's writer and of the `safetensors` package."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

TEXT = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife. However little known the feelings or views of such a man may be."
)


def bf16_round(x: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]:
    """float32 → bfloat16 bits, rounding to nearest even (finite inputs)."""
    b = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def write_safetensors(path: Path, tensors: dict[str, tuple[str, npt.NDArray[Any]]]) -> None:
    """name → (dtype, array holding the raw values: float32/float16 or uint16 bf16 bits)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs, off = [], 0
    for name, (dtype, a) in tensors.items():
        raw = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# The split patterns of the Llama 3 and Qwen2 tokenizer.json files (their published pre-tokenizers).
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def train_bpe(corpus: list[str], pre: str = "gpt2", user_token: str | None = None) -> Any:
    """A ~300-token byte-level BPE (`tokenizers.Tokenizer`) trained on `corpus` with SPECIALS,
    pre-tokenized as the llama.cpp pre-tokenizer `pre` (gpt2, smollm, llama-bpe, qwen2) does;
    `user_token` is added as a non-special token."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    split = {"llama-bpe": LLAMA3_REGEX, "qwen2": QWEN2_REGEX}
    if pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in split:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(split[pre]), "isolated"), pre_tokenizers.ByteLevel(False, use_regex=False)]
        )
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus * 20, trainer)
    if user_token is not None:
        tok.add_tokens([AddedToken(user_token, special=False)])
    return tok


def tokenizer_json() -> str:
    return str(train_bpe([TEXT]).to_str())


def llama_tensors(
    *, n_layers: int, hidden: int, ffn: int, vocab: int, heads: int, kv_heads: int, tied: bool, bias: bool, seed: int
) -> dict[str, npt.NDArray[np.float32]]:
    r = np.random.default_rng(seed)
    hd = hidden // heads

    def w(*shape: int, scale: float = 0.02) -> npt.NDArray[np.float32]:
        return (r.standard_normal(shape) * scale).astype(np.float32)

    out = {"model.embed_tokens.weight": w(vocab, hidden)}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = 1 + w(hidden, scale=0.1)
        out[p + "self_attn.q_proj.weight"] = w(heads * hd, hidden)
        out[p + "self_attn.k_proj.weight"] = w(kv_heads * hd, hidden)
        out[p + "self_attn.v_proj.weight"] = w(kv_heads * hd, hidden)
        if bias:
            out[p + "self_attn.q_proj.bias"] = w(heads * hd, scale=0.1)
            out[p + "self_attn.k_proj.bias"] = w(kv_heads * hd, scale=0.1)
            out[p + "self_attn.v_proj.bias"] = w(kv_heads * hd, scale=0.1)
        out[p + "self_attn.o_proj.weight"] = w(hidden, heads * hd)
        out[p + "post_attention_layernorm.weight"] = 1 + w(hidden, scale=0.1)
        out[p + "mlp.gate_proj.weight"] = w(ffn, hidden)
        out[p + "mlp.up_proj.weight"] = w(ffn, hidden)
        out[p + "mlp.down_proj.weight"] = w(hidden, ffn)
    out["model.norm.weight"] = 1 + w(hidden, scale=0.1)
    if not tied:
        out["lm_head.weight"] = w(vocab, hidden)
    return out


def make_checkpoint(
    d: Path,
    *,
    arch: str = "llama",
    n_layers: int = 2,
    hidden: int = 256,
    ffn: int = 512,
    vocab: int = 320,
    heads: int = 4,
    kv_heads: int = 2,
    tied: bool = False,
    dtype: str = "F32",
    shards: int = 1,
    seed: int = 0,
) -> dict[str, npt.NDArray[np.float32]]:
    """Write a checkpoint into `d` (created); return the float32 values its files hold (after
    rounding to `dtype`), by HF name."""
    d.mkdir(parents=True, exist_ok=True)
    bias = arch == "qwen2"
    values = llama_tensors(
        n_layers=n_layers, hidden=hidden, ffn=ffn, vocab=vocab, heads=heads, kv_heads=kv_heads, tied=tied,
        bias=bias, seed=seed,
    )  # fmt: skip
    stored: dict[str, tuple[str, npt.NDArray[Any]]] = {}
    for name, v in values.items():
        if dtype == "F32":
            stored[name] = ("F32", v)
        elif dtype == "F16":
            stored[name] = ("F16", v.astype(np.float16))
            values[name] = v.astype(np.float16).astype(np.float32)
        elif dtype == "BF16":
            bits = bf16_round(v)
            stored[name] = ("BF16", bits)
            values[name] = (bits.astype(np.uint32) << 16).view(np.float32)
        else:
            raise ValueError(dtype)
    names = list(stored)
    per = -(-len(names) // shards)
    if shards == 1:
        write_safetensors(d / "model.safetensors", stored)
    else:
        weight_map = {}
        for k in range(shards):
            fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: stored[n] for n in names[k * per : (k + 1) * per]}
            write_safetensors(d / fname, part)
            weight_map.update(dict.fromkeys(part, fname))
        index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
        (d / "model.safetensors.index.json").write_text(json.dumps(index))
    model_cls = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
    config = {
        "architectures": [model_cls.get(arch, "CustomForCausalLM")],
        "model_type": arch,
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": n_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        "hidden_act": "silu",
        "torch_dtype": {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype],
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    (d / "config.json").write_text(json.dumps(config, indent=2))
    (d / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    (d / "tokenizer.json").write_text(tokenizer_json())
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>", "chat_template": "{{x}}"}))
    return values
