"""pytest-benchmark suite of the Python API (binding overhead included): quantize and dequantize
a 1024×4096 float32 matrix per type and ISA. Run with `make bench` or
`pytest benches --benchmark-enable --benchmark-only`."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import lowbit

X = (np.random.default_rng(0).standard_normal((1024, 4096), dtype=np.float32) * 0.02).astype(np.float32)
TYPES = ["q8_0", "q4_0", "q4_k", "q6_k", "q3_k", "iq4_nl", "int4-g128", "int3-g128", "bf16"]


@pytest.mark.parametrize("isa", lowbit.available_isas())
@pytest.mark.parametrize("qtype", TYPES)
def test_quantize(benchmark: Any, qtype: str, isa: str) -> None:
    benchmark.extra_info["MB"] = X.nbytes / 1e6
    qt = benchmark(lowbit.quantize, X, qtype, isa=isa)
    assert qt.shape == X.shape


@pytest.mark.parametrize("isa", lowbit.available_isas())
@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize(benchmark: Any, qtype: str, isa: str) -> None:
    qt = lowbit.quantize(X, qtype)
    y = benchmark(lowbit.dequantize, qt, isa=isa)
    assert y.shape == X.shape
