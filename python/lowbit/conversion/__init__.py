"""Conversion between checkpoint formats.

- `convert(src, out, type)`: an HF checkpoint dir, GGUF file or HF repo id → an LBF file,
  quantized by a recipe (`RECIPES`) or a single qtype, streaming tensor by tensor.
- `export_hf(lbf, dir)` / `export_gguf(lbf, file)`: an LBF model back to an HF checkpoint
  (dequantized) or a GGUF file (ggml types, bytes copied).
- `gguf_to_hf(gguf, dir)`: a llama GGUF file → an HF checkpoint (the demo's first step).
- Sources: `resolve_source`, `open_hf_checkpoint`, `open_gguf`, `open_lbf` (see `source.py`).
"""

from __future__ import annotations

from .export_gguf import export_gguf
from .gguf_source import SUPPORTED_ARCHITECTURES, gguf_to_hf, open_gguf, permute_qk, unpermute_qk
from .hf_source import open_hf_checkpoint, resolve_source
from .lbf_source import export_hf, open_lbf
from .pipeline import KNOWN_ARCHITECTURES, ConvertReport, convert, format_plan
from .recipes import FALLBACK, RECIPES, PlanEntry, Recipe, make_plan
from .safetensors_io import SafetensorsFile, SafetensorsWriter

__all__ = [
    "FALLBACK",
    "KNOWN_ARCHITECTURES",
    "RECIPES",
    "SUPPORTED_ARCHITECTURES",
    "ConvertReport",
    "PlanEntry",
    "Recipe",
    "SafetensorsFile",
    "SafetensorsWriter",
    "convert",
    "export_gguf",
    "export_hf",
    "format_plan",
    "gguf_to_hf",
    "make_plan",
    "open_gguf",
    "open_hf_checkpoint",
    "open_lbf",
    "permute_qk",
    "resolve_source",
    "unpermute_qk",
]
