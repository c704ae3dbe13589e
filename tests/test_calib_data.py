"""Calibration data (`lowbit.calib.data`): windows of the model's tokens drawn from text files or
the shipped default text. Most tests use a word-level tokenizer built here over the words w0, w1, ...
so that word i is token i: a text "w0 w1 ... w{N-1}" then tokenizes to 0..N-1 and every window
shows where in the text it was taken from, independently of the code under test."""

from __future__ import annotations

import hashlib
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

import synth
from lowbit.calib.data import DEFAULT_SOURCE, DEFAULT_TEXT, MAX_QUIET_OVERLAP, calibration_tokens, load_texts
from lowbit.errors import LowbitWarning, ParameterError

VOCAB = 5000
BOS = VOCAB  # the id of "<s>", after the words


def word_tokenizer() -> Tokenizer:
    vocab = {f"w{i}": i for i in range(VOCAB)} | {"<s>": BOS, "[UNK]": BOS + 1}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


def words(lo: int, hi: int) -> str:
    """Words lo..hi-1, ten to a line."""
    w = [f"w{i}" for i in range(lo, hi)]
    return "\n".join(" ".join(w[i : i + 10]) for i in range(0, len(w), 10)) + "\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def text1000(tmp_path: Path) -> Path:
    return write(tmp_path / "words.txt", words(0, 1000))


def check_windows(tokens: np.ndarray[Any, Any], starts: np.ndarray[Any, Any], span: int, n_tokens: int) -> None:
    """Each row is the text tokens starts[i] .. starts[i] + span - 1, all inside the text."""
    assert tokens.shape == (len(starts), span)
    np.testing.assert_array_equal(tokens, starts[:, None] + np.arange(span))
    assert starts.min() >= 0 and starts.max() + span <= n_tokens


def test_shapes_and_disjoint_contiguous_windows(text1000: Path) -> None:
    cs = calibration_tokens(word_tokenizer(), files=[text1000], n_samples=8, seq_len=50, seed=3)
    assert cs.tokens.dtype == np.uint32 and cs.tokens.shape == (8, 50)
    assert (cs.n_samples, cs.seq_len, cs.n_text_tokens, cs.overlap) == (8, 50, 1000, 0.0)
    starts = cs.tokens[:, 0].astype(np.int64)
    np.testing.assert_array_equal(starts, cs.starts)
    check_windows(cs.tokens, starts, 50, 1000)
    assert np.diff(np.sort(starts)).min() >= 50  # no two windows share a token
    assert not np.all(np.diff(starts) > 0)  # shuffled: 8 random places come out sorted with odds 1/40320
    assert not cs.tokens.flags.writeable and not cs.starts.flags.writeable


def test_reproducible_and_seeded(text1000: Path) -> None:
    tok = word_tokenizer()
    a = calibration_tokens(tok, files=[text1000], n_samples=6, seq_len=40, seed=7)
    b = calibration_tokens(tok, files=[text1000], n_samples=6, seq_len=40, seed=7)
    c = calibration_tokens(tok, files=[text1000], n_samples=6, seq_len=40, seed=8)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert a.tokens_sha256 == b.tokens_sha256 == hashlib.sha256(a.tokens.astype("<u4").tobytes()).hexdigest()
    assert not np.array_equal(a.tokens, c.tokens) and a.tokens_sha256 != c.tokens_sha256
    assert set(a.starts.tolist()) != set(c.starts.tolist())  # the seed moves the windows, not only their order
    assert a.text_sha256 == c.text_sha256 == hashlib.sha256(text1000.read_bytes()).hexdigest()


def test_exact_fit_tiles_the_text(text1000: Path) -> None:
    cs = calibration_tokens(word_tokenizer(), files=[text1000], n_samples=10, seq_len=100, seed=1)
    np.testing.assert_array_equal(np.sort(cs.tokens, axis=None), np.arange(1000))
    assert cs.overlap == 0.0


