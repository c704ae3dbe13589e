"""Calibration: text → token samples (`data`), range observers (`observers`), the layer-by-layer
capture of each linear layer's inputs through the engine (`capture`) and importance statistics
(`imatrix`)."""

from .data import DEFAULT_TEXT, MAX_QUIET_OVERLAP, CalibrationSet, calibration_tokens, load_texts
from .imatrix import Imatrix, compute_imatrix, load_imatrix, save_imatrix
from .observers import (
    OBSERVER_NAMES,
    EntropyObserver,
    Granularity,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    Observer,
    PercentileObserver,
    make_observer,
)

__all__ = [
    "DEFAULT_TEXT",
    "MAX_QUIET_OVERLAP",
    "OBSERVER_NAMES",
    "CalibrationSet",
    "EntropyObserver",
    "Granularity",
    "Imatrix",
    "MSEObserver",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "Observer",
    "PercentileObserver",
    "calibration_tokens",
    "compute_imatrix",
    "load_imatrix",
    "load_texts",
    "make_observer",
    "save_imatrix",
]
