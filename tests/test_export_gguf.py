"""LBF → GGUF export (`lowbit.conversion.export_gguf.export_gguf`), end to end.

Tiny LBF files are built here with `lowbit.save` the way the converter lays them out (HF names and
layout, `model.config`, `tokenizer.json`, `tokenizer.config`), exported, and read back with gguf's
own `GGUFReader`. Every tensor's values come from gguf's numpy dequantizers and must equal
lowbit's dequantization of the LBF tensor bit for bit, after undoing llama.cpp's q/k row
permutation with a reference inverse written here from its row mapping. The tokenizer is a tiny
byte-level BPE trained here with the `tokenizers` library; read back through `gguf_to_hf`, it must
encode exactly as the original.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from gguf import GGUFReader, GGUFWriter
from gguf.quants import dequantize as gguf_dequantize

import lowbit
import synth
from conftest import DEMO_GGUF, FLOAT_TYPES, GGML_TYPES
from lowbit.conversion import gguf_to_hf
from lowbit.conversion.export_gguf import ExportReport, export_gguf

HIDDEN, N_HEAD, N_KV, FFN, LAYERS = 256, 4, 2, 512, 2  # 256 columns: whole k-quant blocks
HEAD_DIM = HIDDEN // N_HEAD
N_VOCAB = 320  # more rows than the tokenizer has tokens: the rest become [PADi] tokens
SPECIALS = synth.SPECIALS
USER_TOKEN = "lowbit"  # a non-special added token (GGUF USER_DEFINED)
CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
CORPUS = [
    "I am a cat. As yet I have no name. I have no idea where I was born.",
    "All I remember is that I was miaowing in a dim and damp place when, for the first time, I saw a human being.",
    "In 1905 the teacher paid 12 yen for 3 books; the student's father didn't mind.",
    "Hello, world! The quick brown fox jumps over the lazy dog.",
]
SAMPLES = [
    "I am a cat. As yet I have no name.",
    "The student paid 1234 yen, didn't he?  Yes -- twice!",
    "Hello,\n\tworld\n",
    "<|im_start|>user\nWhere was I born?<|im_end|> lowbit",
    "naïve café ☃",
]

# HF → GGUF names, written out independently of the exporter's table.
GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
LAYER_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
GGML_ID = {t.name: t.gguf_type for t in lowbit.qtypes() if t.gguf_type is not None}
TYPES_2D = GGML_TYPES + FLOAT_TYPES  # cycled over the 2-D tensors: every ggml type in one file


def gguf_name(hf: str) -> str:
    if hf in GLOBAL_NAMES:
        return GLOBAL_NAMES[hf]
    _, _, layer, rest = hf.split(".", 3)
    module, suffix = rest.rsplit(".", 1)
    return f"blk.{layer}.{LAYER_NAMES[module]}.{suffix}"


def reference_unpermute(w: npt.NDArray[Any], n_head: int) -> npt.NDArray[Any]:
    """Undo convert_hf_to_gguf.py's LlamaModel.permute (rows as (head, 2, half) → (head, half, 2)),
    derived from the row mapping it applies to row indices."""
    rows = w.shape[0]
    gguf_rows = np.arange(rows).reshape(n_head, 2, rows // n_head // 2).swapaxes(1, 2).reshape(rows)
    return w[np.argsort(gguf_rows)]


# --------------------------------------------------------------------------------------------
# Building tiny converter-style LBF files


def train_bpe(pre: str = "smollm") -> Any:
    """A ~300-token byte-level BPE with special tokens and one non-special added token,
    pre-tokenized as the llama.cpp pre-tokenizer `pre` does."""
    return synth.train_bpe(CORPUS, pre, USER_TOKEN)


def make_lbf(
    path: Path,
    *,
    model_type: str = "llama",
    tied: bool = True,
    types: list[str] | None = None,
    pre: str = "smollm",
    tok_cfg: dict[str, Any] | None = None,
    cfg_extra: dict[str, Any] | None = None,
    tensors_extra: dict[str, lowbit.QTensor | npt.NDArray[Any]] | None = None,
    drop: tuple[str, ...] = (),
    seed: int = 0,
) -> Any:
    """Write a tiny llama/mistral/qwen2 LBF whose 2-D tensors cycle through `types` (default: every
    ggml type); qwen2 gets q/k/v biases. Returns the `tokenizers.Tokenizer`."""
    rng = np.random.default_rng(seed)
    bpe = train_bpe(pre)
    types = types or TYPES_2D
    cfg = {
        "architectures": [
            {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}.get(model_type, "Qwen2ForCausalLM")
        ],
        "model_type": model_type,
        "_name_or_path": "acme/tiny-model",
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": N_HEAD,
        "num_key_value_heads": N_KV,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 12345.0,
        "vocab_size": N_VOCAB,
        "tie_word_embeddings": tied,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
        **(cfg_extra or {}),
    }
    tc = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
          "add_bos_token": False, "chat_template": CHAT_TEMPLATE} if tok_cfg is None else tok_cfg  # fmt: skip

    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (N_VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (HIDDEN,),
            p + "self_attn.q_proj.weight": (N_HEAD * HEAD_DIM, HIDDEN),
            p + "self_attn.k_proj.weight": (N_KV * HEAD_DIM, HIDDEN),
            p + "self_attn.v_proj.weight": (N_KV * HEAD_DIM, HIDDEN),
            p + "self_attn.o_proj.weight": (HIDDEN, N_HEAD * HEAD_DIM),
            p + "post_attention_layernorm.weight": (HIDDEN,),
            p + "mlp.gate_proj.weight": (FFN, HIDDEN),
            p + "mlp.up_proj.weight": (FFN, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, FFN),
        }
        if model_type == "qwen2":
            shapes |= {
                p + f"self_attn.{x}_proj.bias": (n * HEAD_DIM,) for x, n in (("q", N_HEAD), ("k", N_KV), ("v", N_KV))
            }
    shapes["model.norm.weight"] = (HIDDEN,)
    if not tied:
        shapes["lm_head.weight"] = (N_VOCAB, HIDDEN)

    tensors: dict[str, lowbit.QTensor | npt.NDArray[Any]] = {}
    k = 0
    for name, shape in shapes.items():
        if name in drop:
            continue
        if len(shape) == 1:
            # f16 for some 1-D tensors: the exporter widens them to F32.
            x = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
            tensors[name] = x.astype(np.float16) if name.endswith("post_attention_layernorm.weight") else x
            continue
        x = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        qtype = types[k % len(types)]
        k += 1
        if qtype in ("f32", "f16"):
            tensors[name] = x.astype(np.float32 if qtype == "f32" else np.float16)
        else:
            tensors[name] = lowbit.quantize(x, qtype)
    tensors |= tensors_extra or {}
    meta = {"model.config": json.dumps(cfg), "tokenizer.json": bpe.to_str(), "tokenizer.config": json.dumps(tc)}
    lowbit.save(path, tensors, meta)
    return bpe


def lbf_values(x: lowbit.QTensor | npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    return lowbit.dequantize(x) if isinstance(x, lowbit.QTensor) else np.asarray(x, dtype=np.float32)


def field(reader: Any, key: str) -> Any:
    return reader.fields[key].contents()


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------------------------
# Values, names, shapes, metadata


@pytest.mark.parametrize(
    ("model_type", "tied"),
    [("llama", True), ("llama", False), ("mistral", False), ("qwen2", True)],
)
def test_export_matches_lbf(tmp_path: Path, model_type: str, tied: bool) -> None:
    lbf, out = tmp_path / "m.lbf", tmp_path / "m.gguf"
    make_lbf(lbf, model_type=model_type, tied=tied)
    report = export_gguf(lbf, out, progress=False)
    permuted = model_type != "qwen2"

    r = GGUFReader(str(out))
    got = {t.name: t for t in r.tensors}
    with lowbit.load(lbf) as f:
        assert sorted(got) == sorted(gguf_name(n) for n in f)
        assert ("output.weight" in got) == (not tied)
        for name in f:
            t, src = got[gguf_name(name)], f[name]
            info = f.info(name)
            assert tuple(int(d) for d in reversed(t.shape.tolist())) == info.shape, name
            want_type = 0 if len(info.shape) == 1 else GGML_ID[info.qtype]
            assert int(t.tensor_type) == want_type, (name, t.tensor_type.name)
            values = gguf_dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32).reshape(info.shape)
            heads = {"q_proj": N_HEAD, "k_proj": N_KV}.get(name.split(".")[-2], 0) if permuted else 0
            if heads:
                values = reference_unpermute(values, heads)
            expected = lbf_values(src)
            assert np.array_equal(values.view(np.uint32), expected.view(np.uint32)), name
            if isinstance(src, lowbit.QTensor):
                # Block bytes are copied, only whole rows move.
                raw = np.asarray(t.data, dtype=np.uint8).reshape(src.data.shape)
                assert np.array_equal(reference_unpermute(raw, heads) if heads else raw, src.data), name

    arch = "qwen2" if model_type == "qwen2" else "llama"
    assert field(r, "general.architecture") == arch
    assert field(r, "general.name") == "tiny-model"
    assert field(r, f"{arch}.block_count") == LAYERS
    assert field(r, f"{arch}.context_length") == 256
    assert field(r, f"{arch}.embedding_length") == HIDDEN
    assert field(r, f"{arch}.feed_forward_length") == FFN
    assert field(r, f"{arch}.attention.head_count") == N_HEAD
    assert field(r, f"{arch}.attention.head_count_kv") == N_KV
    assert field(r, f"{arch}.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5, rel=1e-6)
    assert field(r, f"{arch}.rope.freq_base") == 12345.0
    assert field(r, f"{arch}.rope.dimension_count") == HEAD_DIM
    assert field(r, f"{arch}.vocab_size") == N_VOCAB
    assert f"{arch}.rope.scaling.type" not in r.fields
    assert field(r, "general.quantization_version") == 2

    assert report == ExportReport(out, arch, len(r.tensors), sum(int(t.n_bytes) for t in r.tensors), out.stat().st_size)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(("qtype", "file_type"), [("q4_k", 15), ("q8_0", 7), ("f16", 1), ("bf16", 32), ("q4_1", 3)])
def test_file_type_follows_the_main_qtype(tmp_path: Path, qtype: str, file_type: int) -> None:
    make_lbf(tmp_path / "m.lbf", types=[qtype])
    export_gguf(tmp_path / "m.lbf", tmp_path / "m.gguf", progress=False)
    r = GGUFReader(str(tmp_path / "m.gguf"))
    assert field(r, "general.file_type") == file_type
    assert {t.tensor_type.name for t in r.tensors if len(t.shape) == 2} == {qtype.upper()}


def test_rope_scaling_and_head_dim(tmp_path: Path) -> None:
    extra = {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
             "head_dim": HEAD_DIM}  # fmt: skip
    make_lbf(tmp_path / "m.lbf", model_type="qwen2", cfg_extra=extra, types=["q8_0"])
    export_gguf(tmp_path / "m.lbf", tmp_path / "m.gguf", progress=False)
    r = GGUFReader(str(tmp_path / "m.gguf"))
    assert field(r, "qwen2.rope.scaling.type") == "yarn"
    assert field(r, "qwen2.rope.scaling.factor") == 4.0
    assert field(r, "qwen2.rope.scaling.original_context_length") == 64
    assert field(r, "qwen2.attention.key_length") == HEAD_DIM
    assert field(r, "qwen2.attention.value_length") == HEAD_DIM

    make_lbf(tmp_path / "l.lbf", cfg_extra={"rope_scaling": {"type": "linear", "factor": 2.0}}, types=["q8_0"])
    export_gguf(tmp_path / "l.lbf", tmp_path / "l.gguf", progress=False)
    r = GGUFReader(str(tmp_path / "l.gguf"))
    assert (field(r, "llama.rope.scaling.type"), field(r, "llama.rope.scaling.factor")) == ("linear", 2.0)


# --------------------------------------------------------------------------------------------
# Tokenizer


def test_tokenizer_metadata(tmp_path: Path) -> None:
    bpe = make_lbf(tmp_path / "m.lbf", types=["q8_0"])
    export_gguf(tmp_path / "m.lbf", tmp_path / "m.gguf", progress=False)
    r = GGUFReader(str(tmp_path / "m.gguf"))
    vocab = bpe.get_vocab(with_added_tokens=True)
    n = len(vocab)
    by_id = sorted(vocab, key=vocab.__getitem__)
    assert [vocab[t] for t in by_id] == list(range(n))
    assert field(r, "tokenizer.ggml.model") == "gpt2"
    assert field(r, "tokenizer.ggml.pre") == "smollm"
    assert field(r, "tokenizer.ggml.tokens") == by_id + [f"[PAD{i}]" for i in range(n, N_VOCAB)]
    types = field(r, "tokenizer.ggml.token_type")
    want = [3 if t in SPECIALS else 4 if t == USER_TOKEN else 1 for t in by_id] + [5] * (N_VOCAB - n)
    assert types == want
    merges = json.loads(bpe.to_str())["model"]["merges"]
    assert field(r, "tokenizer.ggml.merges") == [m if isinstance(m, str) else " ".join(m) for m in merges]
    assert field(r, "tokenizer.ggml.bos_token_id") == vocab["<|im_start|>"]
    assert field(r, "tokenizer.ggml.eos_token_id") == vocab["<|im_end|>"]
    assert field(r, "tokenizer.ggml.padding_token_id") == vocab["<|endoftext|>"]
    assert "tokenizer.ggml.unknown_token_id" not in r.fields
    assert field(r, "tokenizer.ggml.add_bos_token") is False
    assert field(r, "tokenizer.chat_template") == CHAT_TEMPLATE


def test_add_bos_from_post_processor_and_ids_from_config(tmp_path: Path) -> None:
    """No tokenizer_config: special ids come from config.json, add_bos from a TemplateProcessing
    post-processor that puts the bos token first."""
    from tokenizers import Tokenizer, processors

    lbf = tmp_path / "m.lbf"
    bpe = make_lbf(lbf, types=["q8_0"], tok_cfg={}, cfg_extra={"bos_token_id": 1, "eos_token_id": [2, 0]})
    bos = bpe.id_to_token(1)
    bpe.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, 1)])
    with lowbit.load(lbf) as f:
        meta = f.metadata
        tensors = {k: f[k] for k in f}
        lowbit.save(tmp_path / "m2.lbf", tensors, {**meta, "tokenizer.json": bpe.to_str()})
    export_gguf(tmp_path / "m2.lbf", tmp_path / "m.gguf", progress=False)
    r = GGUFReader(str(tmp_path / "m.gguf"))
    assert field(r, "tokenizer.ggml.bos_token_id") == 1
    assert field(r, "tokenizer.ggml.eos_token_id") == 2
    assert field(r, "tokenizer.ggml.add_bos_token") is True
    assert field(r, "tokenizer.ggml.add_eos_token") is False
    assert "tokenizer.chat_template" not in r.fields
    # The rebuilt tokenizer adds the bos token as the original does.
    gguf_to_hf(tmp_path / "m.gguf", tmp_path / "hf", progress=False)
    back = Tokenizer.from_file(str(tmp_path / "hf" / "tokenizer.json"))
    ids = bpe.encode("I am a cat").ids
    assert ids[0] == 1
    assert back.encode("I am a cat").ids == ids


@pytest.mark.parametrize("pre", ["gpt2", "smollm", "llama-bpe", "qwen2"])
def test_tokenizer_round_trip_through_gguf_to_hf(tmp_path: Path, pre: str) -> None:
    """export_gguf then gguf_to_hf (which rebuilds tokenizer.json from the GGUF metadata): the
    tokenizer encodes as the original, and the weights come back as the LBF's values."""
    from tokenizers import Tokenizer

    lbf = tmp_path / "m.lbf"
    bpe = make_lbf(lbf, pre=pre, tied=False, types=["q4_0", "q6_k", "f16"])
    export_gguf(lbf, tmp_path / "m.gguf", progress=False)
    assert field(GGUFReader(str(tmp_path / "m.gguf")), "tokenizer.ggml.pre") == pre
    hf = gguf_to_hf(tmp_path / "m.gguf", tmp_path / "hf", progress=False)
    back = Tokenizer.from_file(str(hf / "tokenizer.json"))
    for s in SAMPLES:
        assert back.encode(s).ids == bpe.encode(s).ids, s
        assert back.decode(back.encode(s).ids) == bpe.decode(bpe.encode(s).ids)

    import safetensors.numpy

    got: dict[str, npt.NDArray[np.float32]] = {}
    for shard in hf.glob("*.safetensors"):
        got |= safetensors.numpy.load_file(str(shard))
    with lowbit.load(lbf) as f:
        assert sorted(got) == sorted(f)
        for name in f:
            assert np.array_equal(got[name], lbf_values(f[name])), name


