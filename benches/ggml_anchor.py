"""ggml's own quantizers, called from Python through ctypes: an optional anchor for benchmarks.

This module is *optional*. It gives lowbit's benchmarks and quality checks a reference point,
ggml's ``ggml_quantize_chunk``, without vendoring any ggml/llama.cpp code: the code is only
called, from the shared libraries that PyPI's ``llama-cpp-python`` builds and installs
(``pip install llama-cpp-python`` compiles its vendored llama.cpp from source, CPU only).

Where the libraries are looked for, in order:

1. the directory named by the environment variable ``LOWBIT_GGML_LIB_DIR``;
2. the ``lib`` directory of the installed ``llama_cpp`` package (and the package directory
   itself), located with :func:`importlib.util.find_spec`, so ``libllama`` is not loaded.

If neither has ``libggml-base``, importing this module raises :class:`GgmlUnavailableError`,
a subclass of :class:`ImportError`, so a test or benchmark can skip with
``pytest.importorskip``.

Only ``libggml-base`` is loaded (with ``RTLD_GLOBAL``): ``ggml_quantize_chunk`` and the type
size helpers live there and need no CPU-backend initialisation. Note that with no importance
matrix ggml quantizes with its scalar reference row quantizers (``quantize_row_*_ref``);
``ggml_quantize_chunk`` is single-threaded.

Dequantization uses the ``gguf`` Python package (``gguf.quants.dequantize``), which is
independent of the libraries.

Run ``python benches/ggml_anchor.py [weights.npy]`` for a table of single-threaded quantize
throughput (decimal MB/s of f32 input, median of several runs) and of the RMSE of
``dequant(quant(x))`` against ``x``, on a 4096x4096 standard-normal matrix (seed 0) and, when
given, on the rows of a ``.npy`` file of real weights.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as _gguf_dequantize

__all__ = [
    "TYPES",
    "GgmlUnavailableError",
    "bits_per_weight",
    "block_size",
    "ggml_commit",
    "ggml_dequantize",
    "ggml_quantize",
    "ggml_version",
    "lib_dir",
    "main",
    "row_size",
]

F32Array = npt.NDArray[np.float32]

#: The ``enum ggml_type`` values of the types this anchor accepts (checked against the vendored
#: ``ggml.h`` of llama-cpp-python 0.3.36 / ggml 0.25.3; the enum's values are part of the GGUF
#: format and do not move between versions).
TYPES: Final[dict[str, int]] = {
    "q8_0": 8,
    "q4_0": 2,
    "q4_1": 3,
    "q5_0": 6,
    "q5_1": 7,
    "q2_k": 10,
    "q3_k": 11,
    "q4_k": 12,
    "q5_k": 13,
    "q6_k": 14,
    "iq4_nl": 20,
}

_ENV_VAR: Final = "LOWBIT_GGML_LIB_DIR"


class GgmlUnavailableError(ImportError):
    """ggml's shared libraries could not be found or loaded; the anchor is unavailable."""


def _lib_names() -> tuple[str, ...]:
    if sys.platform == "darwin":
        return ("libggml-base.dylib",)
    if sys.platform == "win32":
        return ("ggml-base.dll",)
    return ("libggml-base.so",)


def _candidate_dirs() -> list[Path]:
    env = os.environ.get(_ENV_VAR)
    if env:
        # An explicit directory is the only one tried: a wrong setting should not be masked.
        return [Path(env)]
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return []
    pkg = Path(spec.origin).parent
    return [pkg / "lib", pkg]


def _load() -> tuple[ctypes.CDLL, Path]:
    tried: list[str] = []
    for directory in _candidate_dirs():
        for name in _lib_names():
            path = directory / name
            tried.append(str(path))
            if not path.is_file():
                continue
            try:
                lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            except OSError as exc:
                raise GgmlUnavailableError(f"ggml anchor: cannot load {path}: {exc}") from exc
            return lib, directory
    where = ", ".join(tried) if tried else "nowhere (llama_cpp is not installed)"
    raise GgmlUnavailableError(
        f"ggml anchor unavailable: libggml-base not found; looked in {where}. "
        f"Install llama-cpp-python (`pip install llama-cpp-python`) or set {_ENV_VAR} "
        "to the directory holding libggml-base."
    )


