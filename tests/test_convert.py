"""End to end: tiny synthetic HF checkpoints → `lowbit.convert` → LBF → load / export, and the
`lowbit convert` / `lowbit export` commands, bad inputs included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lowbit
from conftest import DEMO_GGUF
from lowbit import DestinationExistsError, InvalidValueError, LowbitWarning, ParameterError, UnsupportedError
from lowbit.cli import main as cli
from lowbit.conversion import RECIPES, convert, export_gguf, export_hf, format_plan
from synth import make_checkpoint

# Upper bounds of the relative RMSE of each stored type on Gaussian weights (measured values are
# well below: q4_k ≈ 0.07, q6_k ≈ 0.018, q8_0 ≈ 0.004, int4-g128 ≈ 0.09).
MAX_REL_RMSE = {"f32": 0.0, "f16": 1e-3, "q8_0": 0.01, "q6_k": 0.03, "q5_k": 0.05, "q5_0": 0.05, "q5_1": 0.05,
                "q4_k": 0.1, "q4_0": 0.12, "iq4_nl": 0.12, "int4-g128": 0.12, "q3_k": 0.2, "int3-g128": 0.25,
                "q2_k": 0.4}  # fmt: skip


def rel_rmse(x: np.ndarray, y: np.ndarray) -> float:
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    return float(np.linalg.norm(y64 - x64) / np.linalg.norm(x64))


def dense(t: object) -> np.ndarray:
    return lowbit.dequantize(t) if isinstance(t, lowbit.QTensor) else np.asarray(t, np.float32)


CASES = [
    dict(arch="llama", tied=False, dtype="F32", shards=1),
    dict(arch="llama", tied=True, dtype="BF16", shards=3),
    dict(arch="mistral", tied=False, dtype="F16", shards=2),
    dict(arch="qwen2", tied=True, dtype="BF16", shards=2),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
@pytest.mark.parametrize("recipe", ["q4_k_m", "int4-g128"])
def test_convert_end_to_end(tmp_path: Path, case: dict[str, Any], recipe: str) -> None:
    src = tmp_path / "hf"
    values = make_checkpoint(src, **case)
    out = tmp_path / "m.lbf"
    report = convert(src, out, recipe, progress=False)
    assert report.file_bytes == out.stat().st_size
    plan = {e.name: e for e in report.plan}
    assert list(plan) == sorted(values, key=list(plan).index) and set(plan) == set(values)
    with lowbit.load(out) as f:
        assert set(f) == set(values)
        f.verify()
        for name, x in values.items():
            info, e = f.info(name), plan[name]
            assert info.qtype == e.qtype and info.nbytes == e.nbytes and info.shape == x.shape
            t = f[name]
            if x.ndim == 1:
                assert isinstance(t, np.ndarray) and np.array_equal(t, x), name  # norms, biases exact
                continue
            assert isinstance(t, lowbit.QTensor)
            # the stored bytes are exactly what quantize gives for the source tensor
            assert np.array_equal(t.data, lowbit.quantize(x, e.qtype).data), name
            err = rel_rmse(x, lowbit.dequantize(t))
            assert err == pytest.approx(report.rel_rmse[name], rel=1e-5, abs=1e-9)
            assert err <= MAX_REL_RMSE[e.qtype], (name, e.qtype, err)
        cfg = json.loads(f.get_str("model.config"))
        assert cfg == json.loads((src / "config.json").read_text())
        assert f.get_str("tokenizer.json") == (src / "tokenizer.json").read_text()
        assert json.loads(f.get_str("model.generation_config")) == {"bos_token_id": 1, "eos_token_id": 2}
        assert json.loads(f.get_str("tokenizer.config"))["chat_template"] == "{{x}}"
        assert f.get_str("quantization.recipe") == recipe
        assert f.get_str("quantization.method") == "rtn"
        assert json.loads(f.get_str("quantization.source"))["kind"] == "hf"
    if case["tied"]:
        assert plan["model.embed_tokens.weight"].role == "output"
    if case["arch"] == "qwen2":
        assert plan["model.layers.1.self_attn.k_proj.bias"].qtype == "f32"


def test_dry_run_plans_exactly_what_the_real_run_writes(tmp_path: Path) -> None:
    src = tmp_path / "hf"
    make_checkpoint(src, hidden=192, ffn=384, tied=True)  # rows of 192: k-quants fall back
    dry = convert(src, tmp_path / "m.lbf", "q4_k_m", dry_run=True, progress=False)
    assert not (tmp_path / "m.lbf").exists() and not dry.rel_rmse
    real = convert(src, tmp_path / "m.lbf", "q4_k_m", progress=False)
    assert [(e.name, e.qtype, e.nbytes) for e in dry.plan] == [(e.name, e.qtype, e.nbytes) for e in real.plan]
    with lowbit.load(tmp_path / "m.lbf") as f:
        assert {t.name: t.nbytes for t in f.tensors} == {e.name: e.nbytes for e in dry.plan}
    # the estimate of the whole file is close (index and metadata are estimated)
    assert abs(dry.file_bytes - real.file_bytes) <= 0.02 * real.file_bytes
    ragged = [e for e in real.plan if e.fallback]
    assert ragged and all(e.qtype == e.requested + "r" for e in ragged)
    text = format_plan(real)
    assert "ragged" in text and "rel rmse" in text and "bpw" in text
    # The same plan for GGUF: llama.cpp's fallbacks, more bytes; the dry run says how many more.
    gg = convert(src, tmp_path / "g.lbf", "q4_k_m", progress=False, gguf_compatible=True)
    fb = [e for e in gg.plan if e.fallback]
    assert fb and all(e.requested in ("q4_k", "q6_k") and e.qtype in ("q5_0", "q8_0") for e in fb)
    assert gg.tensor_bytes == real.other_tensor_bytes > real.tensor_bytes == gg.other_tensor_bytes
    assert "with --gguf-compatible" in text and "fallback" in format_plan(gg)
    export_gguf(tmp_path / "g.lbf", tmp_path / "g.gguf")
    with pytest.raises(UnsupportedError, match="--gguf-compatible"):
        export_gguf(tmp_path / "m.lbf", tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_tensor_type_override_and_single_qtype(tmp_path: Path) -> None:
    src = tmp_path / "hf"
    make_checkpoint(src)
    r = convert(src, tmp_path / "a.lbf", "q8_0", tensor_types=[r"mlp\.down=q4_0", "attn_v=f16"], progress=False)
    with lowbit.load(tmp_path / "a.lbf") as f:
        assert f.info("model.layers.1.mlp.down_proj.weight").qtype == "q4_0"
        assert f.info("model.layers.0.self_attn.v_proj.weight").qtype == "f16"
        assert f.info("model.layers.0.self_attn.q_proj.weight").qtype == "q8_0"
    assert json.loads(json.dumps(r.to_json()))["tensors"][0]["qtype"] == "q8_0"


def test_unknown_architecture_converts_generically_with_a_warning(tmp_path: Path) -> None:
    src = tmp_path / "hf"
    make_checkpoint(src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = "mystery"
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.warns(LowbitWarning, match="mystery"):
        r = convert(src, tmp_path / "m.lbf", "q8_0", progress=False)
    assert {e.qtype for e in r.plan if len(e.shape) == 2} == {"q8_0"}


def test_export_hf_round_trip(tmp_path: Path) -> None:
    """LBF → HF checkpoint: the safetensors package reads exactly lowbit's dequantized values,
    config and tokenizer survive, and the exported checkpoint converts again."""
    from safetensors.numpy import load_file

    src = tmp_path / "hf"
    make_checkpoint(src, arch="qwen2", tied=True, dtype="BF16")
    convert(src, tmp_path / "m.lbf", "q4_k_m", progress=False)
    dst = export_hf(tmp_path / "m.lbf", tmp_path / "out", progress=False, shard_bytes=1 << 20)
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    loaded = {}
    for s in shards:
        loaded.update(load_file(dst / s))
    with lowbit.load(tmp_path / "m.lbf") as f:
        assert set(loaded) == set(f)
        for name in f:
            assert loaded[name].dtype == np.float32 and np.array_equal(loaded[name], dense(f[name])), name
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["model_type"] == "qwen2" and cfg["torch_dtype"] == "float32"
    assert (dst / "tokenizer.json").read_text() == (src / "tokenizer.json").read_text()
    again = convert(dst, tmp_path / "again.lbf", "q8_0", progress=False)
    assert len(again.plan) == len(loaded)
    with pytest.raises(DestinationExistsError):
        export_hf(tmp_path / "m.lbf", dst, progress=False)


# ---------------------------------------------------------------------------------------------
# Bad input


def test_destination_exists_or_is_an_input(tmp_path: Path) -> None:
    src = tmp_path / "hf"
    make_checkpoint(src)
    (tmp_path / "m.lbf").write_bytes(b"keep")
    with pytest.raises(DestinationExistsError):
        convert(src, tmp_path / "m.lbf", "q8_0", progress=False)
    assert (tmp_path / "m.lbf").read_bytes() == b"keep"
    shard = src / "model.safetensors"
    before = shard.read_bytes()
    with pytest.raises(ParameterError, match="input"):
        convert(src, shard, "q8_0", overwrite=True, progress=False)
    os.link(shard, tmp_path / "alias.lbf")  # the same file under another name
    with pytest.raises(ParameterError, match="input"):
        convert(src, tmp_path / "alias.lbf", "q8_0", overwrite=True, progress=False)
    assert shard.read_bytes() == before
    with pytest.raises(ParameterError, match="neither a recipe"):
        convert(src, tmp_path / "x.lbf", "q4_k_xl", progress=False)


def test_nan_weight_is_named_and_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "hf"
    values = make_checkpoint(src)
    from synth import write_safetensors

    values["model.layers.1.mlp.up_proj.weight"][3, 5] = np.nan
    write_safetensors(src / "model.safetensors", {k: ("F32", v) for k, v in values.items()})
    with pytest.raises(InvalidValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        convert(src, tmp_path / "m.lbf", "q4_k_m", progress=False)
    assert sorted(os.listdir(tmp_path)) == ["hf"]


def test_ctrl_c_mid_run_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lowbit.conversion.pipeline as conv

    src = tmp_path / "hf"
    make_checkpoint(src)
    (tmp_path / "m.lbf").write_bytes(b"old")
    calls = []
    real = lowbit.quantize

    def interrupt(x: np.ndarray, qtype: str, **kw: Any) -> lowbit.QTensor:
        calls.append(qtype)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(x, qtype, **kw)

    monkeypatch.setattr(conv, "quantize", interrupt)  # the name pipeline calls
    with pytest.raises(KeyboardInterrupt):
        convert(src, tmp_path / "m.lbf", "q4_k_m", overwrite=True, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["hf", "m.lbf"] and (tmp_path / "m.lbf").read_bytes() == b"old"


def test_disk_full_mid_run(tmp_path: Path) -> None:
    src = tmp_path / "hf"
    make_checkpoint(src)
    child = """
        import resource, signal, sys
        from lowbit.cli import main
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG instead of the signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
        sys.exit(main(["convert", sys.argv[1], "-o", sys.argv[2], "-t", "q8_0", "--no-progress"]))
    """
    out = tmp_path / "out"
    out.mkdir()
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(child), str(src), str(out / "m.lbf")],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "error" in r.stderr and "File too large" in r.stderr
    assert os.listdir(out) == []


# ---------------------------------------------------------------------------------------------
# The command line


def test_cli_convert_dry_run_real_run_json_and_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "hf"
    make_checkpoint(src, tied=True)
    assert cli(["convert", str(src), "--dry-run", "-t", "q4_k_m"]) == 0
    out = capsys.readouterr().out
    assert "model.layers.1.mlp.down_proj.weight" in out and "q6_k" in out and "rel rmse" not in out
    assert "estimated file size" in out
    assert cli(["convert", str(src), "-o", str(tmp_path / "m.lbf"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "rel rmse" in out and "MB/s" in out and "wrote" in out
    assert cli(["convert", str(src), "-o", str(tmp_path / "m.lbf"), "--no-progress"]) == 2
    assert "exists" in capsys.readouterr().err
    assert cli(["convert", str(src), "--dry-run", "--json", "-t", "int3-g128"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["dry_run"] and {t["qtype"] for t in doc["tensors"]} == {"f32", "q8_0", "int3-g128"}
    assert cli(["convert", "--list-recipes"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in RECIPES)
    assert cli(["export", str(tmp_path / "m.lbf"), "--to", "hf", str(tmp_path / "hf-out"), "--no-progress"]) == 0
    assert (tmp_path / "hf-out" / "config.json").exists()
    with pytest.raises(SystemExit) as e:
        cli(["convert", str(src)])  # neither -o nor --dry-run
    assert e.value.code == 2
    assert cli(["convert", str(tmp_path / "nowhere"), "--dry-run"]) == 2


# ---------------------------------------------------------------------------------------------
# The real model


@pytest.mark.slow
@pytest.mark.skipif(not DEMO_GGUF.exists(), reason="demo model not downloaded (make demo-data)")
def test_real_model_gguf_to_lbf_and_back(tmp_path: Path) -> None:
    """SmolLM2-135M: GGUF → LBF (q4_k_m) → GGUF; the gguf package dequantizes every tensor of the
    export to exactly what lowbit.load gives (q/k rows in llama.cpp's order)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize as gg_dequantize

    from lowbit.conversion import export_gguf, permute_qk

    r = convert(DEMO_GGUF, tmp_path / "m.lbf", "q4_k_m", progress=False, gguf_compatible=True)
    assert r.kind == "gguf" and len(r.plan) == 272
    assert 4.5 < r.bits_per_weight < 6.5
    export_gguf(tmp_path / "m.lbf", tmp_path / "m.gguf", progress=False)
    reader = GGUFReader(tmp_path / "m.gguf")
    cfg = json.loads(lowbit.load(tmp_path / "m.lbf").get_str("model.config"))
    gg = {t.name: t for t in reader.tensors}
    with lowbit.load(tmp_path / "m.lbf") as f:
        assert len(gg) == len(f)
        for name in f:
            ours = dense(f[name])
            if ".q_proj." in name:
                ours = permute_qk(ours, cfg["num_attention_heads"])
            elif ".k_proj." in name:
                ours = permute_qk(ours, cfg["num_key_value_heads"])
            gname = _gguf_name(name)
            t = gg[gname]
            theirs = gg_dequantize(t.data, t.tensor_type).reshape(ours.shape)
            assert np.array_equal(theirs, ours), name


def _gguf_name(hf: str) -> str:
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}  # fmt: skip
    if hf in fixed:
        return fixed[hf]
    parts = hf.split(".")
    block = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
             "post_attention_layernorm": "ffn_norm"}  # fmt: skip
    key = ".".join(parts[3:-1])
    return f"blk.{parts[2]}.{block[key]}.{parts[-1]}"
