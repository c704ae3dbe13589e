"""ggml's matrix multiplication, called from Python through ctypes: an optional anchor for the
matmul benchmarks.

Like `ggml_anchor.py` (which finds and loads ``libggml-base``; see there for where the libraries are
looked for), this module only *calls* the shared libraries that PyPI's ``llama-cpp-python`` builds;
no ggml code is copied. It adds ``libggml-cpu`` and drives ggml through its backend API:

* the weights live in one backend buffer: the plain CPU buffer type, or with ``repack=True`` the CPU
  backend's ``CPU_REPACK`` extra buffer type, which re-lays q4_0 / q4_k / iq4_nl blocks on AVX2 into
  the interleaved layout its GEMV/GEMM kernels use (what llama.cpp does at model load by default);
* the activation ``x`` (f32) and one output per weight matrix live in a CPU buffer;
* ``run(i)`` computes the one-node graph ``y_i = ggml_mul_mat(w_i, x)`` on a CPU backend with
  ``n_threads`` threads.

ggml's ``mul_mat(a, b)`` takes ``a`` with ``ne = (cols, rows)`` and ``b`` with ``ne = (cols, n)`` and
returns ``ne = (rows, n)``: in numpy terms ``y = x @ W.T`` with ``W`` (rows, cols), ``x`` (n, cols),
``y`` (n, rows), the same contract as ``lowbit.matmul``. ggml quantizes ``x`` on the fly to its
"vec_dot" type (q8_0 or q8_K) and runs integer dot products, as lowbit does.

The weight bytes are ggml's block bytes; ``lowbit.quantize(w, t).data`` is byte-identical for ggml
types, so both libraries multiply the same weights.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ggml_anchor as ga

__all__ = ["REPACKED", "TYPES", "GgmlMatmul", "ggml_matmul"]

F32Array = npt.NDArray[np.float32]

#: ``enum ggml_type`` values of the weight types this anchor multiplies (``ggml.h``).
TYPES: Final[dict[str, int]] = {"f32": 0, "f16": 1, "bf16": 30, **ga.TYPES}
#: Types that the CPU_REPACK buffer re-lays out on an AVX2 machine (ggml-cpu ``repack.cpp``'s
#: ``ggml_repack_get_optimal_repack_type``, for ``rows % 8 == 0``); other types are not accepted
#: with ``repack=True`` (ggml would dereference a null layout).
REPACKED: Final = ("q4_0", "q4_k", "iq4_nl")

_GGML_TYPE_F32: Final = 0
_GGML_STATUS_SUCCESS: Final = 0


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


def _load_cpu() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    base = ctypes.CDLL(str(_lib_path("ggml-base")), mode=ctypes.RTLD_GLOBAL)
    try:
        cpu = ctypes.CDLL(str(_lib_path("ggml-cpu")), mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        raise ga.GgmlUnavailableError(f"ggml matmul anchor: cannot load libggml-cpu: {exc}") from exc
    p, i64, sz, b, i = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t, ctypes.c_bool, ctypes.c_int
    sigs: dict[tuple[ctypes.CDLL, str], tuple[list[type], type | None]] = {
        (base, "ggml_init"): ([_InitParams], p),
        (base, "ggml_free"): ([p], None),
        (base, "ggml_tensor_overhead"): ([], sz),
        (base, "ggml_graph_overhead_custom"): ([sz, b], sz),
        (base, "ggml_new_tensor_2d"): ([p, i, i64, i64], p),
        (base, "ggml_mul_mat"): ([p, p, p], p),
        (base, "ggml_new_graph_custom"): ([p, sz, b], p),
        (base, "ggml_build_forward_expand"): ([p, p], None),
        (base, "ggml_nbytes"): ([p], sz),
        (base, "ggml_backend_cpu_buffer_type"): ([], p),
        (base, "ggml_backend_buft_name"): ([p], ctypes.c_char_p),
        (base, "ggml_backend_alloc_ctx_tensors_from_buft"): ([p, p], p),
        (base, "ggml_backend_buffer_free"): ([p], None),
        (base, "ggml_backend_tensor_set"): ([p, p, sz, sz], None),
        (base, "ggml_backend_tensor_get"): ([p, p, sz, sz], None),
        (base, "ggml_backend_graph_compute"): ([p, p], i),
        (base, "ggml_backend_free"): ([p], None),
        (base, "ggml_backend_reg_dev_get"): ([p, sz], p),
        (base, "ggml_backend_reg_get_proc_address"): ([p, ctypes.c_char_p], p),
        (cpu, "ggml_backend_cpu_init"): ([], p),
        (cpu, "ggml_backend_cpu_set_n_threads"): ([p, i], None),
        (cpu, "ggml_backend_cpu_reg"): ([], p),
    }
    for (lib, name), (argtypes, restype) in sigs.items():
        try:
            fn = getattr(lib, name)
        except AttributeError as exc:
            raise ga.GgmlUnavailableError(f"ggml matmul anchor: {name} missing from {lib._name}") from exc
        fn.argtypes, fn.restype = argtypes, restype
    return base, cpu


def _lib_path(stem: str) -> Path:
    names = {"darwin": f"lib{stem}.dylib", "win32": f"{stem}.dll"}
    path = ga.lib_dir() / names.get(sys.platform, f"lib{stem}.so")
    if not path.is_file():
        raise ga.GgmlUnavailableError(f"ggml matmul anchor: {path} not found")
    return path


_BASE, _CPU = _load_cpu()

_LOG_WARN, _LOG_CONT = 3, 5
_log_state = {"shown": True}


def _log_sink(level: int, text: bytes, _user: int | None) -> None:
    """ggml's log sink: warnings and errors to stderr, info/debug (e.g. "repack: repack tensor ...")
    dropped, a continuation line following its first line's fate."""
    shown = _log_state["shown"] if level == _LOG_CONT else level >= _LOG_WARN
    _log_state["shown"] = shown
    if shown:
        sys.stderr.write(text.decode(errors="replace"))


