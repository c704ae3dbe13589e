"""Running a model on the CPU: `lowbit.Model` over the Rust engine (`_core.Engine`).

The engine (`rust/core/src/model/`) is a llama-family decoder (llama, mistral, qwen2) that reads the
weights of an LBF file in place (memory-mapped, any mix of qtypes) and multiplies them with the
quantized matmul. This module adds what belongs to Python: the model's `config.json` turned into
the engine's configuration, the tokenizer (`tokenizers`, from the `tokenizer.json` embedded in the
file), chat templates, sampling options and streaming text.

>>> m = lowbit.Model.load("model.q4_k_m.lbf")               # doctest: +SKIP
>>> m.logits(m.encode("The cat")).shape                       # doctest: +SKIP
(2, 49152)
>>> for piece in m.generate("Once upon a time", max_tokens=20):  # doctest: +SKIP
...     print(piece, end="")
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from . import _core
from .errors import FormatError, ParameterError, UnsupportedError
from .lbf import LBF_MAGIC, LBFFile, load

__all__ = ["Generation", "Model", "engine_config"]

# The architectures the engine runs: config.json model_type → engine arch.
ENGINE_ARCHITECTURES = ("llama", "mistral", "qwen2")


def _int(cfg: dict[str, Any], key: str, default: int | None = None) -> int:
    v = cfg.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise FormatError(f"config.json: {key!r} must be a positive integer, got {v!r}")
    return v


def _float(cfg: dict[str, Any], key: str, default: float | None = None) -> float:
    v = cfg.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v) or v <= 0:
        raise FormatError(f"config.json: {key!r} must be a positive number, got {v!r}")
    return float(v)


def engine_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The engine's configuration from a Hugging Face `config.json` object (llama, mistral, qwen2).

    Raises UnsupportedError for other architectures or options the engine does not implement
    (o_proj/MLP biases, RoPE scaling types other than linear and llama3, activations other than
    SiLU), FormatError for missing or malformed fields."""
    arch = cfg.get("model_type")
    if arch not in ENGINE_ARCHITECTURES:
        raise UnsupportedError(
            f"the engine runs {', '.join(ENGINE_ARCHITECTURES)} models; this one is model_type {arch!r}"
        )
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedError(f"hidden_act {act!r} is not supported (the engine implements SwiGLU with silu)")
    if cfg.get("mlp_bias"):
        raise UnsupportedError("models with mlp_bias are not supported yet")
    if arch == "qwen2" and cfg.get("use_sliding_window"):
        raise UnsupportedError("qwen2 with use_sliding_window (per-layer windows) is not supported yet")
    hidden = _int(cfg, "hidden_size")
    heads = _int(cfg, "num_attention_heads")
    kv_heads = _int(cfg, "num_key_value_heads", heads)
    head_dim = cfg.get("head_dim") or hidden // heads
    out: dict[str, Any] = {
        "arch": arch,
        "vocab_size": _int(cfg, "vocab_size"),
        "hidden_size": hidden,
        "intermediate_size": _int(cfg, "intermediate_size"),
        "num_hidden_layers": _int(cfg, "num_hidden_layers"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": _int({"head_dim": head_dim}, "head_dim"),
        "rms_norm_eps": _float(cfg, "rms_norm_eps", 1e-6),
        "rope_theta": _float(cfg, "rope_theta", 10000.0),
        "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "attention_bias": arch == "qwen2" or bool(cfg.get("attention_bias", False)),
        "max_position_embeddings": _int(cfg, "max_position_embeddings", 2048),
        "rope_type": "default",
    }
    window = cfg.get("sliding_window")
    if arch == "mistral" and window is not None:
        out["sliding_window"] = _int(cfg, "sliding_window")
    # transformers >= 5 writes `rope_parameters` (theta and scaling in one object) instead.
    rs = cfg.get("rope_scaling") or cfg.get("rope_parameters")
    if isinstance(rs, dict) and "rope_theta" in rs and "rope_theta" not in cfg:
        out["rope_theta"] = _float(rs, "rope_theta")
    if rs:
        if not isinstance(rs, dict):
            raise FormatError(f"config.json: rope_scaling must be an object, got {rs!r}")
        kind = rs.get("rope_type", rs.get("type", "default"))
        if kind == "linear":
            out.update(rope_type="linear", rope_factor=_float(rs, "factor"))
        elif kind == "llama3":
            out.update(
                rope_type="llama3",
                rope_factor=_float(rs, "factor"),
                rope_low_freq_factor=_float(rs, "low_freq_factor"),
                rope_high_freq_factor=_float(rs, "high_freq_factor"),
                rope_original_max_position_embeddings=_int(rs, "original_max_position_embeddings"),
            )
        elif kind != "default":
            raise UnsupportedError(f"rope_scaling type {kind!r} is not supported (default, linear, llama3 are)")
    return out


def _eos_ids(cfg: dict[str, Any], gen: dict[str, Any] | None) -> set[int]:
    ids: set[int] = set()
    for src in (gen or {}, cfg):
        v = src.get("eos_token_id")
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, list):
            ids.update(i for i in v if isinstance(i, int))
        if ids:
            break
    return ids


