"""Calibration: text → token samples (`data`), range observers (`observers`) and the layer-by-layer
capture of each linear layer's inputs through the engine (importance statistics, GPTQ Hessians)."""
