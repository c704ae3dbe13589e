"""Evaluation: perplexity of a model on a text, and with a reference model (the unquantized one)
the mean KL divergence of the next-token distributions, ΔPPL and top-1 agreement, all on the same
windows (`lowbit eval`, `lowbit.evaluate`).

Protocol (llama.cpp's `perplexity` convention): the text is tokenized without special tokens and
cut into consecutive, non-overlapping windows of `ctx` tokens; each window is run as a fresh
context, and only the predictions of its second half are scored (the first half gives every scored
token at least `ctx/2` tokens of context). With `tokens=N` only the first N tokens of the text are
used. KL divergence is KL(P_ref ‖ P_model) in nats per scored token, computed in float64.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from .errors import ParameterError
from .model import Model

__all__ = ["EvalReport", "evaluate", "log_softmax"]


@dataclass
class EvalReport:
    """Results of `evaluate`. Perplexities are exp(mean negative log-likelihood, nats); `kld_*`
    are KL(P_ref ‖ P_model) statistics over the scored tokens (nats); `top1_agreement` is the
    fraction of scored positions where both models' most likely token is the same."""

    model: str
    text: str
    ctx: int
    windows: int
    tokens_scored: int
    ppl: float
    bits_per_weight: float
    seconds: float
    reference: str | None = None
    reference_ppl: float | None = None
    delta_ppl: float | None = None
    kld_mean: float | None = None
    kld_median: float | None = None
    kld_p99: float | None = None
    kld_max: float | None = None
    top1_agreement: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        lines = [
            f"model      {self.model}  ({self.bits_per_weight:.3f} bpw)",
            f"text       {self.text}: {self.windows} windows × {self.ctx} tokens, {self.tokens_scored} scored",
            f"PPL        {self.ppl:.4f}",
        ]
        if self.reference is not None:
            lines += [
                f"reference  {self.reference}: PPL {self.reference_ppl:.4f}",
                f"ΔPPL       {self.delta_ppl:+.4f}",
                f"KLD        mean {self.kld_mean:.6f}  median {self.kld_median:.6f}  p99 {self.kld_p99:.6f}  "
                f"max {self.kld_max:.4f}",
                f"top-1      {100 * (self.top1_agreement or 0):.2f} % agreement",
            ]
        lines.append(f"time       {self.seconds:.1f} s ({self.tokens_per_second:.0f} tokens/s per model)")
        return "\n".join(lines)

    @property
    def tokens_per_second(self) -> float:
        """Tokens run through the model (whole windows) per second of this model's forward passes."""
        return float(self.extra.get("model_tokens_per_second", 0.0))


def log_softmax(logits: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
    """log_softmax over the last axis, in float64."""
    z: npt.NDArray[np.float64] = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    out: npt.NDArray[np.float64] = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return out


def _open(m: Model | str | os.PathLike[str], isa: str | None) -> tuple[Model, bool]:
    return (m, False) if isinstance(m, Model) else (Model.load(m, isa=isa), True)


def evaluate(
    model: Model | str | os.PathLike[str],
    text: str | os.PathLike[str],
    *,
    reference: Model | str | os.PathLike[str] | None = None,
    ctx: int = 512,
    tokens: int | None = None,
    progress: bool = True,
    isa: str | None = None,
) -> EvalReport:
    """Perplexity of `model` on `text` (a path to a UTF-8 text file), and with `reference` the KL
    divergence, ΔPPL and top-1 agreement against it on the same windows (see the module doc).
    Models are `Model`s or paths (`Model.load`: an LBF file, or an HF checkpoint dir / GGUF file,
    converted to float32). The text is tokenized with the model's tokenizer."""
    if ctx < 8:
        raise ParameterError(f"ctx must be at least 8 tokens, got {ctx}")
    if tokens is not None and tokens < ctx:
        raise ParameterError(f"tokens ({tokens}) must be at least one window (ctx = {ctx})")
    path = Path(text)
    body = path.read_text(encoding="utf-8-sig")
    m, close_m = _open(model, isa)
    r: Model | None = None
    close_r = False
    try:
        if reference is not None:
            r, close_r = _open(reference, isa)
            if r.vocab_size != m.vocab_size:
                raise ParameterError(f"reference vocabulary ({r.vocab_size}) differs from the model's ({m.vocab_size})")
        if ctx > m.max_context:
            raise ParameterError(f"ctx {ctx} exceeds the model's context of {m.max_context}")
        ids = np.asarray(m.encode(body), dtype=np.uint32)
        if tokens is not None:
            ids = ids[:tokens]
        n_windows = len(ids) // ctx
        if n_windows == 0:
            raise ParameterError(f"{path} has {len(ids)} tokens, fewer than one window of {ctx}")
        first = ctx // 2
        nll, nll_ref, kld, agree = [], [], [], []
        seconds = {"model": 0.0, "reference": 0.0}
        t_start = time.perf_counter()
        for w in tqdm(range(n_windows), desc="eval", unit="window", disable=not progress):
            win = ids[w * ctx : (w + 1) * ctx]
            target = win[first + 1 :].astype(np.int64)
            t0 = time.perf_counter()
            lp = log_softmax(m.logits(win)[first:-1])
            seconds["model"] += time.perf_counter() - t0
            rows = np.arange(len(target))
            nll.append(-lp[rows, target])
            if r is not None:
                t0 = time.perf_counter()
                lq = log_softmax(r.logits(win)[first:-1])
                seconds["reference"] += time.perf_counter() - t0
                nll_ref.append(-lq[rows, target])
                kld.append(np.maximum((np.exp(lq) * (lq - lp)).sum(axis=-1), 0.0))
                agree.append(lq.argmax(axis=-1) == lp.argmax(axis=-1))
        all_nll = np.concatenate(nll)
        rep = EvalReport(
            model=m.source,
            text=str(path),
            ctx=ctx,
            windows=n_windows,
            tokens_scored=len(all_nll),
            ppl=float(np.exp(all_nll.mean())),
            bits_per_weight=m.bits_per_weight,
            seconds=time.perf_counter() - t_start,
            extra={"model_tokens_per_second": n_windows * ctx / max(seconds["model"], 1e-9)},
        )
        if r is not None:
            k = np.concatenate(kld)
            rep.reference = r.source
            rep.reference_ppl = float(np.exp(np.concatenate(nll_ref).mean()))
            rep.delta_ppl = rep.ppl - rep.reference_ppl
            rep.kld_mean = float(k.mean())
            rep.kld_median = float(np.median(k))
            rep.kld_p99 = float(np.quantile(k, 0.99))
            rep.kld_max = float(k.max())
            rep.top1_agreement = float(np.concatenate(agree).mean())
            rep.extra["reference_tokens_per_second"] = n_windows * ctx / max(seconds["reference"], 1e-9)
        return rep
    finally:
        if close_m:
            m.close()
        if r is not None and close_r:
            r.close()
