"""Bad input gets a clear, typed exception (never a crash, never a silent wrong answer), and
unusual but valid memory layouts are copied, giving the same result as a plain array."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import lowbit
from lowbit import InvalidValueError, IsaError, LowbitError, ParameterError, QTypeError, ShapeError

X = np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32)


def test_exception_hierarchy() -> None:
    for cls in (QTypeError, ShapeError, ParameterError, InvalidValueError):
        assert issubclass(cls, LowbitError) and issubclass(cls, ValueError)
    assert issubclass(IsaError, LowbitError) and issubclass(IsaError, RuntimeError)


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.uint8, np.complex64, object])
def test_wrong_dtype(dtype: type) -> None:
    with pytest.raises(TypeError, match="float32 or float16"):
        lowbit.quantize(X.astype(dtype), "q8_0")


def test_not_an_array() -> None:
    with pytest.raises(TypeError, match=r"numpy\.ndarray"):
        lowbit.quantize(X.tolist(), "q8_0")


def test_bf16_needs_uint16() -> None:
    with pytest.raises(TypeError, match="uint16"):
        lowbit.quantize(X, "q8_0", source_dtype="bf16")
    with pytest.raises(TypeError, match="does not match"):
        lowbit.quantize(X.astype(np.float16), "q8_0", source_dtype="f32")


@pytest.mark.parametrize("shape", [(256,), (2, 2, 64), ()])
def test_wrong_ndim(shape: tuple[int, ...]) -> None:
    with pytest.raises(ShapeError, match="2-D"):
        lowbit.quantize(np.zeros(shape, np.float32), "q8_0")


@pytest.mark.parametrize("shape", [(0, 256), (3, 0)])
def test_empty(shape: tuple[int, int]) -> None:
    with pytest.raises(ShapeError, match="empty"):
        lowbit.quantize(np.zeros(shape, np.float32), "q4_0")


@pytest.mark.parametrize(("qtype", "cols", "block"), [("q4_0", 48, 32), ("q4_k", 288, 256), ("iq4_nl", 33, 32)])
def test_row_length_not_multiple(qtype: str, cols: int, block: int) -> None:
    with pytest.raises(ShapeError, match=rf"row length {cols} is not a multiple of {qtype}'s block size {block}"):
        lowbit.quantize(np.zeros((2, cols), np.float32), qtype)


def test_affine_row_length_not_multiple_of_8() -> None:
    with pytest.raises(ShapeError, match="multiple of 8"):
        lowbit.quantize(np.zeros((2, 100), np.float32), "int3")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("qtype", ["q8_0", "q4_k", "int4", "f16", "f32", "bf16", "iq4_nl"])
def test_non_finite_reports_first_index(bad: float, qtype: str) -> None:
    x = X.copy()
    x[2, 17] = bad
    x[3, 5] = bad
    with pytest.raises(InvalidValueError) as e:
        lowbit.quantize(x, qtype)
    assert (e.value.index, e.value.row, e.value.col) == (2 * 256 + 17, 2, 17)
    assert "index 529" in str(e.value)


def test_out_of_range_for_f16_scales() -> None:
    x = X.copy()
    x[1, 3] = 1e12
    with pytest.raises(InvalidValueError, match="accepts") as e:
        lowbit.quantize(x, "q4_0")
    assert e.value.index == 256 + 3
    with pytest.raises(InvalidValueError):
        lowbit.quantize(x, "f16")
    lowbit.quantize(x, "bf16")  # bf16 has f32's range
    lowbit.quantize(x, "f32")


def test_unknown_qtype_lists_valid() -> None:
    with pytest.raises(QTypeError, match=r"q4_k.*iq4_nl.*int4"):
        lowbit.quantize(X, "q4_2")
    with pytest.raises(QTypeError):
        lowbit.quantize(X, "q4_k-g128")


@pytest.mark.parametrize(
    "opts",
    [
        {"group_size": 128},
        {"symmetric": True},
        {"clip_ratio": 0.9},
    ],
)
def test_affine_options_on_ggml_type(opts: dict[str, object]) -> None:
    with pytest.raises(ParameterError, match="group-affine"):
        lowbit.quantize(X, "q4_k", **opts)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        ({"group_size": 48}, "group_size"),
        ({"group_size": -1}, "group_size"),
        ({"clip_ratio": 0.0}, "clip_ratio"),
        ({"clip_ratio": 1.5}, "clip_ratio"),
        ({"clip_ratio": float("nan")}, "clip_ratio"),
        ({"group_min": np.zeros((4, 2), np.float32)}, "go together"),
        ({"group_min": np.ones((4, 2)), "group_max": np.zeros((4, 2))}, "group_min"),
        ({"group_min": np.zeros(3), "group_max": np.ones(3)}, "expected 8"),
    ],
)
def test_affine_bad_options(opts: dict[str, object], match: str) -> None:
    with pytest.raises(ParameterError if "expected" not in match else ShapeError, match=match):
        lowbit.quantize(X, "int4-g128", **opts)  # type: ignore[arg-type]


def test_conflicting_name_and_options() -> None:
    with pytest.raises(ParameterError, match="group size"):
        lowbit.quantize(X, "int4-g64", group_size=128)
    with pytest.raises(ParameterError, match="symmetric"):
        lowbit.quantize(X, "int4-sym", symmetric=False)


@pytest.mark.parametrize(
    ("imp", "err", "match"),
    [
        (np.ones(255), ShapeError, "expected 256"),
        (np.full(256, -1.0), ParameterError, "negative"),
        (np.full(256, np.nan), ParameterError, "not finite"),
        (np.array(["a"] * 256), TypeError, "numeric"),
    ],
)
def test_bad_importance(imp: np.ndarray, err: type[Exception], match: str) -> None:
    with pytest.raises(err, match=match):
        lowbit.quantize(X, "q4_k", importance=imp)


def test_importance_not_for_floats() -> None:
    with pytest.raises(ParameterError, match="importance"):
        lowbit.quantize(X, "f16", importance=np.ones(256))


@pytest.mark.parametrize("qtype", ["q4_k", "q8_0", "int3-g64"])
def test_odd_layouts_are_copied_not_misread(qtype: str) -> None:
    want = lowbit.quantize(X, qtype).data
    fortran = np.asfortranarray(X)
    reversed_rows = X[::-1][::-1]
    wide = np.zeros((4, 512), np.float32)
    wide[:, ::2] = X
    strided = wide[:, ::2]
    raw = np.zeros(X.nbytes + 1, np.uint8)
    misaligned = np.frombuffer(raw.data, dtype=np.uint8, count=X.nbytes, offset=1).view(np.float32).reshape(X.shape)
    misaligned.flags.writeable = True
    misaligned[...] = X
    assert not misaligned.flags.aligned
    swapped = X.astype(X.dtype.newbyteorder())
    for arr in (fortran, reversed_rows, strided, misaligned, swapped):
        assert np.array_equal(lowbit.quantize(arr, qtype).data, want)
    # A truly reversed view quantizes the reversed data.
    rev = X[:, ::-1]
    assert np.array_equal(lowbit.quantize(rev, qtype).data, lowbit.quantize(np.ascontiguousarray(rev), qtype).data)


def test_from_bytes_checks_length() -> None:
    qt = lowbit.quantize(X, "q4_k")
    with pytest.raises(ShapeError, match="needs"):
        lowbit.QTensor.from_bytes(qt.data.tobytes()[:-1], "q4_k", X.shape)
    with pytest.raises(ShapeError):
        lowbit.QTensor.from_bytes(qt.data.tobytes(), "q4_k", (4, 250))
    with pytest.raises(ShapeError, match="shape"):
        lowbit.QTensor.from_bytes(qt.data.tobytes(), "q4_k", (4,))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        lowbit.dequantize(qt.data)  # type: ignore[arg-type]


def test_forced_isa_missing() -> None:
    missing = [i for i in ("avx2", "avx512", "neon") if i not in lowbit.available_isas()]
    assert missing  # no CPU has both NEON and AVX
    for isa in missing:
        with pytest.raises(IsaError, match="not supported by this CPU"):
            lowbit.quantize(X, "q8_0", isa=isa)
    with pytest.raises(IsaError, match="unknown ISA"):
        lowbit.quantize(X, "q8_0", isa="sse9")


def run_with_env(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, check=False
    )


def test_lowbit_isa_env_forces_level() -> None:
    r = run_with_env("import lowbit; print(lowbit.isa())", LOWBIT_ISA="scalar")
    assert r.returncode == 0 and r.stdout.strip() == "scalar", r.stderr
    missing = next(i for i in ("avx512", "neon", "avx2") if i not in lowbit.available_isas())
    code = (
        "import lowbit, numpy as np\n"
        "try:\n    lowbit.quantize(np.ones((1, 32), np.float32), 'q8_0')\n"
        "except lowbit.IsaError as e:\n    print('IsaError', e)"
    )
    r = run_with_env(code, LOWBIT_ISA=missing)
    assert r.returncode == 0 and r.stdout.startswith("IsaError") and f"LOWBIT_ISA={missing}" in r.stdout, r.stderr
    r = run_with_env("import lowbit; lowbit.isa()", LOWBIT_ISA="bogus")
    assert r.returncode != 0 and "IsaError" in r.stderr and "unknown ISA" in r.stderr
