"""Importance statistics (llama.cpp's *imatrix*): for every linear layer of the decoder and the
untied output projection, the mean of x² per input column over the calibration tokens, computed
layer by layer through the engine on the unquantized weights (`compute_imatrix`,
`lowbit imatrix`). `lowbit convert --imatrix` passes each weight's vector as the `importance` of
its scale search (k-quants, legacy ggml types, iq4_nl and the group-affine clip search).

Files (`save_imatrix`, `load_imatrix`) use the layout of llama.cpp's GGUF imatrix files: `general.type`
= "imatrix", `imatrix.chunk_count`, `imatrix.chunk_size`, `imatrix.datasets`, and per weight (by
its GGUF name, `blk.3.attn_q.weight`) two float32 tensors: `<name>.in_sum2` (Σ x² per input
column, shape (cols,)) and `<name>.counts` (tokens summed, shape (1,)). lowbit's own provenance
(calibration text hash, seed, sizes) is under `lowbit.calibration` (JSON). Compatibility with
llama.cpp's loader follows its documented layout and was not tested against llama.cpp itself.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from ..conversion._files import publish_file
from ..conversion.gguf_source import GGUF_BLOCK_NAMES
from ..conversion.hf_source import resolve_source
from ..errors import DestinationExistsError, FormatError, ParameterError
from .capture import TAP_LINEARS, check_model, collect, embed, layer_weights, rms_norm
from .data import calibration_tokens

__all__ = ["Imatrix", "compute_imatrix", "load_imatrix", "save_imatrix"]

_HF_TO_GGUF = {hf: gg for gg, hf in GGUF_BLOCK_NAMES.items()}


@dataclass
class Imatrix:
    """Per weight (HF name, `model.layers.3.self_attn.q_proj.weight`): Σ x² per input column
    (float64 (cols,)) and the tokens summed. `provenance` describes the calibration data."""

    sum_sq: dict[str, npt.NDArray[np.float64]] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    chunk_size: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)

    def importance(self, name: str) -> npt.NDArray[np.float32] | None:
        """Mean x² per input column of weight `name`, float32 (cols,), or None if not covered."""
        if name not in self.sum_sq:
            return None
        return (self.sum_sq[name] / max(self.tokens[name], 1)).astype(np.float32)

    @property
    def calib_sha256(self) -> str | None:
        v = self.provenance.get("text_sha256")
        return v if isinstance(v, str) else None


def compute_imatrix(
    src: str | os.PathLike[str],
    *,
    calib: Sequence[str | os.PathLike[str]] | None = None,
    n_samples: int = 128,
    seq_len: int = 512,
    seed: int = 0,
    progress: bool = True,
    isa: str | None = None,
) -> Imatrix:
    """Run the calibration text (`calib` files, default: the packaged text; see
    `lowbit.calib.data`) through `src` (an HF checkpoint, GGUF or LBF file: anything `convert`
    reads), layer by layer on its unquantized (dequantized) weights, and return the importance
    statistics of every decoder linear. Memory: one layer's weights and `n_samples · seq_len ×
    hidden` float32 activations. Raises UnsupportedError (a model the engine does not run) and
    ParameterError (no tokenizer, calibration text too short) before any layer runs."""
    with resolve_source(src) as source:
        tensors = {t.name: t for t in source.tensors}
        n_layers = check_model(source.config, tensors)
        if source.tokenizer_json is None:
            raise ParameterError(f"{source.path}: no tokenizer.json, which the calibration text needs")
        cal = calibration_tokens(source.tokenizer_json, files=calib, n_samples=n_samples, seq_len=seq_len, seed=seed)
        x = embed(tensors, cal.tokens)
        out = Imatrix(chunk_size=seq_len, provenance=cal.to_json())
        with tqdm(total=n_layers * x.shape[0], unit="tok", desc="imatrix", disable=not progress) as bar:
            for i in range(n_layers):
                w = layer_weights(tensors, i)
                x, stats = collect(source.config, w, x, seq_len, isa=isa, on_chunk=bar.update)
                for tap, lins in TAP_LINEARS.items():
                    for lin in lins:
                        name = f"model.layers.{i}.{lin}.weight"
                        out.sum_sq[name] = stats.sum_sq[tap]
                        out.tokens[name] = stats.tokens
        if "lm_head.weight" in tensors:  # the output projection reads the final norm's output
            eps = float(source.config.get("rms_norm_eps", 1e-6))
            norm = tensors["model.norm.weight"].load().astype(np.float64)
            acc = np.zeros(x.shape[1])
            for c in range(0, x.shape[0], 4096):
                xn = rms_norm(x[c : c + 4096], norm, eps)
                acc += (xn * xn).sum(0)
            out.sum_sq["lm_head.weight"] = acc
            out.tokens["lm_head.weight"] = x.shape[0]
        return out


def _gguf_name(hf: str) -> str:
    if hf == "lm_head.weight":
        return "output.weight"
    parts = hf.split(".")
    if len(parts) == 6 and parts[:2] == ["model", "layers"] and f"{parts[3]}.{parts[4]}" in _HF_TO_GGUF:
        return f"blk.{parts[2]}.{_HF_TO_GGUF[parts[3] + '.' + parts[4]]}.weight"
    raise ParameterError(f"{hf!r} is not a decoder linear weight")


def save_imatrix(im: Imatrix, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
    """Write `im` as a GGUF imatrix file (see the module doc), atomically: a temporary file in
    the destination's folder, fsynced, renamed."""
    import gguf

    dst = Path(path)
    if dst.exists() and not overwrite:
        raise DestinationExistsError(f"{dst} exists (pass overwrite=True / --overwrite to replace it)")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent if str(dst.parent) else ".")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        w = gguf.GGUFWriter(str(tmp), arch="", use_temp_file=False)
        w.add_type("imatrix")
        w.add_uint32("imatrix.chunk_count", max(im.tokens.values(), default=0) // max(im.chunk_size, 1))
        w.add_uint32("imatrix.chunk_size", im.chunk_size)
        w.add_array("imatrix.datasets", [str(s) for s in im.provenance.get("sources", [])] or ["unknown"])
        w.add_string("lowbit.calibration", json.dumps(im.provenance))
        for name in sorted(im.sum_sq):
            g = _gguf_name(name)
            w.add_tensor(f"{g}.in_sum2", im.sum_sq[name].astype(np.float32))
            w.add_tensor(f"{g}.counts", np.array([im.tokens[name]], np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        publish_file(tmp, dst, overwrite)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_imatrix(path: str | os.PathLike[str]) -> Imatrix:
    """Read a GGUF imatrix file (lowbit's or llama.cpp's layout). Raises FormatError for a file
    that is not one."""
    import gguf

    try:
        r = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise FormatError(f"{path}: not a GGUF imatrix file ({e})", 0) from None
    f = r.get_field("general.type")
    if f is None or f.contents() != "imatrix":
        raise FormatError(f"{path}: a GGUF file but not an imatrix (general.type is not 'imatrix')", 0)
    gguf_to_hf = {v: k for k, v in _HF_TO_GGUF.items()}
    sums: dict[str, npt.NDArray[np.float64]] = {}
    counts: dict[str, int] = {}
    for t in r.tensors:
        base, _, kind = t.name.rpartition(".")
        parts = base.split(".")
        if base == "output.weight":
            hf = "lm_head.weight"
        elif len(parts) == 4 and parts[0] == "blk" and parts[2] in gguf_to_hf and parts[1].isdigit():
            hf = f"model.layers.{int(parts[1])}.{gguf_to_hf[parts[2]]}.weight"
        else:
            continue  # a tensor lowbit does not quantize (e.g. MoE experts): ignored
        if kind == "in_sum2":
            sums[hf] = np.asarray(t.data, dtype=np.float64).reshape(-1)
        elif kind == "counts":
            counts[hf] = int(np.asarray(t.data).reshape(-1)[0])
    if set(sums) != set(counts):
        raise FormatError(f"{path}: in_sum2 and counts tensors do not pair up", 0)
    cs = r.get_field("imatrix.chunk_size")
    prov = r.get_field("lowbit.calibration")
    return Imatrix(
        sum_sq=sums,
        tokens=counts,
        chunk_size=int(cs.contents()) if cs is not None else 0,
        provenance=json.loads(prov.contents()) if prov is not None else {},
    )
