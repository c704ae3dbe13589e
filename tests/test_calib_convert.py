"""Calibrated conversion end to end on tiny synthetic models: importance statistics (`lowbit imatrix`,
`convert --imatrix`) and sequential GPTQ (`convert --method gptq`): results, provenance, the
checkpoint and `--resume`, the CLI, and bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lowbit
import synth
from lowbit.algos import sequential
from lowbit.algos.sequential import GPTQConfig
from lowbit.calib.capture import collect, embed, layer_weights
from lowbit.calib.data import calibration_tokens
from lowbit.calib.imatrix import Imatrix, compute_imatrix, load_imatrix, save_imatrix
from lowbit.cli import main
from lowbit.conversion.hf_source import resolve_source
from lowbit.errors import FormatError, ParameterError, UnsupportedError

CAL: dict[str, Any] = {"calib_samples": 4, "calib_seq_len": 32}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("calib") / "m"
    synth.make_checkpoint(d, n_layers=2, hidden=128, ffn=256, heads=4, kv_heads=2)
    return d


def test_imatrix_is_the_mean_square_of_each_linears_input(model: Path, tmp_path: Path) -> None:
    im = compute_imatrix(model, n_samples=4, seq_len=32, progress=False)
    # independently: the calibration tokens through layer 0 with numpy's view of the taps
    with resolve_source(model) as src:
        t = {x.name: x for x in src.tensors}
        cal = calibration_tokens(src.tokenizer_json or "", n_samples=4, seq_len=32)
        x = embed(t, cal.tokens)
        _, stats = collect(src.config, layer_weights(t, 0), x, 32)
    q = im.importance("model.layers.0.self_attn.q_proj.weight")
    assert q is not None
    np.testing.assert_allclose(q, stats.importance("attn_in"), rtol=1e-6)
    np.testing.assert_array_equal(q, im.importance("model.layers.0.self_attn.v_proj.weight"))
    assert im.tokens["model.layers.1.mlp.down_proj.weight"] == 128
    assert im.importance("model.layers.1.mlp.down_proj.weight").shape == (256,)  # type: ignore[union-attr]
    assert "lm_head.weight" in im.sum_sq and im.importance("model.embed_tokens.weight") is None
    save_imatrix(im, tmp_path / "i.gguf")
    back = load_imatrix(tmp_path / "i.gguf")
    assert set(back.sum_sq) == set(im.sum_sq) and back.tokens == im.tokens and back.chunk_size == 32
    for k, v in im.sum_sq.items():
        np.testing.assert_allclose(back.sum_sq[k], v, rtol=1e-6)
    assert back.calib_sha256 == im.calib_sha256 and back.calib_sha256 is not None
    with pytest.raises(lowbit.DestinationExistsError):
        save_imatrix(im, tmp_path / "i.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.gguf"]  # no temporary left behind


def test_convert_weights_the_scale_search_by_the_imatrix(model: Path, tmp_path: Path) -> None:
    # an importance vector that cares only about the first 16 input columns: their error must drop
    name = "model.layers.0.mlp.gate_proj.weight"
    imp = np.full(128, 1e-6)
    imp[:16] = 1.0
    prov = {"text_sha256": "ab" * 32, "seed": 3}
    im = Imatrix(sum_sq={name: imp}, tokens={name: 1}, chunk_size=1, provenance=prov)
    lowbit.convert(model, tmp_path / "a.lbf", "q4_k", progress=False)
    lowbit.convert(model, tmp_path / "b.lbf", "q4_k", imatrix=im, progress=False)
    with resolve_source(model) as src:
        w = next(t for t in src.tensors if t.name == name).load().reshape(256, 128)
    with lowbit.load(tmp_path / "a.lbf") as a, lowbit.load(tmp_path / "b.lbf") as b:
        qa, qb = a[name], b[name]
        assert isinstance(qa, lowbit.QTensor) and isinstance(qb, lowbit.QTensor)
        ea = np.square(lowbit.dequantize(qa) - w)[:, :16].mean()
        eb = np.square(lowbit.dequantize(qb) - w)[:, :16].mean()
        assert eb < 0.9 * ea  # measured 0.79×
        assert b.metadata["quantization.calib_sha256"] == "ab" * 32
        assert b.metadata_types["quantization.seed"] == "u64"
        other = "model.layers.1.mlp.gate_proj.weight"  # not in the imatrix: plain round-to-nearest
        assert np.array_equal(a.parts(other)["data"], b.parts(other)["data"])


def _tensors(path: Path) -> dict[str, bytes]:
    with lowbit.load(path) as f:
        return {n: b"".join(bytes(v) for v in f.parts(n).values()) for n in f}


def test_gptq_convert_beats_rtn_and_round_trips_act_order(model: Path, tmp_path: Path) -> None:
    cfg = GPTQConfig(act_order=True)
    r = lowbit.convert(model, tmp_path / "g.lbf", "int4-g128", method="gptq", gptq=cfg, progress=False, **CAL)
    assert len(r.linears) == 14
    with lowbit.load(tmp_path / "g.lbf") as f:
        assert r.tensor_bytes == sum(t.nbytes for t in f.tensors)  # the permutations are counted
    for name, rep in r.linears.items():
        assert rep.method == "gptq" and rep.qtype == "int4-g128"
        assert rep.error < rep.rtn_error, name
    assert not (tmp_path / "g.lbf.ckpt").exists()  # the checkpoint is removed after success
    with lowbit.load(tmp_path / "g.lbf") as f:
        assert f.metadata["quantization.method"] == "gptq"
        params = json.loads(f.metadata["quantization.params"])
        assert params["gptq"]["act_order"] is True and params["calibration"]["n_samples"] == 4
        q = f["model.layers.1.mlp.down_proj.weight"]
        assert isinstance(q, lowbit.QTensor) and q.perm is not None
        x = np.random.default_rng(0).standard_normal((3, 256)).astype(np.float32)
        np.testing.assert_allclose(lowbit.matmul_reference(x, q), x @ lowbit.dequantize(q).T, rtol=1e-4, atol=1e-4)
    # the engine runs the act-order file
    with lowbit.Model.load(tmp_path / "g.lbf") as m:
        assert np.isfinite(m.logits([1, 2, 3, 4])).all()
    js = r.to_json()
    assert js["linears"]["model.layers.0.self_attn.q_proj.weight"]["damp"] == pytest.approx(0.01)


def test_gptq_on_a_k_quant_recipe_stays_exportable_to_gguf(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "k.lbf"
    r = lowbit.convert(model, out, "q4_k_m", method="gptq", gguf_compatible=True, progress=False, **CAL)
    types = {rep.qtype for rep in r.linears.values()}
    assert "q4_k" in types or "q6_k" in types  # ffn_down (256 columns) keeps a k-quant
    for name, rep in r.linears.items():
        assert rep.method == "gptq" and rep.error < rep.rtn_error, name
    lowbit.export_gguf(out, tmp_path / "k.gguf", progress=False)
    assert (tmp_path / "k.gguf").stat().st_size > 0


def test_gptq_resume_after_an_interruption_gives_the_same_file(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kw: dict[str, Any] = dict(method="gptq", gptq=GPTQConfig(), progress=False, **CAL)
    lowbit.convert(model, tmp_path / "whole.lbf", "int3-g128", **kw)
    calls = {"n": 0}
    real = collect  # what sequential calls

    def flaky(*a: Any, **k: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:  # layer 1's first pass: layer 0 is committed
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(sequential, "collect", flaky)
    out = tmp_path / "resumed.lbf"
    with pytest.raises(KeyboardInterrupt):
        lowbit.convert(model, out, "int3-g128", **kw)
    assert not out.exists()
    state = json.loads((tmp_path / "resumed.lbf.ckpt" / "state.json").read_text())
    assert state["layers_done"] == 1
    monkeypatch.setattr(sequential, "collect", real)
    with pytest.raises(ParameterError, match="resume"):
        lowbit.convert(model, out, "int3-g128", **kw)
    with pytest.raises(ParameterError, match="different run"):
        lowbit.convert(model, out, "int3-g128", resume=True, **{**kw, "seed": 1})
    lowbit.convert(model, out, "int3-g128", resume=True, **kw)
    assert _tensors(out) == _tensors(tmp_path / "whole.lbf")
    assert not (tmp_path / "resumed.lbf.ckpt").exists()


def test_gptq_killed_between_the_next_input_and_the_commit_resumes_exactly(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kw: dict[str, Any] = dict(method="gptq", gptq=GPTQConfig(), progress=False, **CAL)
    lowbit.convert(model, tmp_path / "whole.lbf", "q4_k", **kw)
    real = sequential.write_json
    states = {"n": 0}

    def crash(path: Path, obj: Any) -> None:
        if path.name == "state.json":
            states["n"] += 1
            if states["n"] == 2:  # layer 1 is written, its output too, but not committed
                raise KeyboardInterrupt
        real(path, obj)

    monkeypatch.setattr(sequential, "write_json", crash)
    out = tmp_path / "r.lbf"
    with pytest.raises(KeyboardInterrupt):
        lowbit.convert(model, out, "q4_k", **kw)
    assert (tmp_path / "r.lbf.ckpt" / "x_2.npy").exists()
    monkeypatch.setattr(sequential, "write_json", real)
    lowbit.convert(model, out, "q4_k", resume=True, **kw)
    assert _tensors(out) == _tensors(tmp_path / "whole.lbf")


def test_cli_imatrix_then_convert(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    calib = tmp_path / "calib.txt"
    calib.write_text(synth.TEXT * 40)
    args = ["--calib", str(calib), "--calib-samples", "2", "--calib-seq-len", "16", "--no-progress"]
    assert main(["imatrix", str(model), "-o", str(tmp_path / "i.gguf"), *args]) == 0
    assert "15 weights" in capsys.readouterr().out
    out = tmp_path / "m.lbf"
    assert main(["convert", str(model), "-o", str(out), "-t", "q4_k", "--imatrix", str(tmp_path / "i.gguf")]) == 0
    rc = main(["convert", str(model), "-o", str(tmp_path / "g.lbf"), "-t", "int4-g64", "--method", "gptq", *args])
    assert rc == 0
    assert "gptq: 14 linears" in capsys.readouterr().out
    with lowbit.load(out) as f:
        sha = f.metadata["quantization.calib_sha256"]
    import hashlib

    assert sha == hashlib.sha256(calib.read_bytes()).hexdigest()


def test_bad_input(model: Path, tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="imatrix"):
        lowbit.convert(model, tmp_path / "x.lbf", "int4-g128", method="gptq", imatrix="auto", progress=False)
    with pytest.raises(ParameterError, match="method"):
        lowbit.convert(model, tmp_path / "x.lbf", "int4-g128", method="bogus", progress=False)
    short = tmp_path / "short.txt"
    short.write_text("a few words only")
    with pytest.raises(ParameterError, match="tokens"):
        lowbit.convert(model, tmp_path / "x.lbf", "int4-g128", method="gptq", calib=[short], progress=False)
    assert not (tmp_path / "x.lbf").exists()
    not_gguf = tmp_path / "bad.gguf"
    not_gguf.write_bytes(b"GGUF" + b"\0" * 20)
    with pytest.raises(FormatError):
        load_imatrix(not_gguf)
    other = tmp_path / "other"
    synth.make_checkpoint(other, n_layers=1, hidden=64, ffn=128)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.warns(lowbit.LowbitWarning), pytest.raises(UnsupportedError, match="gpt2"):
        lowbit.convert(other, tmp_path / "y.lbf", "int4-g128", method="gptq", progress=False)
    with pytest.raises(UnsupportedError, match="gpt2"):
        compute_imatrix(other, progress=False)
