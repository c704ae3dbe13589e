"""lowbit: CPU-first compression toolkit for large language models.

The quantizers live in a Rust core with SIMD kernels (AVX2, AVX-512, NEON) chosen at run time;
this module is the typed Python face of it.

>>> import numpy as np, lowbit
>>> w = np.random.default_rng(0).standard_normal((64, 256), dtype=np.float32)
>>> qt = lowbit.quantize(w, "q4_k")
>>> qt.shape, qt.nbytes, qt.bits_per_weight
((64, 256), 9216, 4.5)
>>> float(np.abs(lowbit.dequantize(qt) - w).max()) < 0.5
True
"""

from __future__ import annotations

from dataclasses import dataclass

# after the core names: conversion imports them
from . import (
    _core,
    conversion,
)
from .conversion import convert, export_gguf, export_hf, gguf_to_hf
from .errors import (
    ChecksumError,
    ClosedError,
    DestinationExistsError,
    FormatError,
    InvalidValueError,
    IsaError,
    LowbitError,
    LowbitWarning,
    MetadataTypeError,
    NotFoundError,
    ParameterError,
    QTypeError,
    ShapeError,
    UnsupportedError,
    VersionError,
)
from .eval import EvalReport, evaluate
from .lbf import LBFFile, LBFWriter, PartInfo, TensorInfo, load, save
from .matmul import PackedWeight, matmul, matmul_reference, pack
from .model import Generation, Model
from .qtensor import ActQuant, Outliers, QTensor, SourceDType, dequantize, quantize

__version__: str = _core.__version__

__all__ = [
    "ActQuant",
    "ChecksumError",
    "ClosedError",
    "DestinationExistsError",
    "EvalReport",
    "FormatError",
    "Generation",
    "InvalidValueError",
    "IsaError",
    "LBFFile",
    "LBFWriter",
    "LowbitError",
    "LowbitWarning",
    "MetadataTypeError",
    "Model",
    "NotFoundError",
    "Outliers",
    "PackedWeight",
    "ParameterError",
    "PartInfo",
    "QTensor",
    "QTypeError",
    "QTypeInfo",
    "ShapeError",
    "SourceDType",
    "TensorInfo",
    "UnsupportedError",
    "VersionError",
    "__version__",
    "available_isas",
    "conversion",
    "convert",
    "dequantize",
    "evaluate",
    "export_gguf",
    "export_hf",
    "gguf_to_hf",
    "isa",
    "load",
    "matmul",
    "matmul_reference",
    "pack",
    "qtypes",
    "quantize",
    "save",
]


@dataclass(frozen=True)
class QTypeInfo:
    """One row of the type table.

    `block_size` values are stored in `block_bytes` bytes. For the group-affine types
    (`int2`..`int8`) the block is the packing unit of 8 codes; their scales (f16 per group) and
    zeros (asymmetric only) come on top, so their real bits per weight depend on the group size:
    see `QTensor.bits_per_weight`. The ragged k-types (`q2_kr`..`q6_kr`, `ragged_base` names
    the ggml k-quant they extend) store rows of any length: full 256-value super-blocks, then one
    partial super-block of 32-value units at about the same bits per weight (formats/QUANT_TYPES.md);
    on rows that are a multiple of 256 they are stored as `ragged_base` itself.
    """

    name: str
    block_size: int
    block_bytes: int
    bits_per_weight: float
    ggml: bool
    gguf_type: int | None
    group_affine: bool
    max_abs: float
    ragged_base: str | None


def qtypes() -> list[QTypeInfo]:
    """The type table: every storage type, its block geometry and its GGUF type id."""
    return [
        QTypeInfo(
            name=d["name"],
            block_size=d["block_size"],
            block_bytes=d["block_bytes"],
            bits_per_weight=8.0 * d["block_bytes"] / d["block_size"],
            ggml=d["ggml"],
            gguf_type=d["gguf_type"],
            group_affine=d["group_affine"],
            max_abs=d["max_abs"],
            ragged_base=d["ragged_base"],
        )
        for d in _core.qtypes()
    ]


def isa() -> str:
    """The instruction set in use: `LOWBIT_ISA` if set (an `IsaError` if the CPU lacks it),
    otherwise the best one detected ("avx512", "avx2", "neon" or "scalar")."""
    return _core.isa()


def available_isas() -> list[str]:
    """The instruction sets this CPU can run, "scalar" first."""
    return _core.available_isas()