def _bind(lib: ctypes.CDLL) -> None:
    i64, sz, ptr = ctypes.c_int64, ctypes.c_size_t, ctypes.c_void_p
    ggml_type = ctypes.c_int  # enum ggml_type
    signatures: dict[str, tuple[list[type], type | None]] = {
        # size_t ggml_quantize_chunk(type, const float *src, void *dst, int64_t start,
        #                            int64_t nrows, int64_t n_per_row, const float *imatrix)
        "ggml_quantize_chunk": ([ggml_type, ptr, ptr, i64, i64, i64, ptr], sz),
        "ggml_quantize_init": ([ggml_type], None),
        "ggml_quantize_requires_imatrix": ([ggml_type], ctypes.c_bool),
        "ggml_validate_row_data": ([ggml_type, ptr, sz], ctypes.c_bool),
        "ggml_blck_size": ([ggml_type], i64),
        "ggml_type_size": ([ggml_type], sz),
        "ggml_row_size": ([ggml_type, i64], sz),
        "ggml_version": ([], ctypes.c_char_p),
        "ggml_commit": ([], ctypes.c_char_p),
    }
    for name, (argtypes, restype) in signatures.items():
        try:
            fn = getattr(lib, name)
        except AttributeError as exc:
            raise GgmlUnavailableError(f"ggml anchor: {name} missing from {lib._name}") from exc
        fn.argtypes = argtypes
        fn.restype = restype


_LIB, _LIB_DIR = _load()
_bind(_LIB)


def lib_dir() -> Path:
    """Directory the ggml libraries were loaded from."""
    return _LIB_DIR


def ggml_version() -> str:
    """Version string of the loaded ggml (``ggml_version()``)."""
    return bytes(_LIB.ggml_version()).decode()


def ggml_commit() -> str:
    """Commit of the loaded ggml, as recorded at build time (``ggml_commit()``)."""
    return bytes(_LIB.ggml_commit()).decode()


def _type_id(name: str) -> int:
    try:
        return TYPES[name]
    except KeyError:
        raise ValueError(f"unsupported type {name!r}; expected one of {', '.join(TYPES)}") from None


def block_size(name: str) -> int:
    """Number of weights in one block of type ``name``."""
    return int(_LIB.ggml_blck_size(_type_id(name)))


def row_size(name: str, cols: int) -> int:
    """Bytes of one quantized row of ``cols`` weights."""
    return int(_LIB.ggml_row_size(_type_id(name), cols))


def bits_per_weight(name: str) -> float:
    """Storage bits per weight of type ``name``."""
    tid = _type_id(name)
    return 8.0 * int(_LIB.ggml_type_size(tid)) / int(_LIB.ggml_blck_size(tid))


def _check_input(name: str, x: F32Array, imatrix: F32Array | None) -> tuple[int, int, int]:
    # ggml aborts the process on a failed GGML_ASSERT: validate everything here first.
    tid = _type_id(name)
    if x.dtype != np.float32 or x.ndim != 2 or not x.flags.c_contiguous:
        raise ValueError(f"x must be a 2-D C-contiguous float32 array, got {x.dtype} {x.shape}")
    rows, cols = x.shape
    blck = int(_LIB.ggml_blck_size(tid))
    if cols == 0 or cols % blck:
        raise ValueError(f"{name}: row length {cols} is not a positive multiple of the block size {blck}")
    if imatrix is not None:
        if imatrix.dtype != np.float32 or imatrix.shape != (cols,) or not imatrix.flags.c_contiguous:
            raise ValueError(f"imatrix must be a contiguous float32 array of shape ({cols},)")
    elif _LIB.ggml_quantize_requires_imatrix(tid):
        raise ValueError(f"{name} requires an importance matrix")
    return tid, rows, cols


def _quantize_into(tid: int, x: F32Array, out: ctypes.Array[ctypes.c_char], imatrix: F32Array | None) -> int:
    rows, cols = x.shape
    imat = None if imatrix is None else imatrix.ctypes.data
    return int(_LIB.ggml_quantize_chunk(tid, x.ctypes.data, out, 0, rows, cols, imat))


def ggml_quantize(name: str, x: F32Array, imatrix: F32Array | None = None) -> bytes:
    """Quantize the rows of ``x`` to ggml type ``name`` with ggml's ``ggml_quantize_chunk``.

    ``x`` is a 2-D C-contiguous float32 array whose row length is a multiple of the type's
    block size; ``imatrix`` is an optional per-column importance vector (float32, ``(cols,)``).
    Returns the raw GGUF/ggml block bytes, ``rows * row_size(name, cols)`` of them.
    """
    tid, rows, cols = _check_input(name, x, imatrix)
    _LIB.ggml_quantize_init(tid)  # no-op for most types; builds the grids of the iq types
    nbytes = rows * int(_LIB.ggml_row_size(tid, cols))
    out = ctypes.create_string_buffer(nbytes)
    written = _quantize_into(tid, x, out, imatrix)
    if written != nbytes:
        raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes, expected {nbytes}")
    return out.raw


