"""`lowbit.matmul`: every ISA against the float64 reference within the bound that the int8
activation quantization allows (the Rust tests in `rust/core/tests/matmul.rs` cover each kernel
and the ISA-to-ISA tolerance), permutations and outliers, 1-D and 2-D inputs, bad inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import lowbit
from conftest import DQ_TYPES, FLOAT_TYPES, GGML_TYPES, RAGGED_TYPES
from lowbit import InvalidValueError, IsaError, ParameterError, ShapeError

QUANT_TYPES = [*GGML_TYPES, "int2-g32", "int3-row-sym", "int4-g128", "int8-g64", "int8-row-sym"]
# Types whose decoded rows carry a separate min term (scaled code and min may cancel).
MIN_TYPES = {"q4_1", "q5_1", "q2_k", "q4_k", "q5_k", "int8-g64", "q2_kr", "q4_kr", "q5_kr"}
EPS = float(np.finfo(np.float32).eps)


def weight(qtype: str, rows: int, cols: int, seed: int = 0) -> lowbit.QTensor:
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32) * 0.05
    w[::3] = 0.0  # all-zero rows
    return lowbit.quantize(w, qtype)


def bound(qt: lowbit.QTensor, x: npt.NDArray[np.float32], dense: npt.NDArray[np.float64], y_ref: Any) -> Any:
    """|matmul - reference| bound per output: half an int8 step of each 32-value activation
    block (amax / 254, with a 2^-10 margin for the f32 step) times |w|, plus f32 rounding of
    (cols + 64) operations over the magnitudes, plus the final rounding."""
    n, cols = x.shape
    quantized = qt.qtype not in FLOAT_TYPES
    xp = np.zeros((n, -(-cols // 32) * 32))
    xp[:, :cols] = np.abs(x.astype(np.float64))
    amax = xp.reshape(n, -1, 32).max(axis=2)
    delta = np.repeat(amax / 127 * (0.5 + 2**-10), 32, axis=1)[:, :cols] if quantized else np.zeros((n, cols))
    m = 2 * np.abs(dense).max(axis=1) if qt.qtype in MIN_TYPES else np.zeros(dense.shape[0])
    act = delta @ np.abs(dense).T
    mag = (np.abs(x) + delta) @ (np.abs(dense) + m[:, None]).T
    return act + (cols + 64) * EPS * mag + np.abs(y_ref) * 2.0**-24 + 2.0**-149


@pytest.mark.parametrize("qtype", QUANT_TYPES + FLOAT_TYPES)
@pytest.mark.parametrize(("rows", "cols", "n"), [(1, 256, 1), (17, 512, 3), (67, 768, 64)])
def test_every_isa_within_the_activation_bound(qtype: str, rows: int, cols: int, n: int) -> None:
    check_every_isa(qtype, rows, cols, n)


@pytest.mark.parametrize("qtype", RAGGED_TYPES)
@pytest.mark.parametrize(("rows", "cols", "n"), [(1, 576, 1), (17, 600, 3), (67, 100, 64), (5, 7, 2)])
def test_ragged_types_within_the_activation_bound(qtype: str, rows: int, cols: int, n: int) -> None:
    check_every_isa(qtype, rows, cols, n)
    assert weight(qtype, rows, cols).qtype == qtype


@pytest.mark.parametrize("qtype", DQ_TYPES)
@pytest.mark.parametrize(("rows", "cols", "n"), [(1, 272, 1), (17, 576, 3), (67, 256, 64), (5, 16, 2)])
def test_dq_types_within_the_activation_bound(qtype: str, rows: int, cols: int, n: int) -> None:
    check_every_isa(qtype, rows, cols, n)


def check_every_isa(qtype: str, rows: int, cols: int, n: int) -> None:
    qt = weight(qtype, rows, cols, seed=rows)
    x = np.random.default_rng(cols).standard_normal((n, cols)).astype(np.float32)
    dense = qt.dequantize().astype(np.float64)
    y_ref = lowbit.matmul_reference(x, qt)
    assert y_ref.shape == (n, rows) and y_ref.dtype == np.float32
    # The reference is the f64 product of the dequantized weight.
    np.testing.assert_allclose(y_ref, x.astype(np.float64) @ dense.T, rtol=1e-6, atol=1e-6)
    b = bound(qt, x, dense, y_ref)
    for isa in lowbit.available_isas():
        y = lowbit.matmul(x, qt, isa=isa)
        err = np.abs(y.astype(np.float64) - y_ref)
        worst = np.unravel_index(np.argmax(err - b), err.shape)
        assert (err <= b).all(), f"{qtype} {isa} at {worst}: {y[worst]} vs {y_ref[worst]} (bound {b[worst]:.3g})"


def test_one_dimensional_input_and_float_weight_array() -> None:
    w = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    x = np.random.default_rng(1).standard_normal(64).astype(np.float32)
    y = lowbit.matmul(x, w)
    assert y.shape == (5,)
    np.testing.assert_allclose(y, w.astype(np.float64) @ x, rtol=1e-5, atol=1e-5)
    # float16 and float64 activations are converted to float32.
    np.testing.assert_array_equal(lowbit.matmul(x.astype(np.float64), w), y)
    # A strided input is copied, not read through its raw buffer.
    xs = np.repeat(x, 2)[::2]
    np.testing.assert_array_equal(lowbit.matmul(xs, w), y)


def outlier_mask(rows: int, cols: int, rng: np.random.Generator) -> npt.NDArray[np.bool_]:
    """Where a (rows, cols) weight keeps outliers: 2% uniform, 4 hot columns in half the rows,
    none in row 0, every third column of row 1, and the last two (tail) columns of row 2."""
    mask = rng.random((rows, cols)) < 0.02
    hot = rng.choice(cols, 4, replace=False)
    mask[:, hot] |= rng.random((rows, 1)) < 0.5
    mask[0] = False
    mask[1, ::3] = True
    mask[2, -2:] = True
    return mask


@pytest.mark.parametrize(
    ("qtype", "cols", "act_order"),
    [("q4_0", 288, False), ("q4_k", 512, False), ("q8_0", 288, False), ("int4-g128", 264, True),
     ("int3-g128", 264, True), ("int4-g64", 256, False), ("f32", 263, False), ("f16", 263, False)],
)  # fmt: skip
@pytest.mark.parametrize("n", [1, 2, 3, 5, 64])
def test_outliers_match_the_dense_equivalent(qtype: str, cols: int, act_order: bool, n: int) -> None:
    rows = 70  # two tiles of rows
    qt = weight(qtype, rows, cols, seed=3)
    rng = np.random.default_rng(cols + n)
    perm = rng.permutation(cols).astype(np.uint32) if act_order else None
    mask = outlier_mask(rows, cols, rng)
    row_ptr = np.concatenate([[0], np.cumsum(mask.sum(axis=1))]).astype(np.uint64)
    ocols = np.nonzero(mask)[1].astype(np.uint32)
    vals = (rng.standard_normal(ocols.size) * 0.5).astype(np.float16)
    outliers = (row_ptr, ocols, vals)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    # Dense stored-order weight with the outliers, then columns put back in input order.
    stored = qt.dequantize().astype(np.float64)
    stored[np.nonzero(mask)] += vals.astype(np.float64)
    dense = np.zeros_like(stored)
    dense[:, np.arange(cols) if perm is None else perm] = stored
    y_ref = lowbit.matmul_reference(x, qt, perm=perm, outliers=outliers)
    np.testing.assert_allclose(y_ref, x.astype(np.float64) @ dense.T, rtol=1e-5, atol=1e-5)
    b = bound(qt, x, dense, y_ref)
    for isa in lowbit.available_isas():
        y = lowbit.matmul(x, qt, perm=perm, outliers=outliers, isa=isa)
        err = np.abs(y - y_ref.astype(np.float64))
        assert (err <= b).all(), f"{isa} at {np.unravel_index(np.argmax(err - b), err.shape)}"
        # A token's outputs do not depend on the batch it is in (small batches gather the
        # outliers' activations, large ones run axpys over the transposed batch: same bits).
        for i in {0, n // 2, n - 1}:
            np.testing.assert_array_equal(lowbit.matmul(x[i], qt, perm=perm, outliers=outliers, isa=isa), y[i])


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda qt: lowbit.matmul(np.zeros((2, 63), np.float32), qt), ShapeError, "shape"),
        (lambda qt: lowbit.matmul(np.zeros((2, 2, 64), np.float32), qt), ShapeError, "shape"),
        (lambda qt: lowbit.matmul(np.zeros((2, 64), np.int32), qt), TypeError, "float"),
        (lambda qt: lowbit.matmul([0.0] * 64, qt), TypeError, "ndarray"),  # type: ignore[arg-type]
        (lambda qt: lowbit.matmul(np.zeros(64, np.float32), "q4_0"), TypeError, "QTensor"),  # type: ignore[arg-type]
        (lambda qt: lowbit.matmul(np.zeros(64, np.float32), qt, perm=np.arange(64)), ParameterError, "group-affine"),
        (lambda qt: lowbit.matmul(np.zeros(64, np.float32), qt, isa="nope"), IsaError, "unknown ISA"),
    ],
)
def test_bad_arguments(call: Any, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        call(weight("q4_0", 4, 64))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_activations(bad: float) -> None:
    x = np.ones((3, 64), np.float32)
    x[2, 5] = bad
    with pytest.raises(InvalidValueError) as e:
        lowbit.matmul(x, weight("q8_0", 4, 64))
    assert (e.value.index, e.value.row, e.value.col) == (2 * 64 + 5, 2, 5)


def test_bad_permutations_and_outliers() -> None:
    qt = weight("int4-g32", 4, 64)
    x = np.ones(64, np.float32)
    with pytest.raises(ParameterError, match="permutation"):
        lowbit.matmul(x, qt, perm=np.zeros(64, np.uint32))
    with pytest.raises(ShapeError, match="perm"):
        lowbit.matmul(x, qt, perm=np.arange(32, dtype=np.uint32))
    with pytest.raises(ShapeError, match="range"):
        lowbit.matmul(x, qt, perm=-np.arange(64))
    ok = (np.array([0, 1, 1, 1, 2], np.uint64), np.array([3, 7], np.uint32), np.ones(2, np.float16))
    lowbit.matmul(x, qt, outliers=ok)
    cases: list[tuple[Any, type[Exception], str]] = [
        ((ok[0][:-1], ok[1], ok[2]), ShapeError, "row pointers"),
        ((np.array([0, 2, 1, 1, 2], np.uint64), ok[1], ok[2]), ParameterError, "decrease"),
        ((ok[0], np.array([3, 64], np.uint32), ok[2]), ParameterError, "out of range"),
        ((ok[0], ok[1], np.array([1, np.inf], np.float16)), ParameterError, "not finite"),
        ((ok[0], ok[1], np.ones(2, np.float32)), TypeError, "float16"),
        ((ok[0], ok[1]), TypeError, "tuple"),
    ]
    for bad, exc, match in cases:
        with pytest.raises(exc, match=match):
            lowbit.matmul(x, qt, outliers=bad)


def test_unavailable_isa_is_refused() -> None:
    missing = [i for i in ("avx2", "avx512", "neon") if i not in lowbit.available_isas()]
    if not missing:
        pytest.skip("every ISA is available here")
    with pytest.raises(IsaError):
        lowbit.matmul(np.ones(64, np.float32), weight("q4_0", 2, 64), isa=missing[0])


@pytest.mark.parametrize("qtype", ["q4_0", "iq4_nl"])
@pytest.mark.parametrize(("rows", "cols"), [(1, 32), (9, 160), (67, 512)])
def test_packed_weights_give_the_same_bits(qtype: str, rows: int, cols: int) -> None:
    # `pack` (four rows interleaved, the packed GEMV at AVX-512 VNNI, rows unpacked elsewhere)
    # changes no bit of the result, at every ISA, for single rows and batches, 1-D and 2-D x,
    # with the weight's outliers; matmul_reference reads it the same way.
    qt = weight(qtype, rows, cols, seed=rows)
    rng = np.random.default_rng(cols)
    row_ptr = np.arange(rows + 1, dtype=np.uint64)
    ocols = rng.integers(0, cols, rows).astype(np.uint32)
    vals = rng.standard_normal(rows).astype(np.float16)
    for w in (qt, qt.with_outliers((row_ptr, ocols, vals))):
        pw = lowbit.pack(w)
        assert isinstance(pw, lowbit.PackedWeight) and pw.shape == (rows, cols) and pw.qtype == qtype
        assert pw.data.nbytes == -(-rows // 4) * 4 * qt.data.nbytes // rows
        for n in (1, 5, 20):
            x = rng.standard_normal((n, cols)).astype(np.float32)
            for isa in lowbit.available_isas():
                want = lowbit.matmul(x, w, isa=isa)
                got = lowbit.matmul(x, pw, isa=isa)
                np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), err_msg=f"{isa} n={n}")
            np.testing.assert_array_equal(lowbit.matmul_reference(x, pw), lowbit.matmul_reference(x, w))
        np.testing.assert_array_equal(lowbit.matmul(x[0], pw), lowbit.matmul(x[0], w))


def test_pack_refuses_bad_input() -> None:
    with pytest.raises(ParameterError, match="q4_0 and iq4_nl"):
        lowbit.pack(weight("q8_0", 4, 64))
    with pytest.raises(TypeError, match="QTensor"):
        lowbit.pack(np.zeros((4, 64), np.float32))  # type: ignore[arg-type]
    g = weight("int4-g32", 4, 64)
    perm = np.arange(64, dtype=np.uint32)[::-1]
    permuted = lowbit.QTensor(g.qtype, g.shape, g.data.reshape(-1), group_size=g.group_size, perm=perm)
    with pytest.raises(ParameterError, match="permutation"):
        lowbit.pack(permuted)
    pw = lowbit.pack(weight("q4_0", 4, 64))
    with pytest.raises(ParameterError, match="PackedWeight"):
        lowbit.matmul(np.zeros(64, np.float32), pw, perm=np.arange(64, dtype=np.uint32))
    with pytest.raises(ShapeError, match=r"\(64,\)"):
        lowbit.matmul(np.zeros(63, np.float32), pw)
    with pytest.raises(InvalidValueError):
        lowbit.matmul(np.full(64, np.nan, np.float32), pw)
    # Bytes of the wrong length reach the core's typed check.
    bad = lowbit.PackedWeight("q4_0", (4, 64), pw.data[:-1])
    with pytest.raises(ShapeError, match="packed"):
        lowbit.matmul(np.zeros(64, np.float32), bad)
