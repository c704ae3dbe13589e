# Type stubs of the compiled extension `lowbit._core` (rust/py/src/lib.rs). Keep in sync.
from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str

def qtypes() -> list[dict[str, Any]]: ...
def isa() -> str: ...
def available_isas() -> list[str]: ...
def layout(
    qtype: str, rows: int, cols: int, group_size: int | None = None, symmetric: bool | None = None
) -> tuple[str, int | None, bool | None, int]: ...
def quantize(
    x: npt.NDArray[Any],
    qtype: str,
    source_dtype: str,
    group_size: int | None = None,
    symmetric: bool | None = None,
    importance: npt.NDArray[np.float32] | None = None,
    clip_ratio: float | None = None,
    group_min: npt.NDArray[np.float32] | None = None,
    group_max: npt.NDArray[np.float32] | None = None,
    isa: str | None = None,
) -> tuple[str, int | None, bool | None, int, npt.NDArray[np.uint8]]: ...
def dequantize(
    data: npt.NDArray[np.uint8],
    qtype: str,
    rows: int,
    cols: int,
    group_size: int | None = None,
    symmetric: bool | None = None,
    isa: str | None = None,
) -> npt.NDArray[np.float32]: ...
