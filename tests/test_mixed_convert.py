"""`convert --target-bpw` (issue 8): the measured allocation drives the plan, the file keeps the
budget, every method takes it, and its bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lowbit
import synth
from lowbit.errors import LowbitWarning, ParameterError

CAL: dict[str, Any] = {"calib_samples": 4, "calib_seq_len": 32, "progress": False}
DEFAULT_TEXT = pytest.warns(LowbitWarning, match="packaged default text")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("mixed") / "m"
    synth.make_checkpoint(d, n_layers=2, hidden=256, ffn=512, heads=4, kv_heads=2)
    return d


def test_target_bpw_plans_within_the_budget_and_records_why(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.lbf"
    with DEFAULT_TEXT:
        r = lowbit.convert(model, out, "q4_k_m", target_bpw=4.0, **CAL)
    assert r.bits_per_weight <= 4.0 and r.mixed is not None
    mats = [e for e in r.plan if len(e.shape) == 2]
    assert all(e.reason == "--target-bpw 4" and e.predicted is not None for e in mats)
    assert len({e.qtype for e in mats}) > 1  # a mix, not one type
    with lowbit.load(out) as f:
        params = json.loads(f.metadata["quantization.params"])
        assert params["mixed"]["target_bpw"] == 4.0 and "calibration" in params
        for e in mats:
            assert f.info(e.name).qtype == e.qtype and f.info(e.name).nbytes == e.nbytes
        got = 8 * sum(i.nbytes for i in f.tensors) / sum(int(np.prod(i.shape)) for i in f.tensors)
    assert got == pytest.approx(r.bits_per_weight) and got <= 4.0
    # more bits, less predicted loss
    with DEFAULT_TEXT:
        richer = lowbit.convert(model, None, "q4_k_m", target_bpw=6.0, dry_run=True, **CAL)
    assert richer.mixed is not None and richer.mixed["predicted_kld"] < r.mixed["predicted_kld"]
    assert "predicted ΔKLD" in lowbit.conversion.format_plan(richer)


@pytest.mark.parametrize("method", ["gptq", "awq", "imatrix"])
def test_target_bpw_with_calibrated_methods(model: Path, tmp_path: Path, method: str) -> None:
    kw: dict[str, Any] = {"imatrix": "auto"} if method == "imatrix" else {"method": method}
    with DEFAULT_TEXT:
        r = lowbit.convert(model, tmp_path / "m.lbf", "q4_k_m", target_bpw=4.5, **kw, **CAL)
    assert r.bits_per_weight <= 4.5
    with lowbit.load(tmp_path / "m.lbf") as f:
        params = json.loads(f.metadata["quantization.params"])
    assert params["mixed"]["target_bpw"] == 4.5


def test_target_bpw_with_outliers_keeps_the_budget(model: Path, tmp_path: Path) -> None:
    with DEFAULT_TEXT:
        r = lowbit.convert(model, tmp_path / "m.lbf", "q4_k_m", target_bpw=4.2, outliers="0.5%", **CAL)
    assert r.bits_per_weight <= 4.2 and all(
        bool(e.outliers) == (".layers." in e.name and len(e.shape) == 2) for e in r.plan
    )


def test_target_bpw_bad_input(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.lbf"
    for bad in (1.0, 20.0, float("nan")):
        with DEFAULT_TEXT, pytest.raises(ParameterError, match=r"outside the feasible \d+\.\d+ … \d+\.\d+ bpw"):
            lowbit.convert(model, out, "q4_k_m", target_bpw=bad, **CAL)
    # checked before the (long) measurement: a sensitivity run that raised here would be wrong
    with DEFAULT_TEXT, pytest.raises(ParameterError, match="feasible"):
        lowbit.convert(model, out, "q4_k_m", target_bpw=1.0, sensitivity=tmp_path / "s.json", **CAL)
    assert not (tmp_path / "s.json").exists()
    assert not out.exists()
    with DEFAULT_TEXT, pytest.raises(lowbit.QTypeError, match="no-such-type"):
        lowbit.convert(model, out, "q4_k_m", target_bpw=4.0, candidates=["q4_k", "no-such-type"], **CAL)


def test_a_row_length_a_candidate_does_not_fit_is_skipped_and_reported(tmp_path: Path) -> None:
    src = tmp_path / "odd"
    synth.make_checkpoint(src, n_layers=1, hidden=96, ffn=160, heads=4, kv_heads=2)  # rows of 96 and 160
    with DEFAULT_TEXT:
        r = lowbit.convert(
            src, None, "q4_k_m", target_bpw=5.5, candidates=["q4_0", "q4_k", "q5_0", "q6_k", "q8_0"], dry_run=True,
            gguf_compatible=True, **CAL,
        )  # fmt: skip
    assert r.mixed is not None and r.bits_per_weight <= 5.5
    skipped = r.mixed["skipped"]
    mats = [e for e in r.plan if len(e.shape) == 2]
    # k-quants need rows that are a multiple of 256 in a GGUF-compatible file: skipped, with the reason
    assert set(skipped) == {e.name for e in mats} and all(set(s) == {"q4_k", "q6_k"} for s in skipped.values())
    assert all("256" in why for s in skipped.values() for why in s.values())
    assert {e.qtype for e in mats} <= {"q4_0", "q5_0", "q8_0"}


def test_cli_target_bpw(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lowbit.cli import main

    argv = ["convert", str(model), "--target-bpw", "4.5", "--dry-run", "--calib-samples", "4", "--calib-seq-len", "32"]
    with DEFAULT_TEXT:
        assert main([*argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "--target-bpw 4.5: predicted KLD" in out and "predicted ΔKLD" in out


def test_the_sensitivity_cache_serves_other_budgets(model: Path, tmp_path: Path) -> None:
    cache = tmp_path / "sens.json"
    with DEFAULT_TEXT:
        a = lowbit.convert(model, None, "q4_k_m", target_bpw=4.0, dry_run=True, sensitivity=cache, **CAL)
    saved = json.loads(cache.read_text())
    assert saved["candidates"] and saved["sensitivity"]["tensors"]
    cache.write_text(json.dumps({**saved, "sensitivity": {**saved["sensitivity"], "probe_tokens": 12345}}))
    with DEFAULT_TEXT:  # read back (the marker proves it was not measured again)
        b = lowbit.convert(model, None, "q4_k_m", target_bpw=4.0, dry_run=True, sensitivity=cache, **CAL)
    assert b.mixed is not None and a.mixed is not None
    assert b.mixed["probe_tokens"] == 12345 and b.mixed["tensors"] == a.mixed["tensors"]
    with DEFAULT_TEXT, pytest.warns(LowbitWarning, match="measuring again"):
        lowbit.convert(model, None, "q4_k_m", target_bpw=4.0, dry_run=True, sensitivity=cache,
                       candidates=["q3_k", "q4_k", "q8_0"], **CAL)  # fmt: skip
    assert json.loads(cache.read_text())["candidates"] == ["q3_k", "q4_k", "q8_0"]
    cache.write_text("not json")
    with DEFAULT_TEXT, pytest.raises(lowbit.FormatError, match="not a sensitivity file"):
        lowbit.convert(model, None, "q4_k_m", target_bpw=4.0, dry_run=True, sensitivity=cache, **CAL)