def test_bpe_windows_are_slices_of_the_whole_tokenization(tmp_path: Path) -> None:
    tok = synth.train_bpe([synth.TEXT])
    path = write(tmp_path / "t.txt", "\n".join(f"{i}. {synth.TEXT}" for i in range(40)))
    ids = np.asarray(tok.encode(path.read_text(), add_special_tokens=False).ids)
    cs = calibration_tokens(tok, files=[path], n_samples=5, seq_len=64, seed=0)
    assert cs.n_text_tokens == len(ids) > 5 * 64
    for row, s in zip(cs.tokens, cs.starts, strict=True):
        np.testing.assert_array_equal(row, ids[s : s + 64])


def test_bos(text1000: Path) -> None:
    cs = calibration_tokens(word_tokenizer(), files=[text1000], n_samples=4, seq_len=33, seed=2, bos_id=BOS)
    assert cs.tokens.shape == (4, 33) and cs.bos_id == BOS
    assert np.all(cs.tokens[:, 0] == BOS)
    check_windows(cs.tokens[:, 1:], cs.starts, 32, 1000)
    one = calibration_tokens(word_tokenizer(), files=[text1000], n_samples=1, seq_len=2, bos_id=0)
    assert one.tokens.shape == (1, 2) and one.tokens[0, 0] == 0 and one.tokens[0, 1] == one.starts[0]


def test_short_text_overlaps_and_covers_everything(tmp_path: Path) -> None:
    path = write(tmp_path / "short.txt", words(0, 300))
    cs = calibration_tokens(word_tokenizer(), files=[path], n_samples=4, seq_len=100)  # no warning: 25 % overlap
    check_windows(cs.tokens, cs.starts, 100, 300)
    assert set(cs.tokens.ravel().tolist()) == set(range(300))
    assert cs.overlap == pytest.approx(1 - 300 / 400)


def test_large_overlap_warns(tmp_path: Path) -> None:
    path = write(tmp_path / "short.txt", words(0, 150))
    with pytest.warns(LowbitWarning, match="150 tokens"):
        cs = calibration_tokens(word_tokenizer(), files=[path], n_samples=4, seq_len=100)
    assert cs.overlap == pytest.approx(1 - 150 / 400) and cs.overlap > MAX_QUIET_OVERLAP
    check_windows(cs.tokens, cs.starts, 100, 150)


def test_several_files_join_with_a_blank_line(tmp_path: Path) -> None:
    a = write(tmp_path / "a.txt", words(0, 600))
    b = write(tmp_path / "b.txt", words(600, 1000))
    text, sha, sources = load_texts([a, str(b)])
    assert text == a.read_text() + "\n\n" + b.read_text()
    assert sha == hashlib.sha256(text.encode()).hexdigest() and sources == [str(a), str(b)]
    cs = calibration_tokens(word_tokenizer(), files=[a, b], n_samples=10, seq_len=100)
    assert cs.n_text_tokens == 1000 and cs.sources == sources
    np.testing.assert_array_equal(np.sort(cs.tokens, axis=None), np.arange(1000))


def test_one_path_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbf" + "caf\u00e9 w1\n".encode())
    text, sha, sources = load_texts(path)
    assert text == "caf\u00e9 w1\n" and sources == [str(path)]
    assert sha == hashlib.sha256("caf\u00e9 w1\n".encode()).hexdigest()


