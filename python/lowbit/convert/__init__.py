"""Conversion between checkpoint formats. For now: a llama GGUF file → a Hugging Face
checkpoint directory (`gguf_to_hf`), the first step of the demo (ARCHITECTURE.md §6)."""

from __future__ import annotations

from .gguf_source import SUPPORTED_ARCHITECTURES, gguf_to_hf, permute_qk, unpermute_qk

__all__ = ["SUPPORTED_ARCHITECTURES", "gguf_to_hf", "permute_qk", "unpermute_qk"]