_log = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)(_log_sink)
_BASE.ggml_log_set.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
_BASE.ggml_log_set.restype = None
_BASE.ggml_log_set(ctypes.cast(_log, ctypes.c_void_p), None)


def _repack_buffer_type() -> int:
    """The CPU backend's CPU_REPACK buffer type, found through the documented
    ``ggml_backend_dev_get_extra_bufts`` entry of the CPU backend registry."""
    reg = _CPU.ggml_backend_cpu_reg()
    addr = _BASE.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts")
    if not addr:
        raise ga.GgmlUnavailableError("ggml matmul anchor: the CPU backend has no extra buffer types")
    get_extra = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(addr)
    bufts = get_extra(_BASE.ggml_backend_reg_dev_get(reg, 0))
    k = 0
    while bufts[k]:
        if _BASE.ggml_backend_buft_name(bufts[k]) == b"CPU_REPACK":
            return int(bufts[k])
        k += 1
    raise ga.GgmlUnavailableError("ggml matmul anchor: no CPU_REPACK buffer type (ggml built without it)")


class GgmlMatmul:
    """``y_i = x @ W_i.T`` in ggml for a list of same-shaped weight matrices ``W_i``.

    Args:
        qtype: a key of `TYPES`.
        weights: the raw ggml block bytes of each ``(rows, cols)`` matrix (``rows * row_size`` bytes
            each; for f32/f16/bf16 the little-endian values); each is copied into ggml's buffer, so
            repeating one object gives distinct memory.
        rows, cols: the weight shape; ``cols`` a multiple of the type's block size.
        n: rows of the activation ``x`` (1 = GEMV).
        threads: ggml's ``n_threads``.
        repack: put the weights in the CPU_REPACK buffer (types in `REPACKED` only).
    """

    def __init__(
        self,
        qtype: str,
        weights: Sequence[bytes | npt.NDArray[np.uint8]],
        rows: int,
        cols: int,
        n: int,
        *,
        threads: int,
        repack: bool = False,
    ) -> None:
        if qtype not in TYPES:
            raise ValueError(f"unsupported type {qtype!r}; expected one of {', '.join(TYPES)}")
        if repack and (qtype not in REPACKED or rows % 8):
            raise ValueError(f"ggml repacks only {', '.join(REPACKED)} with rows % 8 == 0 on AVX2")
        if rows <= 0 or cols <= 0 or n <= 0 or threads <= 0 or not weights:
            raise ValueError("rows, cols, n, threads and the number of weights must be positive")
        self.rows, self.cols, self.n, self.count = rows, cols, n, len(weights)
        self._ctxs: list[int] = []
        self._bufs: list[int] = []
        self._backend = 0
        try:
            self._build(TYPES[qtype], weights, threads, repack)
        except BaseException:
            self.close()
            raise

    def _ctx(self, mem: int) -> int:
        ctx = _BASE.ggml_init(_InitParams(mem, None, True))
        if not ctx:
            raise MemoryError("ggml_init failed")
        self._ctxs.append(ctx)
        return int(ctx)

    def _alloc(self, ctx: int, buft: int) -> None:
        buf = _BASE.ggml_backend_alloc_ctx_tensors_from_buft(ctx, buft)
        if not buf:
            raise MemoryError("ggml could not allocate a backend buffer")
        self._bufs.append(buf)

    def _build(self, tid: int, weights: Sequence[bytes | npt.NDArray[np.uint8]], threads: int, repack: bool) -> None:
        over = int(_BASE.ggml_tensor_overhead())
        wctx = self._ctx(over * self.count + 1024)
        self._w = [_BASE.ggml_new_tensor_2d(wctx, tid, self.cols, self.rows) for _ in weights]
        nbytes = int(_BASE.ggml_nbytes(self._w[0]))
        srcs = [np.ascontiguousarray(d).reshape(-1) if isinstance(d, np.ndarray) else np.frombuffer(d, np.uint8)
                for d in weights]  # fmt: skip
        for k, src in enumerate(srcs):
            if src.dtype != np.uint8 or src.nbytes != nbytes:
                raise ValueError(f"weight {k}: {src.nbytes} bytes, expected {nbytes} for {self.rows}x{self.cols}")
        self._alloc(wctx, _repack_buffer_type() if repack else int(_BASE.ggml_backend_cpu_buffer_type()))
        for w, src in zip(self._w, srcs, strict=True):
            _BASE.ggml_backend_tensor_set(w, src.ctypes.data, 0, nbytes)

        actx = self._ctx(over * (self.count + 1) + 1024)
        self._x = _BASE.ggml_new_tensor_2d(actx, _GGML_TYPE_F32, self.cols, self.n)
        self._y = [_BASE.ggml_mul_mat(actx, w, self._x) for w in self._w]
        self._alloc(actx, int(_BASE.ggml_backend_cpu_buffer_type()))

        gctx = self._ctx(int(_BASE.ggml_graph_overhead_custom(4, False)) * self.count + 1024)
        self._graphs = []
        for y in self._y:
            g = _BASE.ggml_new_graph_custom(gctx, 4, False)
            _BASE.ggml_build_forward_expand(g, y)
            self._graphs.append(g)

        self._backend = _CPU.ggml_backend_cpu_init()
        if not self._backend:
            raise RuntimeError("ggml_backend_cpu_init failed")
        _CPU.ggml_backend_cpu_set_n_threads(self._backend, threads)

    def set_x(self, x: F32Array) -> None:
        """Copy the activation ``x``, float32 ``(n, cols)``, into ggml's buffer."""
        if x.dtype != np.float32 or x.shape != (self.n, self.cols):
            raise ValueError(f"x must be float32 of shape {(self.n, self.cols)}, got {x.dtype} {x.shape}")
        xc = np.ascontiguousarray(x)
        _BASE.ggml_backend_tensor_set(self._x, xc.ctypes.data, 0, xc.nbytes)

    def run(self, i: int) -> None:
        """Compute ``y_i = x @ W_i.T`` (result kept in ggml's buffer; see `result`)."""
        status = _BASE.ggml_backend_graph_compute(self._backend, self._graphs[i])
        if status != _GGML_STATUS_SUCCESS:
            raise RuntimeError(f"ggml_backend_graph_compute returned {status}")

    def result(self, i: int) -> F32Array:
        """The last computed ``y_i``: float32 ``(n, rows)``."""
        y = np.empty((self.n, self.rows), np.float32)
        _BASE.ggml_backend_tensor_get(self._y[i], y.ctypes.data, 0, y.nbytes)
        return y

    def close(self) -> None:
        """Free the backend, the buffers and the contexts (idempotent)."""
        if self._backend:
            _BASE.ggml_backend_free(self._backend)
            self._backend = 0
        for buf in self._bufs:
            _BASE.ggml_backend_buffer_free(buf)
        for ctx in self._ctxs:
            _BASE.ggml_free(ctx)
        self._bufs, self._ctxs = [], []

    def __enter__(self) -> GgmlMatmul:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ggml_matmul(
    x: F32Array, weight: bytes | npt.NDArray[np.uint8], qtype: str, rows: int, *, threads: int = 1, repack: bool = False
) -> F32Array:
    """One ``x @ W.T`` in ggml: ``x`` float32 ``(n, cols)``, ``weight`` the ggml bytes of a
    ``(rows, cols)`` matrix of type ``qtype``; returns float32 ``(n, rows)``."""
    with GgmlMatmul(qtype, [weight], rows, x.shape[1], x.shape[0], threads=threads, repack=repack) as mm:
        mm.set_x(x)
        mm.run(0)
        return mm.result(0)
