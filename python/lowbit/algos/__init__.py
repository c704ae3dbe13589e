"""Quantization algorithms that go beyond round-to-nearest: GPTQ on one matrix (`gptq`), AWQ's
activation-aware scales (`awq`, folded by `scaling`), and the layer-by-layer driver over a whole
model (`sequential`)."""

from .awq import AWQConfig, awq_method
from .gptq import GPTQResult, gptq_quantize, output_error
from .sequential import GPTQConfig, LayerRun, LinearReport, gptq_layer, run_layers

__all__ = [
    "AWQConfig",
    "GPTQConfig",
    "GPTQResult",
    "LayerRun",
    "LinearReport",
    "awq_method",
    "gptq_layer",
    "gptq_quantize",
    "output_error",
    "run_layers",
]