@dataclass
class Generation:
    """A running generation: iterate it for text pieces. After it ends, `tokens` holds the
    generated ids, `finish_reason` is "stop" (an end-of-sequence token or a stop string),
    "length" (max_tokens) or "context" (the context is full), and the timings are set."""

    prompt_tokens: int
    tokens: list[int]
    finish_reason: str | None = None
    prompt_seconds: float = 0.0
    generation_seconds: float = 0.0
    _it: Iterator[str] | None = None

    def __iter__(self) -> Iterator[str]:
        assert self._it is not None
        return self._it

    @property
    def prompt_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens per second (decode only; the first token comes from the prompt pass)."""
        n = len(self.tokens) - 1
        return n / self.generation_seconds if n > 0 and self.generation_seconds > 0 else 0.0


class Model:
    """A model the engine can run. Create it with `Model.load`; close it (or use `with`) to
    release the file. Thread-safety: one session per thread."""

    def __init__(self, lbf: LBFFile, *, isa: str | None = None, _tmp: tempfile.TemporaryDirectory[str] | None = None):
        try:
            self._read_metadata(lbf)
        finally:
            lbf.close()
        self._tmp = _tmp
        self._engine: _core.Engine | None = _core.Engine(str(self.path), engine_config(self.config), isa)
        self.vocab_size: int = self.config["vocab_size"]
        self.max_context: int = _int(self.config, "max_position_embeddings", 2048)
        self._tok: Any = None

    def _read_metadata(self, lbf: LBFFile) -> None:
        from .conversion.lbf_source import json_metadata

        self.path = Path(lbf.path)
        self.source = str(self.path)
        cfg = json_metadata(lbf, "model.config", required=True)
        if not isinstance(cfg, dict):
            raise FormatError(f"{self.path}: metadata 'model.config' is not a JSON object")
        self.config: dict[str, Any] = cfg
        self.generation_config: dict[str, Any] | None = json_metadata(lbf, "model.generation_config")
        self.tokenizer_config: dict[str, Any] | None = json_metadata(lbf, "tokenizer.config")
        self._tokenizer_json = lbf.get_str("tokenizer.json") if "tokenizer.json" in lbf.metadata_types else None
        self.bits_per_weight = float(sum(t.nbytes for t in lbf.tensors) * 8 / max(1, sum(t.numel for t in lbf.tensors)))

    @classmethod
    def load(cls, src: str | os.PathLike[str], *, isa: str | None = None, progress: bool = False) -> Model:
        """Open a model. `src` is an LBF file (used in place, memory-mapped), or anything
        `lowbit.convert` reads (HF checkpoint dir, GGUF file, repo id), which is first converted
        to a float32 LBF in a temporary directory removed by `close()`. `isa` forces the
        instruction set of the matmul ("scalar", "avx2", ...)."""
        p = Path(src)
        if p.is_file():
            with open(p, "rb") as fh:
                magic = fh.read(len(LBF_MAGIC))
            if magic == LBF_MAGIC:
                return cls(load(p), isa=isa)
        from .conversion import convert

        tmp = tempfile.TemporaryDirectory(prefix="lowbit-model-")
        try:
            out = Path(tmp.name) / "model.f32.lbf"
            convert(src, out, "f32", progress=progress)
            model = cls(load(out), isa=isa, _tmp=tmp)
            model.source = str(src)
            return model
        except BaseException:
            tmp.cleanup()
            raise

    def close(self) -> None:
        """Release the engine (and the temporary float32 file of a converted source)."""
        self._engine = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _eng(self) -> _core.Engine:
        if self._engine is None:
            from .errors import ClosedError

            raise ClosedError(f"model {self.path} is closed")
        return self._engine

    # ----------------------------------------------------------------------------------------
    # Tokens

    @property
    def tokenizer(self) -> Any:
        """The `tokenizers.Tokenizer` built from the file's embedded tokenizer.json."""
        if self._tok is None:
            if self._tokenizer_json is None:
                raise UnsupportedError(f"{self.path} has no tokenizer.json in its metadata; pass token ids instead")
            from tokenizers import Tokenizer

            self._tok = Tokenizer.from_str(self._tokenizer_json)
        return self._tok

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text` (no BOS/EOS unless `add_special_tokens`)."""
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """Text of token ids."""
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def chat_prompt(self, messages: Sequence[dict[str, str]] | str) -> str:
        """The prompt text for chat `messages` (or one user message) through the chat template
        of the tokenizer metadata (Jinja2, as transformers renders it), ready for the assistant."""
        template = (self.tokenizer_config or {}).get("chat_template")
        if not isinstance(template, str):
            raise UnsupportedError(f"{self.path} has no chat_template in its tokenizer metadata")
        try:
            import jinja2
            import jinja2.sandbox
        except ImportError:
            raise UnsupportedError("chat templates need jinja2: pip install 'lowbit[chat]'") from None
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

        def raise_exception(msg: str) -> None:
            raise ParameterError(f"chat template: {msg}")

        env.globals["raise_exception"] = raise_exception
        tc = self.tokenizer_config or {}
        special = {k: tc.get(k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
        special = {k: (v.get("content") if isinstance(v, dict) else v) for k, v in special.items()}
        return str(env.from_string(template).render(messages=list(messages), add_generation_prompt=True, **special))

    # ----------------------------------------------------------------------------------------
    # Running

    def session(self, max_context: int | None = None) -> Any:
        """A fresh engine session (KV cache for `max_context` tokens, default the model's limit)."""
        n = self.max_context if max_context is None else int(max_context)
        if n <= 0 or n > self.max_context:
            raise ParameterError(f"max_context must be in 1..{self.max_context}, got {n}")
        return self._eng().session(n)

    def _tokens(self, tokens: Sequence[int] | npt.ArrayLike) -> npt.NDArray[np.uint32]:
        arr = np.asarray(tokens)
        if arr.ndim != 1 or arr.size == 0:
            raise ParameterError(f"tokens must be a non-empty 1-D sequence of ids, got shape {arr.shape}")
        if arr.dtype.kind not in "iu":
            raise ParameterError(f"tokens must be integers, got dtype {arr.dtype}")
        if arr.min() < 0 or arr.max() >= self.vocab_size:
            raise ParameterError(f"token ids must be in 0..{self.vocab_size - 1}")
        return np.ascontiguousarray(arr, dtype=np.uint32)

    def logits(self, tokens: Sequence[int] | npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Next-token logits after each of `tokens` (one fresh context, all tokens in one batch):
        float32 array of shape (len(tokens), vocab_size)."""
        ids = self._tokens(tokens)
        if len(ids) > self.max_context:
            raise ParameterError(f"{len(ids)} tokens exceed the model's context of {self.max_context}")
        return np.asarray(self.session(len(ids)).forward(ids, True))

    def generate(
        self,
        prompt: str | Sequence[int],
        *,
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        chat: bool = False,
        stop: Sequence[str] = (),
        max_context: int | None = None,
    ) -> Generation:
        """Generate a continuation of `prompt` (text, or token ids), streamed: iterate the
        returned `Generation` for text pieces. Greedy at temperature 0; otherwise temperature
        sampling restricted to the `top_k` most likely tokens (0 = all) and the smallest set
        whose probability reaches `top_p`, seeded by `seed`. `chat` wraps a text prompt in the
        model's chat template. Stops at an end-of-sequence token, a `stop` string, `max_tokens`,
        or a full context."""
        if max_tokens < 1:
            raise ParameterError(f"max_tokens must be >= 1, got {max_tokens}")
        if not np.isfinite(temperature) or temperature < 0:
            raise ParameterError(f"temperature must be >= 0, got {temperature}")
        if top_k < 0:
            raise ParameterError(f"top_k must be >= 0, got {top_k}")
        if not 0.0 < top_p <= 1.0:
            raise ParameterError(f"top_p must be in (0, 1], got {top_p}")
        if isinstance(prompt, str):
            text = self.chat_prompt(prompt) if chat else prompt
            ids = self.encode(text, add_special_tokens=not chat)
        elif chat:
            raise ParameterError("chat=True needs a text prompt")
        else:
            ids = [int(i) for i in prompt]
        arr = self._tokens(ids)
        sess = self.session(max_context)
        capacity = self.max_context if max_context is None else max_context
        if len(arr) >= capacity:
            raise ParameterError(f"the prompt has {len(arr)} tokens; the context holds {capacity}")
        sampler = _core.Sampler(float(temperature), int(top_k), float(top_p), int(seed))
        eos = _eos_ids(self.config, self.generation_config)
        gen = Generation(prompt_tokens=len(arr), tokens=[])

        stops = [s for s in stop if s]

        def held(text: str) -> int:
            """Characters at the end of `text` that could begin a stop string (not yet shown)."""
            n = 0
            for s in stops:
                n = max(n, next((k for k in range(min(len(s) - 1, len(text)), n, -1) if text.endswith(s[:k])), 0))
            return n

        def run() -> Iterator[str]:
            t0 = time.perf_counter()
            logits = sess.forward(arr, False)
            gen.prompt_seconds = time.perf_counter() - t0
            t1 = time.perf_counter()
            text = emitted = ""  # `emitted` (what was yielded) is always a prefix of `text`
            while True:
                tok = int(sampler.sample(logits))
                if tok in eos:
                    gen.finish_reason = "stop"
                    break
                gen.tokens.append(tok)
                text = self.decode(gen.tokens)
                hits = [i for i in (text.find(s) for s in stops) if i >= 0]
                if hits:
                    text = text[: min(hits)]
                    gen.finish_reason = "stop"
                    break
                # Hold back an incomplete UTF-8 sequence (U+FFFD) and a possible stop-string start.
                end = len(text) - held(text)
                if not text.endswith("\ufffd") and end > len(emitted) and text.startswith(emitted):
                    yield text[len(emitted) : end]
                    emitted = text[:end]
                if len(gen.tokens) >= max_tokens:
                    gen.finish_reason = "length"
                    break
                if sess.position >= capacity:
                    gen.finish_reason = "context"
                    break
                logits = sess.forward(np.array([tok], dtype=np.uint32), False)
            gen.generation_seconds = time.perf_counter() - t1
            if len(text) > len(emitted) and text.startswith(emitted):
                yield text[len(emitted) :]

        gen._it = run()
        return gen
