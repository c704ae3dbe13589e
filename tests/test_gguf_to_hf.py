"""GGUF → HF checkpoint (`lowbit.conversion.gguf_to_hf`), end to end.

Tiny llama GGUF files are written here with gguf's own `GGUFWriter` and quantizers, with the q/k
rows permuted as llama.cpp's convert_hf_to_gguf.py does; the expected values of every output
tensor come from gguf's numpy dequantizers (never from lowbit), so the comparison is independent.
The tokenizer is a tiny byte-level BPE trained here with the `tokenizers` library: the rebuilt
tokenizer.json must encode exactly as it does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import safetensors.numpy as safetensors_numpy
from gguf import GGMLQuantizationType as GT
from gguf import GGUFReader, GGUFWriter
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit
import synth
from conftest import DEMO_GGUF, ROOT
from lowbit.conversion import gguf_to_hf, permute_qk, unpermute_qk

HIDDEN, N_HEAD, N_KV, FFN, LAYERS = 64, 4, 2, 128, 2
HEAD_DIM = HIDDEN // N_HEAD
SPECIALS = synth.SPECIALS
CORPUS = [
    "I am a cat. As yet I have no name. I have no idea where I was born.",
    "All I remember is that I was miaowing in a dim and damp place when, for the first time, I saw a human being.",
    "This human being, I heard afterwards, was a student, one of the most ferocious of the human race.",
    "In 1905 the teacher paid 12 yen for 3 books; the student's father didn't mind.",
    "Hello, world! The quick brown fox jumps over the lazy dog.",
]
SAMPLES = [
    "I am a cat. As yet I have no name.",
    "The student paid 1234 yen, didn't he?  Yes -- twice!",
    "Hello,\n\tworld\n",
    "<|im_start|>user\nWhere was I born?<|im_end|>",
    "naïve café ☃",
]


# --------------------------------------------------------------------------------------------
# Independent references


def llama_cpp_permute(w: npt.NDArray[Any], n_head: int) -> npt.NDArray[Any]:
    """The permutation convert_hf_to_gguf.py's LlamaModel applies to q/k (HF → GGUF): reshape rows
    to (head, 2, half, ...), swap the two middle axes."""
    out: npt.NDArray[Any] = w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2)
    return out.reshape(w.shape)


def reference_unpermute(w: npt.NDArray[Any], n_head: int) -> npt.NDArray[Any]:
    """Inverse of `llama_cpp_permute`, derived from its row mapping (not from a formula)."""
    src_rows = llama_cpp_permute(np.arange(w.shape[0]), n_head)  # GGUF row i holds HF row src_rows[i]
    return w[np.argsort(src_rows)]


def train_bpe(pre: str) -> Any:
    """A ~300-token byte-level BPE, pre-tokenized like the GGUF `pre` says."""
    return synth.train_bpe(CORPUS, pre)


def write_gguf(
    path: Path,
    *,
    tied: bool = True,
    weight_type: GT = GT.Q8_0,
    arch: str = "llama",
    pre: str = "smollm",
    tokenizer_model: str = "gpt2",
    extra: dict[str, tuple[npt.NDArray[Any], GT]] | None = None,
    seed: int = 0,
) -> dict[str, npt.NDArray[np.float32]]:
    """Write a tiny llama GGUF; returns the HF-layout float32 source weights (before any
    quantization) by GGUF name."""
    rng = np.random.default_rng(seed)
    bpe = train_bpe(pre)
    vocab = bpe.get_vocab()
    tokens = sorted(vocab, key=vocab.__getitem__)
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    merges = [" ".join(m) if isinstance(m, list) else m for m in json.loads(bpe.to_str())["model"]["merges"]]
    n_vocab = len(tokens)

    w = GGUFWriter(str(path), arch)
    w.add_block_count(LAYERS)
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV)
    w.add_rope_freq_base(12345.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_tokenizer_model(tokenizer_model)
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")

    src: dict[str, npt.NDArray[np.float32]] = {}

    def add(name: str, x: npt.NDArray[np.float32], qtype: GT, heads: int = 0) -> None:
        src[name] = x
        stored = llama_cpp_permute(x, heads) if heads else x
        if qtype == GT.F32:
            w.add_tensor(name, np.ascontiguousarray(stored, dtype=np.float32))
        elif qtype == GT.F16:
            w.add_tensor(name, np.ascontiguousarray(stored, dtype=np.float16))
        else:
            w.add_tensor(name, gguf_quantize(np.ascontiguousarray(stored), qtype), raw_dtype=qtype)

    def mat(rows: int, cols: int) -> npt.NDArray[np.float32]:
        return (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)

    add("token_embd.weight", mat(n_vocab, HIDDEN), GT.Q8_0)
    for i in range(LAYERS):
        add(f"blk.{i}.attn_norm.weight", (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32), GT.F32)
        add(f"blk.{i}.attn_q.weight", mat(HIDDEN, HIDDEN), weight_type, N_HEAD)
        add(f"blk.{i}.attn_k.weight", mat(N_KV * HEAD_DIM, HIDDEN), GT.F32 if i == 0 else weight_type, N_KV)
        add(f"blk.{i}.attn_v.weight", mat(N_KV * HEAD_DIM, HIDDEN), GT.F16)
        add(f"blk.{i}.attn_output.weight", mat(HIDDEN, HIDDEN), weight_type)
        add(f"blk.{i}.ffn_norm.weight", (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32), GT.F32)
        add(f"blk.{i}.ffn_gate.weight", mat(FFN, HIDDEN), GT.Q4_0)
        add(f"blk.{i}.ffn_up.weight", mat(FFN, HIDDEN), weight_type)
        add(f"blk.{i}.ffn_down.weight", mat(HIDDEN, FFN), GT.Q8_0)
    add("output_norm.weight", np.ones(HIDDEN, np.float32), GT.F32)
    if not tied:
        add("output.weight", mat(n_vocab, HIDDEN), GT.Q4_0)
    for name, (x, qt) in (extra or {}).items():
        if qt in (GT.F32, GT.F16, GT.Q8_0, GT.Q4_0):
            add(name, x, qt)
        else:
            src[name] = x
            w.add_tensor(name, x, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return src


HF_OF = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def hf_name(name: str) -> str:
    if name in HF_OF:
        return HF_OF[name]
    parts = name.split(".")
    if parts[0] == "blk" and parts[2] in HF_OF:
        return f"model.layers.{parts[1]}.{HF_OF[parts[2]]}.{parts[3]}"
    return name


def expected_tensors(path: Path, n_head: int, n_kv: int) -> dict[str, npt.NDArray[np.float32]]:
    """Every tensor of the GGUF file as gguf's numpy code dequantizes it, q/k un-permuted by the
    reference inverse, under its HF name."""
    out = {}
    for t in GGUFReader(str(path)).tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        x = gguf_dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32).reshape(shape)
        if ".attn_q." in t.name:
            x = reference_unpermute(x, n_head)
        elif ".attn_k." in t.name:
            x = reference_unpermute(x, n_kv)
        out[hf_name(t.name)] = x
    return out


def load_checkpoint(d: Path) -> dict[str, npt.NDArray[np.float32]]:
    index = json.loads((d / "model.safetensors.index.json").read_text())
    out: dict[str, npt.NDArray[np.float32]] = {}
    for shard in sorted(set(index["weight_map"].values())):
        part = safetensors_numpy.load_file(str(d / shard))
        for k, v in part.items():
            assert k not in out
            assert index["weight_map"][k] == shard
            out[k] = v
    assert set(out) == set(index["weight_map"])
    assert index["metadata"]["total_size"] == sum(v.nbytes for v in out.values())
    return out


def assert_bit_exact(got: dict[str, npt.NDArray[np.float32]], want: dict[str, npt.NDArray[np.float32]]) -> None:
    assert sorted(got) == sorted(want)
    for k, w in want.items():
        g = got[k]
        assert g.dtype == np.float32, k
        assert g.shape == w.shape, (k, g.shape, w.shape)
        if not np.array_equal(g.view(np.uint32), w.view(np.uint32)):
            bad = np.flatnonzero(g.view(np.uint32) != w.view(np.uint32))
            pytest.fail(
                f"{k}: {bad.size} values differ, first at flat index {bad[0]}: {g.flat[bad[0]]} vs {w.flat[bad[0]]}"
            )


def leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


# --------------------------------------------------------------------------------------------
# The q/k permutation


@settings(max_examples=60, deadline=None)
@given(heads=st.integers(1, 8), half=st.integers(1, 8), cols=st.integers(1, 5))
def test_unpermute_inverts_llama_cpp_permute(heads: int, half: int, cols: int) -> None:
    w = np.arange(heads * 2 * half * cols, dtype=np.float32).reshape(heads * 2 * half, cols)
    assert np.array_equal(unpermute_qk(llama_cpp_permute(w, heads), heads), w)
    assert np.array_equal(permute_qk(unpermute_qk(w, heads), heads), w)
    assert np.array_equal(permute_qk(w, heads), llama_cpp_permute(w, heads))
    assert np.array_equal(unpermute_qk(w, heads), reference_unpermute(w, heads))
    b = w[:, 0].copy()  # biases are permuted the same way
    assert np.array_equal(unpermute_qk(llama_cpp_permute(b, heads), heads), b)


def test_unpermute_example() -> None:
    # One head of 4 rows: llama.cpp stores HF rows (0, 2, 1, 3); un-permuting restores 0..3.
    gguf_rows = np.array([[0], [2], [1], [3]])
    assert unpermute_qk(gguf_rows, 1).ravel().tolist() == [0, 1, 2, 3]


def test_unpermute_rejects_rows_not_splitting_into_heads() -> None:
    with pytest.raises(lowbit.FormatError, match="heads"):
        unpermute_qk(np.zeros((6, 4)), 2)


# --------------------------------------------------------------------------------------------
# End to end on tiny synthetic models


@pytest.mark.parametrize("weight_type", [GT.Q8_0, GT.Q4_0, GT.F16, GT.F32], ids=lambda t: t.name)
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_tiny_model_round_trip(tmp_path: Path, weight_type: GT, tied: bool) -> None:
    src = tmp_path / "tiny.gguf"
    source = write_gguf(src, tied=tied, weight_type=weight_type)
    out = gguf_to_hf(src, tmp_path / "hf", progress=False)
    assert out == tmp_path / "hf"
    got = load_checkpoint(out)
    assert_bit_exact(got, expected_tensors(src, N_HEAD, N_KV))

    # The direction of the un-permutation, end to end: outputs are close to the HF-layout
    # sources (exactly equal for the f32 ones), which a wrong direction would scramble.
    for name, x in source.items():
        y = got[hf_name(name)]
        if name == "blk.0.attn_k.weight" or name.endswith("norm.weight"):
            assert np.array_equal(y, x), name
        else:
            # Relative RMS error: ≈ 0.1 for q4_0, ≈ 1.4 for rows in the wrong order.
            assert np.linalg.norm(y - x) < 0.25 * np.linalg.norm(x), name

    cfg = json.loads((out / "config.json").read_text())
    n_vocab = len(json.loads((out / "tokenizer.json").read_text())["model"]["vocab"])
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["model_type"] == "llama"
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]) == (HIDDEN, LAYERS, FFN)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (N_HEAD, N_KV)
    assert cfg["max_position_embeddings"] == 256
    assert cfg["rope_theta"] == 12345.0
    assert cfg["rms_norm_eps"] == pytest.approx(1e-5)
    assert cfg["vocab_size"] == n_vocab == got["model.embed_tokens.weight"].shape[0]
    assert cfg["tie_word_embeddings"] is tied
    assert ("lm_head.weight" in got) is not tied
    assert cfg["torch_dtype"] == "float32"
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (1, 2)
    assert "head_dim" not in cfg
    assert json.loads((out / "generation_config.json").read_text()) == {"bos_token_id": 1, "eos_token_id": 2}
    assert leftovers(tmp_path, "hf") == []


@pytest.mark.parametrize("pre", ["smollm", "gpt2"])
def test_tokenizer_matches_the_original(tmp_path: Path, pre: str) -> None:
    from tokenizers import Tokenizer

    write_gguf(tmp_path / "t.gguf", pre=pre)
    out = gguf_to_hf(tmp_path / "t.gguf", tmp_path / "hf", progress=False)
    ours = Tokenizer.from_file(str(out / "tokenizer.json"))
    original = train_bpe(pre)
    assert ours.get_vocab(with_added_tokens=True) == original.get_vocab(with_added_tokens=True)
    for s in SAMPLES + CORPUS:
        enc = ours.encode(s)
        assert enc.ids == original.encode(s).ids, s
        assert ours.decode(enc.ids, skip_special_tokens=False) == s
    assert ours.encode("<|im_end|>").ids == [2]
    assert ours.decode(ours.encode("<|im_start|>hi<|im_end|>").ids) == "hi"  # specials skipped

    tc = json.loads((out / "tokenizer_config.json").read_text())
    assert (tc["bos_token"], tc["eos_token"]) == ("<|im_start|>", "<|im_end|>")
    assert tc["chat_template"].startswith("{% for m in messages %}")
    assert tc["add_bos_token"] is False
    assert tc["added_tokens_decoder"]["0"]["content"] == "<|endoftext|>"
    assert tc["added_tokens_decoder"]["0"]["special"] is True


def test_llama3_pre_tokenizer_loads_and_round_trips(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    write_gguf(tmp_path / "t.gguf", pre="llama-bpe")
    tok = Tokenizer.from_file(str(gguf_to_hf(tmp_path / "t.gguf", tmp_path / "hf", progress=False) / "tokenizer.json"))
    for s in SAMPLES:
        assert tok.decode(tok.encode(s).ids, skip_special_tokens=False) == s


def test_unknown_pre_tokenizer_warns(tmp_path: Path) -> None:
    write_gguf(tmp_path / "t.gguf", pre="zzzz")
    with pytest.warns(lowbit.LowbitWarning, match="zzzz"):
        gguf_to_hf(tmp_path / "t.gguf", tmp_path / "hf", progress=False)


def test_several_shards(tmp_path: Path) -> None:
    src = tmp_path / "tiny.gguf"
    write_gguf(src, tied=False)
    limit = 40_000  # smaller than the embedding (≈ 300 × 64 × 4 bytes): it gets a shard of its own
    out = gguf_to_hf(src, tmp_path / "hf", shard_bytes=limit, progress=False)
    shards = sorted(out.glob("*.safetensors"))
    assert len(shards) > 5
    assert shards[0].name == f"model-00001-of-{len(shards):05d}.safetensors"
    for s in shards:
        part = safetensors_numpy.load_file(str(s))
        assert len(part) == 1 or sum(v.nbytes for v in part.values()) <= limit
    assert_bit_exact(load_checkpoint(out), expected_tensors(src, N_HEAD, N_KV))


def test_unknown_tensor_name_is_kept_with_a_warning(tmp_path: Path) -> None:
    extra = np.linspace(-1, 1, 32, dtype=np.float32)
    write_gguf(tmp_path / "t.gguf", extra={"rope_freqs.weight": (extra, GT.F32)})
    with pytest.warns(lowbit.LowbitWarning, match="rope_freqs.weight"):
        out = gguf_to_hf(tmp_path / "t.gguf", tmp_path / "hf", progress=False)
    assert np.array_equal(load_checkpoint(out)["rope_freqs.weight"], extra)


def test_progress_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_gguf(tmp_path / "t.gguf")
    gguf_to_hf(tmp_path / "t.gguf", tmp_path / "hf", progress=True)
    assert "t.gguf" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Bad input


def test_not_a_gguf_file(tmp_path: Path) -> None:
    for content in (b"", b"GG", b"PK\x03\x04 a zip file, not a gguf file at all"):
        p = tmp_path / "x.gguf"
        p.write_bytes(content)
        with pytest.raises(lowbit.FormatError, match="not a GGUF file") as e:
            gguf_to_hf(p, tmp_path / "hf", progress=False)
        assert e.value.offset == 0
        assert not (tmp_path / "hf").exists()
    with pytest.raises(lowbit.FormatError, match="directory"):
        gguf_to_hf(tmp_path, tmp_path / "hf", progress=False)


def test_truncated_gguf(tmp_path: Path) -> None:
    src = tmp_path / "t.gguf"
    write_gguf(src)
    raw = src.read_bytes()
    data_start = GGUFReader(str(src)).tensors[0].data_offset
    for cut in (4, 10, 24, 100, data_start // 2, data_start, data_start + 100, len(raw) // 2, len(raw) - 1):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(raw[:cut])
        with pytest.raises(lowbit.FormatError):
            gguf_to_hf(bad, tmp_path / "hf", progress=False)
        assert not (tmp_path / "hf").exists()
        assert leftovers(tmp_path, "hf") == []


def test_unsupported_architecture(tmp_path: Path) -> None:
    write_gguf(tmp_path / "t.gguf", arch="falcon")
    with pytest.raises(lowbit.UnsupportedError, match=r"'falcon'.*llama"):
        gguf_to_hf(tmp_path / "t.gguf", tmp_path / "hf", progress=False)
    assert not (tmp_path / "hf").exists()


def test_unsupported_tensor_type(tmp_path: Path) -> None:
    # IQ2_XXS: 66 bytes per 256 values; lowbit has no dequantizer for it.
    blob = np.zeros((4, 66), np.uint8)
    write_gguf(tmp_path / "t.gguf", extra={"blk.0.extra.weight": (blob, GT.IQ2_XXS)})
    with pytest.raises(lowbit.UnsupportedError, match=r"blk\.0\.extra\.weight \(IQ2_XXS\)"):
        gguf_to_hf(tmp_path / "t.gguf", tmp_path / "hf", progress=False)
    assert not (tmp_path / "hf").exists()
    assert leftovers(tmp_path, "hf") == []


def test_sentencepiece_tokenizer_is_not_supported_yet(tmp_path: Path) -> None:
    write_gguf(tmp_path / "t.gguf", tokenizer_model="llama")
    with pytest.raises(lowbit.UnsupportedError, match="'llama'"):
        gguf_to_hf(tmp_path / "t.gguf", tmp_path / "hf", progress=False)
    assert not (tmp_path / "hf").exists()


def test_destination_exists(tmp_path: Path) -> None:
    write_gguf(tmp_path / "t.gguf")
    dst = tmp_path / "hf"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(lowbit.DestinationExistsError):
        gguf_to_hf(tmp_path / "t.gguf", dst, progress=False)
    assert (dst / "keep.txt").read_text() == "mine"
    gguf_to_hf(tmp_path / "t.gguf", dst, progress=False, overwrite=True)
    assert not (dst / "keep.txt").exists()
    assert (dst / "config.json").exists()
    assert leftovers(tmp_path, "hf") == []


@pytest.mark.parametrize("existing", [False, True])
def test_failure_mid_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool) -> None:
    from lowbit.conversion import gguf_source

    write_gguf(tmp_path / "t.gguf")
    dst = tmp_path / "hf"
    if existing:
        dst.mkdir()
        (dst / "keep.txt").write_text("mine")
    real = gguf_source._dequantize
    calls = 0

    def failing(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 7:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(gguf_source, "_dequantize", failing)
    with pytest.raises(KeyboardInterrupt):
        gguf_to_hf(tmp_path / "t.gguf", dst, shard_bytes=10_000, progress=False, overwrite=True)
    assert calls == 7
    assert leftovers(tmp_path, "hf") == []
    if existing:
        assert sorted(p.name for p in dst.iterdir()) == ["keep.txt"]
    else:
        assert not dst.exists()


# --------------------------------------------------------------------------------------------
# The real demo model

PROSE = (
    "Ever since I was a child, my inherited recklessness has brought me nothing but trouble. "
    "When I was at primary school, I once jumped from the second floor of the school building "
    "and couldn't walk for a week."
)


@pytest.mark.slow
def test_demo_model(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    if not DEMO_GGUF.exists():
        pytest.skip(f"demo model not present ({DEMO_GGUF}); run `make demo-data`")
    out = tmp_path / "smollm2-hf"
    # Convert in a child process to measure its peak RSS alone.
    script = textwrap.dedent(
        f"""
        import resource, sys, time
        from lowbit.conversion import gguf_to_hf
        t = time.perf_counter()
        gguf_to_hf({str(DEMO_GGUF)!r}, {str(out)!r}, progress=False)
        print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        """
    )
    t0 = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": str(ROOT / "python"), "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stderr
    seconds, maxrss_kib = run.stdout.split()
    print(
        f"\ndemo GGUF → HF: {float(seconds):.2f} s in gguf_to_hf ({time.perf_counter() - t0:.2f} s with start-up), "
        f"peak RSS {int(maxrss_kib) / 1024:.0f} MiB, GGUF {DEMO_GGUF.stat().st_size / 2**20:.0f} MiB, "
        f"output {sum(p.stat().st_size for p in out.iterdir()) / 2**20:.0f} MiB"
    )

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 30
    assert (cfg["hidden_size"], cfg["intermediate_size"]) == (576, 1536)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (9, 3)
    assert cfg["vocab_size"] == 49152
    assert cfg["tie_word_embeddings"] is True
    got = load_checkpoint(out)
    assert "lm_head.weight" not in got
    assert len([k for k in got if k.endswith("self_attn.q_proj.weight")]) == 30
    assert_bit_exact(got, expected_tensors(DEMO_GGUF, 9, 3))

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.get_vocab_size() == 49152
    ids = tok.encode(PROSE).ids
    assert tok.decode(ids) == PROSE
    assert len(PROSE) / len(ids) > 3.5  # real BPE merges, not bytes
    assert tok.encode("<|im_start|>").ids == [1]
    assert tok.encode("<|im_end|>").ids == [2]
    # GPT-2 style: a word after a space is one "Ġword" token; digits are split one by one.
    assert tok.encode(" the").tokens == ["Ġthe"]
    assert tok.encode("2024").tokens == ["2", "0", "2", "4"]
    tc = json.loads((out / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tc["chat_template"]