def ggml_dequantize(name: str, data: bytes, rows: int, cols: int) -> F32Array:
    """Decode ggml block bytes of type ``name`` to a ``(rows, cols)`` float32 array (gguf-py)."""
    _type_id(name)
    expected = rows * row_size(name, cols)
    if len(data) != expected:
        raise ValueError(f"{name}: {len(data)} bytes for a {rows}x{cols} tensor, expected {expected}")
    blocks = np.frombuffer(data, dtype=np.uint8).reshape(rows, -1)
    qtype = GGMLQuantizationType[name.upper()]
    return np.ascontiguousarray(_gguf_dequantize(blocks, qtype), dtype=np.float32).reshape(rows, cols)


def _rmse(a: F32Array, b: F32Array) -> float:
    return float(np.sqrt(np.mean(np.square(a.astype(np.float64) - b.astype(np.float64)))))


def _throughput(name: str, x: F32Array, repeats: int) -> float:
    """Median quantize throughput in decimal MB/s of f32 input, one thread, output buffer reused."""
    tid, rows, cols = _check_input(name, x, None)
    _LIB.ggml_quantize_init(tid)
    out = ctypes.create_string_buffer(rows * int(_LIB.ggml_row_size(tid, cols)))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _quantize_into(tid, x, out, None)
        times.append(time.perf_counter() - t0)
    return x.nbytes / statistics.median(times) / 1e6


def _quality(name: str, x: F32Array) -> tuple[float, float] | None:
    """(RMSE, RMSE / RMS(x)) of the round trip, or None if the row length does not fit the type."""
    rows, cols = x.shape
    if cols % block_size(name):
        return None
    data = ggml_quantize(name, x)
    if not _LIB.ggml_validate_row_data(_type_id(name), data, len(data)):
        raise RuntimeError(f"{name}: ggml_validate_row_data rejected ggml's own output")
    err = _rmse(ggml_dequantize(name, data, rows, cols), x)
    rms = float(np.sqrt(np.mean(np.square(x.astype(np.float64)))))
    return err, err / rms if rms else float("nan")


def _load_rows(path: Path) -> F32Array:
    arr = np.load(path)
    if arr.ndim == 0:
        raise ValueError(f"{path}: expected an array of rows, got a scalar")
    rows = arr.reshape(-1, arr.shape[-1]) if arr.ndim != 1 else arr.reshape(1, -1)
    return np.ascontiguousarray(rows, dtype=np.float32)


def main(argv: Sequence[str] | None = None) -> int:
    """Print ggml's quantize throughput and round-trip RMSE per type."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("weights", nargs="?", type=Path, help=".npy of real weight rows (last axis = row)")
    parser.add_argument("--rows", type=int, default=4096, help="rows of the random matrix (default 4096)")
    parser.add_argument("--cols", type=int, default=4096, help="columns of the random matrix (default 4096)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per type; the median is kept (default 3)")
    parser.add_argument("--types", default=",".join(TYPES), help="comma-separated subset of types")
    args = parser.parse_args(argv)

    names = [t.strip() for t in args.types.split(",") if t.strip()]
    for n in names:
        _type_id(n)
    x = np.random.default_rng(0).standard_normal((args.rows, args.cols), dtype=np.float32)
    real = _load_rows(args.weights) if args.weights is not None else None

    print(f"ggml {ggml_version()} (commit {ggml_commit()}) from {lib_dir()}")
    print(
        f"random: {args.rows}x{args.cols} standard normal f32 (seed 0), {x.nbytes / 1e6:.1f} MB; "
        f"quantize = ggml_quantize_chunk, 1 thread, no imatrix, median of {args.repeats}"
    )
    if real is not None:
        print(f"real: {args.weights} as {real.shape[0]}x{real.shape[1]} f32 rows")
    header = f"{'type':<8} {'bpw':>6} {'MB/s':>9} {'RMSE':>10} {'rel.RMSE':>9}"
    if real is not None:
        header += f" {'real RMSE':>11} {'real rel.':>10}"
    print(header)
    print("-" * len(header))
    for name in names:
        mbps = _throughput(name, x, args.repeats)
        q = _quality(name, x)
        line = f"{name:<8} {bits_per_weight(name):>6.3f} {mbps:>9.1f}"
        line += f" {q[0]:>10.6f} {q[1]:>9.5f}" if q else f" {'n/a':>10} {'n/a':>9}"
        if real is not None:
            r = _quality(name, real)
            line += f" {r[0]:>11.3e} {r[1]:>10.5f}" if r else f" {'n/a':>11} {'n/a':>10}"
        print(line, flush=True)
    print("RMSE = sqrt(mean((dequant(quant(x)) - x)^2)); rel.RMSE = RMSE / RMS(x); dequant by gguf-py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