# --------------------------------------------------------------------------------------------
# Refusals: nothing is written


def test_non_ggml_types_refused_listing_every_offender(tmp_path: Path) -> None:
    lbf, out = tmp_path / "m.lbf", tmp_path / "m.gguf"
    make_lbf(lbf, types=["q8_0", "int4-g128", "q4_k", "int3-g64", "int3-g16-dq"])
    with lowbit.load(lbf) as f:
        offenders = {n: f.info(n).qtype for n in f if f.info(n).qtype.startswith("int")}
    assert len(offenders) >= 6
    with pytest.raises(lowbit.UnsupportedError) as e:
        export_gguf(lbf, out, progress=False)
    msg = str(e.value)
    for name, qtype in offenders.items():
        assert f"{name} ({qtype})" in msg
    assert "--to hf" in msg
    assert not out.exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"model_type": "gemma"}, lowbit.UnsupportedError, "gemma"),
        ({"cfg_extra": {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}}, lowbit.UnsupportedError, "llama3"),
        ({"cfg_extra": {"hidden_act": "gelu"}}, lowbit.UnsupportedError, "gelu"),
        ({"drop": ("model.layers.1.mlp.up_proj.weight",)}, lowbit.FormatError, "model.layers.1.mlp.up_proj.weight"),
        ({"model_type": "qwen2", "drop": ("model.layers.0.self_attn.k_proj.bias",)}, lowbit.FormatError, "k_proj.bias"),
        ({"cfg_extra": {"intermediate_size": 256}}, lowbit.FormatError, r"\(512, 256\)"),
        ({"cfg_extra": {"num_attention_heads": 0}}, lowbit.FormatError, "num_attention_heads"),
        ({"tensors_extra": {"model.rotary_emb.inv_freq": np.ones(8, np.float32)}}, lowbit.UnsupportedError, "inv_freq"),
        ({"tied": True, "cfg_extra": {"tie_word_embeddings": False}}, lowbit.FormatError, "tie_word_embeddings"),
        ({"tok_cfg": {"bos_token": "<s>"}}, lowbit.FormatError, "<s>"),
    ],
)
def test_bad_models_refused(tmp_path: Path, kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    lbf, out = tmp_path / "m.lbf", tmp_path / "m.gguf"
    make_lbf(lbf, types=["q8_0"], **kwargs)
    with pytest.raises(error, match=match):
        export_gguf(lbf, out, progress=False)
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_unsupported_tokenizers_refused(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    lbf = tmp_path / "m.lbf"
    make_lbf(lbf, types=["q8_0"])
    with lowbit.load(lbf) as f:
        tensors, meta = {k: f[k] for k in f}, f.metadata
    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    whitespace = train_bpe()
    whitespace.pre_tokenizer = pre_tokenizers.Whitespace()
    for i, (tok, match) in enumerate([(wordpiece, "WordPiece"), (whitespace, "Whitespace")]):
        bad = tmp_path / f"bad{i}.lbf"
        lowbit.save(bad, tensors, {**meta, "tokenizer.json": tok.to_str()})
        with pytest.raises(lowbit.UnsupportedError, match=match):
            export_gguf(bad, tmp_path / "m.gguf", progress=False)
    no_tok = tmp_path / "no_tok.lbf"
    lowbit.save(no_tok, tensors, {k: v for k, v in meta.items() if k != "tokenizer.json"})
    with pytest.raises(lowbit.FormatError, match="tokenizer"):
        export_gguf(no_tok, tmp_path / "m.gguf", progress=False)
    assert not (tmp_path / "m.gguf").exists()
    assert leftovers(tmp_path) == []


def test_destination_checks(tmp_path: Path) -> None:
    lbf, out = tmp_path / "m.lbf", tmp_path / "m.gguf"
    make_lbf(lbf, types=["q8_0"])
    before = lbf.read_bytes()
    for dst in (lbf, tmp_path / "link.lbf"):
        if dst != lbf:
            dst.symlink_to(lbf)
        with pytest.raises(lowbit.ParameterError, match="being exported"):
            export_gguf(lbf, dst, progress=False, overwrite=True)
    assert lbf.read_bytes() == before
    with pytest.raises(lowbit.ParameterError, match="directory"):
        export_gguf(lbf, tmp_path, progress=False)

    out.write_bytes(b"keep me")
    with pytest.raises(lowbit.DestinationExistsError):
        export_gguf(lbf, out, progress=False)
    assert out.read_bytes() == b"keep me"
    report = export_gguf(lbf, out, progress=False, overwrite=True)
    assert out.read_bytes()[:4] == b"GGUF"
    assert report.file_bytes == out.stat().st_size
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("existing", [False, True])
def test_interrupt_mid_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool) -> None:
    lbf, out = tmp_path / "m.lbf", tmp_path / "m.gguf"
    make_lbf(lbf, types=["q8_0"])
    if existing:
        out.write_bytes(b"old")
    written: list[int] = []
    original = GGUFWriter.write_tensor_data

    def interrupted(self: GGUFWriter, tensor: npt.NDArray[Any], *args: Any, **kwargs: Any) -> None:
        if len(written) == 2:
            raise KeyboardInterrupt
        original(self, tensor, *args, **kwargs)
        written.append(tensor.nbytes)

    monkeypatch.setattr(GGUFWriter, "write_tensor_data", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_gguf(lbf, out, progress=False, overwrite=existing)
    assert len(written) == 2
    if existing:
        assert out.read_bytes() == b"old"
    else:
        assert not out.exists()
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------------
# The real demo model


@pytest.mark.slow
def test_demo_model_round_trip_is_byte_exact(tmp_path: Path) -> None:
    """GGUF → HF (gguf_to_hf) → LBF (each 2-D tensor re-quantized with lowbit to the type it had in
    the original GGUF: q8_0 for token_embd, q4_1 for the rest; 1-D as f32) → GGUF (export_gguf):
    every tensor's bytes equal the original's. Re-quantizing values that already sit on a
    q4_1/q8_0 grid with the same grid is exact, which this test checks too."""
    import safetensors.numpy

    if not DEMO_GGUF.exists():
        pytest.skip(f"demo model not present ({DEMO_GGUF}); run `make demo-data`")
    hf = gguf_to_hf(DEMO_GGUF, tmp_path / "hf", progress=False)
    orig = GGUFReader(str(DEMO_GGUF))
    orig_type = {t.name: t.tensor_type.name.lower() for t in orig.tensors}
    tensors: dict[str, lowbit.QTensor | npt.NDArray[Any]] = {}
    for shard in sorted(hf.glob("*.safetensors")):
        for name, x in safetensors.numpy.load_file(str(shard)).items():
            tensors[name] = x if x.ndim == 1 else lowbit.quantize(x, orig_type[gguf_name(name)])
    meta = {
        "model.config": (hf / "config.json").read_text(),
        "tokenizer.json": (hf / "tokenizer.json").read_text(),
        "tokenizer.config": (hf / "tokenizer_config.json").read_text(),
    }
    lowbit.save(tmp_path / "smollm2.lbf", tensors, meta)
    del tensors
    report = export_gguf(tmp_path / "smollm2.lbf", tmp_path / "smollm2.gguf", progress=False)

    new = GGUFReader(str(tmp_path / "smollm2.gguf"))
    assert report.n_tensors == len(new.tensors) == len(orig.tensors) == 272
    got = {t.name: t for t in new.tensors}
    assert sorted(got) == sorted(orig_type)
    for t in orig.tensors:
        g = got[t.name]
        assert g.tensor_type == t.tensor_type, t.name
        assert g.shape.tolist() == t.shape.tolist(), t.name
        assert np.asarray(g.data).tobytes() == np.asarray(t.data).tobytes(), t.name

    same = [
        "general.architecture", "general.file_type", "general.quantization_version", "llama.block_count",
        "llama.context_length", "llama.embedding_length", "llama.feed_forward_length",
        "llama.attention.head_count", "llama.attention.head_count_kv", "llama.rope.freq_base",
        "llama.attention.layer_norm_rms_epsilon", "llama.vocab_size", "llama.rope.dimension_count",
        "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token",
        "tokenizer.chat_template",
    ]  # fmt: skip
    for key in same:
        assert field(new, key) == field(orig, key), key
