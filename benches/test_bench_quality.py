"""The pure parts of `benches/quality_vs_llamacpp.py` on tiny inputs (no llama.cpp, no demo model):
the de-gridding noise and checkpoint writer, bits per weight of GGUF and LBF files, the table. Run with
`make bench`; with `--benchmark-disable` (the default in pyproject) each runs once as a plain test."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize as gguf_quantize
from safetensors.numpy import load_file, save_file

import lowbit
import quality_vs_llamacpp as rq


def on_q4_1_grid(shape: tuple[int, int], seed: int) -> npt.NDArray[np.float32]:
    """Random weights snapped to q4_1's grid (as the demo model's are)."""
    w = np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 0.05
    return lowbit.dequantize(lowbit.quantize(w, "q4_1"))


def rel_err(w: npt.NDArray[np.float32], qtype: str) -> float:
    return float(np.linalg.norm(lowbit.dequantize(lowbit.quantize(w, qtype)) - w) / np.linalg.norm(w))


def test_degrid_moves_weights_off_the_grid(benchmark: Any) -> None:
    w = on_q4_1_grid((64, 256), 0)
    out = benchmark(lambda: rq.degrid(w, np.random.default_rng(7)))
    assert out.dtype == np.float32 and out.shape == w.shape
    assert rel_err(w, "q4_1") < 1e-3  # on the grid: re-quantizing is (nearly) lossless
    assert rel_err(out, "q4_1") > 20 * rel_err(w, "q4_1")
    np.testing.assert_array_equal(out, rq.degrid(w, np.random.default_rng(7)))
    assert not np.array_equal(out, rq.degrid(w, np.random.default_rng(8)))


def test_degrid_noise_is_at_most_half_a_q4_1_step_per_group(benchmark: Any) -> None:
    w = np.random.default_rng(1).standard_normal((5, 80)).astype(np.float32)  # groups of 32, 32 and a tail of 16
    out = benchmark(lambda: rq.degrid(w, np.random.default_rng(2)))
    noise = out.astype(np.float64) - w
    for r in range(w.shape[0]):
        for c0 in range(0, 80, 32):
            g = w[r, c0 : c0 + 32].astype(np.float64)
            step = (g.max() - g.min()) / 15
            n = noise[r, c0 : c0 + 32]
            assert np.all(np.abs(n) <= 0.5 * step * (1 + 1e-5) + 1e-6), (r, c0)
            assert np.abs(n).max() > 0.2 * step, (r, c0)  # uniform noise uses most of its range
    with pytest.raises(ValueError):
        rq.degrid(w[0], np.random.default_rng(0))


def make_hf(d: Path) -> dict[str, npt.NDArray[np.float32]]:
    d.mkdir()
    t = {"model.layers.0.mlp.up_proj.weight": on_q4_1_grid((16, 64), 3),
         "model.embed_tokens.weight": on_q4_1_grid((32, 64), 4),
         "model.norm.weight": np.linspace(0.5, 1.5, 64, dtype=np.float32)}  # fmt: skip
    save_file(dict(list(t.items())[:2]), str(d / "model-00001-of-00002.safetensors"))
    save_file(dict(list(t.items())[2:]), str(d / "model-00002-of-00002.safetensors"))
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    (d / "tokenizer.json").write_text('{"model": {}}')
    return t


def test_degrid_checkpoint(benchmark: Any, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "out" / "dst"
    t = make_hf(src)

    def setup() -> tuple[tuple[Path, Path, int], dict[str, Any]]:
        if dst.exists():
            for f in dst.iterdir():
                f.unlink()
            dst.rmdir()
        return (src, dst, 5), {}

    counts = benchmark.pedantic(rq.degrid_checkpoint, setup=setup, rounds=2)
    assert counts == {"degridded": 2, "unchanged": 1}
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert [p.name for p in dst.parent.iterdir()] == ["dst"]  # no temporary dir left
    assert (dst / "config.json").read_text() == (src / "config.json").read_text()
    got = load_file(str(dst / "model.safetensors"))
    assert set(got) == set(t)
    np.testing.assert_array_equal(got["model.norm.weight"], t["model.norm.weight"])
    for name in ("model.layers.0.mlp.up_proj.weight", "model.embed_tokens.weight"):
        assert got[name].dtype == np.float32 and not np.array_equal(got[name], t[name])
        np.testing.assert_array_equal(got[name], rq.degrid(t[name], rq.tensor_rng(5, name)))
    assert not np.array_equal(rq.degrid(t["model.embed_tokens.weight"], rq.tensor_rng(5, "a")),
                              rq.degrid(t["model.embed_tokens.weight"], rq.tensor_rng(5, "b")))  # fmt: skip


def test_sizes_agree_for_gguf_and_lbf(benchmark: Any, tmp_path: Path) -> None:
    r = np.random.default_rng(0)
    w, e, norm = (r.standard_normal(s).astype(np.float32) for s in ((48, 64), (16, 256), (64,)))
    qe = lowbit.quantize(e, "q4_k")  # ggml's q4_k bytes (gguf-py has no q4_k quantizer)
    lowbit.save(tmp_path / "m.lbf", {"w": lowbit.quantize(w, "q8_0"), "e": qe, "n": norm})
    g = GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    g.add_tensor("w", gguf_quantize(w, GGMLQuantizationType.Q8_0), raw_dtype=GGMLQuantizationType.Q8_0)
    g.add_tensor("e", np.asarray(qe.data), raw_dtype=GGMLQuantizationType.Q4_K)
    g.add_tensor("n", norm)
    g.write_header_to_file()
    g.write_kv_data_to_file()
    g.write_tensors_to_file()
    g.close()
    # q8_0: 34 bytes per 32 values; q4_k: 144 bytes per 256; f32: 4 bytes per value
    b2d = 48 * 64 // 32 * 34 + 16 * 144
    expect = rq.Sizes(b2d + 64 * 4, 48 * 64 + 16 * 256 + 64, b2d, 48 * 64 + 16 * 256, {"f32": 1, "q4_k": 1, "q8_0": 1})
    lbf = benchmark(rq.sizes, tmp_path / "m.lbf")
    assert lbf == expect
    assert rq.sizes(tmp_path / "m.gguf") == expect
    assert lbf.bpw_2d == pytest.approx(8 * b2d / (48 * 64 + 16 * 256)) and lbf.bpw > lbf.bpw_2d


def test_markdown(benchmark: Any) -> None:
    rows = [rq.Row("q4_k_m", "llama.cpp", "a.gguf", 5.5, 5.25, {}, 30.5, 30.0, 0.04, 0.3, 0.875),
            rq.Row("q4_k_m", "lowbit", "b.lbf", 4.9, 4.75, {}, 29.9, 30.0, 0.02, 0.2, 0.9, 0.025)]  # fmt: skip
    out = benchmark(rq.markdown, rows, 30.0).splitlines()
    assert len(out) == 4 and "f32 30.000" in out[0]
    assert all(line.count("|") == out[0].count("|") for line in out)
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in out[2:]]
    assert cells[0][:2] == ["q4_k_m", "llama.cpp"] and cells[0][5] == "+0.500" and cells[0][-1] == "—"
    assert cells[1][5] == "-0.100" and cells[1][8] == "90.0 %" and cells[1][-1] == "0.02500"


def test_llama_quantize_failure_leaves_nothing(benchmark: Any, tmp_path: Path) -> None:
    out = tmp_path / "q.gguf"
    # this Python either lacks llama_cpp or fails on the missing input: the child reports an error either way
    with pytest.raises(RuntimeError, match="llama_model_quantize q4_k_m failed"):
        benchmark.pedantic(rq.llama_quantize, args=(sys.executable, tmp_path / "missing.gguf", out, "q4_k_m"), rounds=1)
    assert list(tmp_path.iterdir()) == []


def test_llama_imatrix_failure_leaves_nothing(benchmark: Any, tmp_path: Path) -> None:
    out = tmp_path / "q-imatrix.gguf"
    # missing inputs (and, in this Python, maybe no ggml): the child reports an error either way
    args = (sys.executable, tmp_path / "base.gguf", tmp_path / "plain.gguf", tmp_path / "im.gguf", out)
    with pytest.raises(RuntimeError, match=r"ggml_quantize_chunk with im\.gguf failed"):
        benchmark.pedantic(rq.llama_imatrix, args=args, rounds=1)
    assert list(tmp_path.iterdir()) == []