def test_default_text_ships_in_the_package() -> None:
    res = resources.files("lowbit.calib").joinpath("texts").joinpath(DEFAULT_TEXT)
    raw = res.read_bytes()
    readme = resources.files("lowbit.calib").joinpath("texts").joinpath("README.md").read_text(encoding="utf-8")
    m = re.search(r"SHA-256 of `persuasion.txt`.*?`([0-9a-f]{64})`", readme, re.S)
    assert m is not None
    assert 400_000 < len(raw) <= 1_000_000
    text, sha, sources = load_texts(None)
    assert sha == hashlib.sha256(raw).hexdigest() == m.group(1)
    assert sources == [DEFAULT_SOURCE] and text.startswith("Persuasion") and "Anne Elliot" in text
    tok = synth.train_bpe([synth.TEXT])
    cs = calibration_tokens(tok, n_samples=16, seq_len=256, seed=5)
    assert cs.text_sha256 == m.group(1) and cs.sources == [DEFAULT_SOURCE] and cs.overlap == 0.0
    ids = np.asarray(tok.encode(text, add_special_tokens=False).ids)
    np.testing.assert_array_equal(cs.tokens[3], ids[cs.starts[3] : cs.starts[3] + 256])


def test_tokenizer_json_text_and_own_truncation_ignored(text1000: Path) -> None:
    tok = word_tokenizer()
    ref = calibration_tokens(tok, files=[text1000], n_samples=3, seq_len=20, seed=4)
    from_json = calibration_tokens(tok.to_str(), files=[text1000], n_samples=3, seq_len=20, seed=4)
    np.testing.assert_array_equal(ref.tokens, from_json.tokens)
    tok.enable_truncation(max_length=16)
    tok.enable_padding(length=16)
    truncated = calibration_tokens(tok, files=[text1000], n_samples=3, seq_len=20, seed=4)
    assert truncated.n_text_tokens == 1000
    np.testing.assert_array_equal(ref.tokens, truncated.tokens)
    assert tok.truncation is not None and tok.truncation["max_length"] == 16  # the caller's setting stays


def test_provenance(text1000: Path) -> None:
    cs = calibration_tokens(word_tokenizer(), files=[text1000], n_samples=2, seq_len=10, seed=2**64 - 1)
    assert cs.provenance() == {"quantization.calib_sha256": cs.text_sha256, "quantization.seed": 2**64 - 1}
    d = json.loads(json.dumps(cs.to_json()))
    assert d["tokens_sha256"] == cs.tokens_sha256 and d["sources"] == [str(text1000)]
    assert (d["n_samples"], d["seq_len"], d["n_text_tokens"], d["bos_id"], d["overlap"]) == (2, 10, 1000, None, 0.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_samples": 0}, "n_samples"),
        ({"n_samples": -1}, "n_samples"),
        ({"seq_len": 0}, "seq_len"),
        ({"seq_len": -5}, "seq_len"),
        ({"seq_len": 1, "bos_id": BOS}, "seq_len must be at least 2"),
        ({"bos_id": BOS + 2}, "bos_id"),
        ({"bos_id": -1}, "bos_id"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"seq_len": 1001}, "has 1000 tokens"),
        ({"seq_len": 1002, "bos_id": BOS}, "has 1000 tokens"),
    ],
)
def test_bad_parameters(text1000: Path, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        calibration_tokens(word_tokenizer(), files=[text1000], **{"n_samples": 1, "seq_len": 10, **kwargs})


def test_bad_texts(tmp_path: Path, text1000: Path) -> None:
    tok = word_tokenizer()
    with pytest.raises(FileNotFoundError, match=r"missing\.txt"):
        calibration_tokens(tok, files=[text1000, tmp_path / "missing.txt"])
    with pytest.raises(IsADirectoryError):
        load_texts([tmp_path])
    with pytest.raises(ParameterError, match="is empty"):
        load_texts([write(tmp_path / "empty.txt", "")])
    with pytest.raises(ParameterError, match="holds no text"):
        load_texts([text1000, write(tmp_path / "blank.txt", " \n\n\t\n")])
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("w1 w2 caf\u00e9 w3".encode("latin-1"))
    with pytest.raises(ParameterError, match=r"latin1.txt is not UTF-8 .*0xe9 at offset 9"):
        load_texts([latin1])
    with pytest.raises(ParameterError, match="no calibration files"):
        load_texts([])
    with pytest.raises(ParameterError, match=r"tokenizer\.json"):
        calibration_tokens("{not json", files=[text1000], n_samples=1, seq_len=10)
