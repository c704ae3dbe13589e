"""The exception hierarchy. Every error lowbit raises on bad input is a `LowbitError`; each
subclass also derives from the builtin a caller would naturally catch (`ValueError`, ...)."""

from __future__ import annotations

__all__ = [
    "ChecksumError",
    "ClosedError",
    "DestinationExistsError",
    "FormatError",
    "InvalidValueError",
    "IsaError",
    "LowbitError",
    "LowbitWarning",
    "MetadataTypeError",
    "NotFoundError",
    "ParameterError",
    "QTypeError",
    "ShapeError",
    "UnsupportedError",
    "VersionError",
]


class LowbitError(Exception):
    """Base class of lowbit's errors."""


class QTypeError(LowbitError, ValueError):
    """Unknown quantization type name (the message lists the valid ones)."""


class ShapeError(LowbitError, ValueError):
    """Wrong number of dimensions, empty input, a row length that does not fit the type's
    blocks, a buffer of the wrong size, or an array layout that cannot be read safely."""


class ParameterError(LowbitError, ValueError):
    """An option the type does not take or a value outside its range."""


class InvalidValueError(LowbitError, ValueError):
    """An input value that cannot be quantized: NaN, ±Inf, or a magnitude beyond what the
    type's f16 scales can hold. `index` is the flat row-major index of the first such value,
    `row`/`col` its position."""

    def __init__(self, message: str, index: int = -1, row: int = -1, col: int = -1) -> None:
        super().__init__(message)
        self.index = index
        self.row = row
        self.col = col

    def __str__(self) -> str:
        return str(self.args[0])


class IsaError(LowbitError, RuntimeError):
    """An instruction set was forced (`LOWBIT_ISA` or `isa=`) that this CPU lacks, or is unknown."""


class FormatError(LowbitError, ValueError):
    """A file that is not valid LBF (`formats/LBF.md`). `offset` is the byte offset in the file
    where the problem was found (0 when not applicable)."""

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(message)
        self.offset = offset

    def __str__(self) -> str:
        return str(self.args[0])


class VersionError(FormatError):
    """An LBF file of a major format version this lowbit cannot read."""


class ChecksumError(FormatError):
    """A stored CRC-32 does not match the bytes: the header and index (on open) or a tensor's
    parts (when it is read, or by `verify`)."""


class UnsupportedError(LowbitError, NotImplementedError):
    """A valid input lowbit cannot handle (yet): a tensor using a qtype or part kind from a newer
    minor version of the format, or, when converting, a model architecture, tensor type or
    tokenizer kind the converter does not know. The message names it."""


class NotFoundError(LowbitError, KeyError):
    """No tensor or metadata key of that name."""

    def __str__(self) -> str:
        return str(self.args[0])


class MetadataTypeError(LowbitError, TypeError):
    """A typed metadata getter (`get_str`, `get_int`, ...) met a value of another type."""


class ClosedError(LowbitError, ValueError):
    """The LBF file or writer was closed."""


class DestinationExistsError(LowbitError, FileExistsError):
    """The output path exists and overwriting was not asked for."""


class LowbitWarning(UserWarning):
    """Something lowbit did on its own that the caller should know about (an unknown tensor name
    kept as it is, a tokenizer detail guessed)."""
