"""A QTensor with an act-order permutation: validated, dequantized in input order, multiplied by
`matmul` without being told, stored in and read back from LBF, its bytes counted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import lowbit
from lowbit.errors import ParameterError, ShapeError


def _permuted(rows: int = 6, cols: int = 80, seed: int = 0) -> tuple[lowbit.QTensor, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    perm = rng.permutation(cols)
    stored = lowbit.quantize(np.ascontiguousarray(w[:, perm]), "int4-g32")
    qt = lowbit.QTensor(stored.qtype, stored.shape, stored.data, group_size=32, symmetric=False, perm=perm)
    return qt, w, lowbit.dequantize(stored)


def test_dequantize_and_matmul_are_in_input_order(tmp_path: Path) -> None:
    qt, w, stored = _permuted()
    deq = lowbit.dequantize(qt)
    # stored column j is input column perm[j]
    assert qt.perm is not None
    np.testing.assert_array_equal(deq[:, qt.perm], stored)
    assert np.abs(deq - w).max() < 0.3
    x = np.random.default_rng(1).standard_normal((3, w.shape[1])).astype(np.float32)
    np.testing.assert_allclose(lowbit.matmul_reference(x, qt), x @ deq.T, rtol=1e-5, atol=1e-5)
    assert qt.nbytes == qt.data.nbytes + 4 * w.shape[1]
    lowbit.save(tmp_path / "p.lbf", {"w": qt})
    with lowbit.load(tmp_path / "p.lbf") as f:
        back = f["w"]
        assert isinstance(back, lowbit.QTensor)
        assert back.perm is not None and np.array_equal(back.perm, qt.perm)
        np.testing.assert_array_equal(lowbit.dequantize(back), deq)
        assert f.info("w").nbytes == qt.nbytes


def test_bad_permutations() -> None:
    qt, w, _ = _permuted()
    cols = w.shape[1]
    data = qt.data
    with pytest.raises(ParameterError, match="not a permutation"):
        lowbit.QTensor(qt.qtype, qt.shape, data, group_size=32, symmetric=False, perm=np.zeros(cols, int))
    with pytest.raises(ShapeError):
        lowbit.QTensor(qt.qtype, qt.shape, data, group_size=32, symmetric=False, perm=np.arange(cols - 1))
    with pytest.raises(TypeError):
        lowbit.QTensor(qt.qtype, qt.shape, data, group_size=32, symmetric=False, perm=np.arange(cols) * 1.0)
    q8 = lowbit.quantize(w[:, :64].copy(), "q8_0")
    with pytest.raises(ParameterError, match="group-affine"):
        lowbit.QTensor("q8_0", q8.shape, q8.data, perm=np.arange(64))
    x = np.ones((1, cols), np.float32)
    with pytest.raises(ParameterError, match="own permutation"):
        lowbit.matmul(x, qt, perm=np.arange(cols))
