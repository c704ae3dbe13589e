"""The command line entry points."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import lowbit
from lowbit.cli import main


def test_info_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"isa: {lowbit.isa()}" in out
    assert "q4_k" in out and "int3" in out


def test_info_json_via_module() -> None:
    r = subprocess.run([sys.executable, "-m", "lowbit", "info", "--json"], capture_output=True, text=True, check=True)
    payload = json.loads(r.stdout)
    assert payload["version"] == lowbit.__version__
    assert {t["name"] for t in payload["qtypes"]} == {t.name for t in lowbit.qtypes()}
