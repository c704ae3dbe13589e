"""Quantization algorithms that go beyond round-to-nearest: GPTQ (`gptq`)."""
