"""Quantization algorithms that go beyond round-to-nearest: GPTQ on one matrix (`gptq`) and over a
whole model, layer by layer (`sequential`)."""

from .gptq import GPTQResult, gptq_quantize, output_error
from .sequential import GPTQConfig, LinearReport, run_gptq

__all__ = ["GPTQConfig", "GPTQResult", "LinearReport", "gptq_quantize", "output_error", "run_gptq"]
