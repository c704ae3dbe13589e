"""Calibration data: text files → the model's own tokens → `n_samples` windows of `seq_len` tokens,
seeded and reproducible (what the quantizers' `--calib FILE` option reads).

Protocol:
- Text: the given UTF-8 files (a BOM is dropped), several joined with a blank line ("\\n\\n"), or by
  default Jane Austen's *Persuasion* (public domain, shipped in `lowbit/calib/texts/`; see its README).
  It differs from the evaluation text (`lowbit eval` uses Botchan) so that evaluation does not score the
  text the quantizer fitted. The SHA-256 of the text (its UTF-8 bytes) goes into the LBF provenance
  (`quantization.calib_sha256`).
- Tokens: the whole text is tokenized once, without special tokens, as `lowbit.eval` does (a
  tokenizer's own truncation or padding settings are ignored).
- Windows: each sample is a contiguous slice of that token sequence (as GPTQ's reference code draws
  random slices of C4 documents). With `bos_id` every sample starts with that token and holds
  `seq_len - 1` text tokens (llama.cpp's imatrix does this for models that want a BOS); without it,
  which matches `lowbit.eval`'s windows, it holds `seq_len` text tokens.
  When the text has at least `n_samples` × span tokens (span = text tokens per sample) the windows do
  not overlap: their places are drawn with `numpy.random.default_rng(seed)`. A shorter text (but at
  least one span) is covered by `n_samples` evenly spaced windows, which then overlap; `overlap` says
  which fraction of the sampled text tokens repeat others, and a `LowbitWarning` is issued when it
  exceeds `MAX_QUIET_OVERLAP` (the samples then hold fewer than half as many distinct tokens as asked).
  Either way the samples come in an order shuffled by the same generator, so any prefix of them is a
  spread-out subset. Same text, tokenizer, sizes, `bos_id` and seed → the same tokens.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from ..errors import LowbitWarning, ParameterError

__all__ = ["DEFAULT_TEXT", "MAX_QUIET_OVERLAP", "CalibrationSet", "calibration_tokens", "load_texts"]

DEFAULT_TEXT = "persuasion.txt"
"""The default calibration text, in the package's `calib/texts/` folder."""
DEFAULT_SOURCE = f"lowbit/calib/texts/{DEFAULT_TEXT}"
MAX_QUIET_OVERLAP = 0.5
"""Above this fraction of repeated tokens in the samples, `calibration_tokens` warns."""
MAX_SEED = 2**64 - 1  # the LBF `quantization.seed` key is a u64

PathLike = str | os.PathLike[str]


def _decode(raw: bytes, name: str) -> str:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ParameterError(f"{name} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from e
    if not text.strip():
        raise ParameterError(f"{name} holds no text" if text else f"{name} is empty")
    return text


def load_texts(files: PathLike | Sequence[PathLike] | None = None) -> tuple[str, str, list[str]]:
    """The calibration text: `(text, sha256, sources)`. `files` is one path or several (joined with
    "\\n\\n", in the given order); None means the default text shipped with lowbit (`DEFAULT_TEXT`).
    `sha256` is the hex SHA-256 of the text's UTF-8 bytes (for one file without a BOM: the file's);
    `sources` are the paths as given, or `DEFAULT_SOURCE`.

    Raises `ParameterError` for an empty list of files, an empty or whitespace-only file, or one
    that is not UTF-8; `OSError` (`FileNotFoundError`, `IsADirectoryError`, ...) when a file cannot
    be read."""
    if files is None:
        raw = resources.files("lowbit.calib").joinpath("texts").joinpath(DEFAULT_TEXT).read_bytes()
        texts, sources = [_decode(raw, DEFAULT_SOURCE)], [DEFAULT_SOURCE]
    else:
        paths = [files] if isinstance(files, (str, os.PathLike)) else list(files)
        if not paths:
            raise ParameterError("no calibration files given (pass None for the default text)")
        sources = [str(p) for p in paths]
        texts = [_decode(Path(p).read_bytes(), s) for p, s in zip(paths, sources, strict=True)]
    text = "\n\n".join(texts)
    return text, hashlib.sha256(text.encode("utf-8")).hexdigest(), sources


@dataclass(frozen=True)
class CalibrationSet:
    """Calibration samples and where they came from (see the module doc for the protocol).

    `tokens`: uint32 (n_samples, seq_len); row i is `[bos_id] +` (when set) the text
    tokens `starts[i] : starts[i] + span` of the whole text's tokenization (`n_text_tokens` long),
    span = seq_len - 1 with `bos_id`, else seq_len. `starts`: int64 (n_samples,). Both are read-only.
    `text_sha256`: hex SHA-256 of the text's UTF-8 bytes; `tokens_sha256`: of `tokens` as C-order
    little-endian uint32 bytes. `overlap`: fraction (0..1) of the sampled text tokens that repeat
    others (0 when the text holds all samples side by side)."""

    tokens: npt.NDArray[np.uint32]
    starts: npt.NDArray[np.int64]
    text_sha256: str
    tokens_sha256: str
    sources: list[str]
    n_text_tokens: int
    overlap: float
    seed: int
    bos_id: int | None

    @property
    def n_samples(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.tokens.shape[1])

    def provenance(self) -> dict[str, Any]:
        """The reserved LBF metadata entries (`formats/LBF.md` §"Reserved keys") this set fills:
        `quantization.calib_sha256` (string) and `quantization.seed` (u64, as `numpy.uint64` so
        `LBFWriter` stores that type)."""
        return {"quantization.calib_sha256": self.text_sha256, "quantization.seed": np.uint64(self.seed)}

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready description of the set (no tokens), for `quantization.params`."""
        return {
            "sources": list(self.sources),
            "text_sha256": self.text_sha256,
            "tokens_sha256": self.tokens_sha256,
            "n_text_tokens": self.n_text_tokens,
            "n_samples": self.n_samples,
            "seq_len": self.seq_len,
            "bos_id": self.bos_id,
            "seed": self.seed,
            "overlap": self.overlap,
        }


def _tokenizer(tokenizer: Tokenizer | str) -> Tokenizer:
    """`tokenizer`, or one built from tokenizer.json text, without truncation or padding."""
    if isinstance(tokenizer, str):
        try:
            tokenizer = Tokenizer.from_str(tokenizer)
        except Exception as e:  # tokenizers raises a bare Exception for bad JSON
            raise ParameterError(f"not a tokenizer.json text: {e}") from e
    elif tokenizer.truncation is not None or tokenizer.padding is not None:
        tokenizer = Tokenizer.from_str(tokenizer.to_str())  # a copy: the caller's settings stay
    else:
        return tokenizer
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _window_starts(n_tokens: int, n_samples: int, span: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """Sorted starts of `n_samples` windows of `span` tokens in `n_tokens` (≥ span): random and
    disjoint when they fit side by side, else evenly spaced from 0 to n_tokens - span."""
    slack = n_tokens - n_samples * span
    if slack >= 0:
        gaps = np.sort(rng.integers(0, slack, size=n_samples, endpoint=True))
        return gaps + span * np.arange(n_samples, dtype=np.int64)
    return np.rint(np.linspace(0, n_tokens - span, n_samples)).astype(np.int64)


def calibration_tokens(
    tokenizer: Tokenizer | str,
    *,
    files: PathLike | Sequence[PathLike] | None = None,
    n_samples: int = 128,
    seq_len: int = 512,
    seed: int = 0,
    bos_id: int | None = None,
) -> CalibrationSet:
    """`n_samples` × `seq_len` calibration tokens drawn from `files` (see `load_texts`; None: the
    default text), tokenized by `tokenizer` (a `tokenizers.Tokenizer` or tokenizer.json text).
    `seed` (0 ≤ seed < 2**64) seeds the draw; `bos_id` prefixes every sample with that token id.

    Raises `ParameterError` for n_samples < 1, seq_len < 1 (< 2 with `bos_id`), a seed or `bos_id`
    out of range, a bad tokenizer.json, bad text (see `load_texts`), or a text with fewer tokens
    than one sample needs (the message gives the count). Warns (`LowbitWarning`) when more than
    `MAX_QUIET_OVERLAP` of the sampled tokens repeat others because the text is short."""
    if n_samples < 1:
        raise ParameterError(f"n_samples must be at least 1, got {n_samples}")
    min_len = 1 if bos_id is None else 2
    if seq_len < min_len:
        with_bos = "" if bos_id is None else " with bos_id"
        raise ParameterError(f"seq_len must be at least {min_len}{with_bos}, got {seq_len}")
    span = seq_len - min_len + 1
    if not 0 <= seed <= MAX_SEED:
        raise ParameterError(f"seed must be in 0..2**64-1, got {seed}")
    tok = _tokenizer(tokenizer)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    if bos_id is not None and not 0 <= bos_id < vocab:
        raise ParameterError(f"bos_id {bos_id} is outside the tokenizer's vocabulary of {vocab}")
    text, text_sha256, sources = load_texts(files)
    ids = np.asarray(tok.encode(text, add_special_tokens=False).ids, dtype=np.uint32)
    if len(ids) < span:
        raise ParameterError(
            f"the calibration text ({', '.join(sources)}) has {len(ids)} tokens, fewer than the {span} "
            f"text tokens of one sample of {seq_len}"
        )
    rng = np.random.default_rng(seed)
    starts = _window_starts(len(ids), n_samples, span, rng)
    covered = int(np.minimum(np.diff(starts), span).sum()) + span
    overlap = 1.0 - covered / (n_samples * span)
    if overlap > MAX_QUIET_OVERLAP:
        warnings.warn(
            f"the calibration text has {len(ids)} tokens, fewer than the {n_samples} × {span} asked for: "
            f"{100 * overlap:.0f} % of the sampled tokens repeat others",
            LowbitWarning,
            stacklevel=2,
        )
    starts = starts[rng.permutation(n_samples)]
    tokens = ids[starts[:, None] + np.arange(span)]
    if bos_id is not None:
        tokens = np.concatenate([np.full((n_samples, 1), bos_id, dtype=np.uint32), tokens], axis=1)
    tokens.flags.writeable = starts.flags.writeable = False
    return CalibrationSet(
        tokens=tokens,
        starts=starts,
        text_sha256=text_sha256,
        tokens_sha256=hashlib.sha256(tokens.astype("<u4", copy=False).tobytes()).hexdigest(),
        sources=sources,
        n_text_tokens=len(ids),
        overlap=overlap,
        seed=seed,
        bos_id=bos_id,
    )
