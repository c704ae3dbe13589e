"""Mixed precision under a size budget (`lowbit convert --target-bpw`): measure how much each
tensor's quantization costs the model (`measure_sensitivity`), then choose a qtype per tensor
that minimises the predicted loss within the bytes allowed (`allocate`).

The loss is the mean next-token KL divergence KLD(f32 model ‖ quantized model), modelled as a sum
over tensors of `α_t · e_t(q)`:

- `e_t(q) = tr(ΔW H ΔWᵀ)`, ΔW = deq(quantize(W, q)) − W (float32 (rows, cols)), H = Σ x xᵀ of
  the linear's inputs over all calibration tokens (float64 (cols, cols)): the squared output
  error Σ‖ΔW x‖², exact per candidate for the cost of one quantization and one product.
- `α_t = KLD_t / e_t(probe)`: tensor t alone quantized to its *probe* candidate (the one whose
  bits per weight is closest to `PROBE_BPW`), the model run from its layer on, KLD measured on the
  probe tokens. KLD is quadratic in a small logit perturbation and e_t quadratic in ΔW, so the
  ratio is a per-tensor constant to first order. It carries what a plain output-error sum
  misses: errors made at different depths and in different roles reach the logits unequally.
- The token embedding and `lm_head` (an untied head, or the embedding when it is tied and serves
  both ends) are measured directly: one KLD per candidate, no α.

Measurement streams the layers once, never holding the model: layer i's float weights are read
from the source, the f32 hidden states of all calibration samples run through it (their taps give
H), and in the same pass the *probe states* (the first `probe_samples` samples, truncated to
`probe_len` tokens): the unperturbed reference and every probe started so far (the probes of a
layer's linears start from the reference at that layer's input). The probes quantize weights
only (dequantized float32 weights in the layer), so the measured KLD is the weight error's
alone. At the end every probe state goes through the final RMSNorm and the head (float32
matmul, log-softmax in float64). The reference probe state and the same tokens' states from the
full calibration pass must give KLD 0 (each sequence is computed independently of its batch):
`Sensitivity.reference_kld_check`.

Allocation is a multiple-choice knapsack solved greedily: per tensor the options' lower convex
hull of (bytes, predicted loss); every tensor starts at its cheapest option and hull steps are
taken by the best Δloss/Δbytes (a heap) while they fit. Where the next step does not fit, one more
pass spends what is left on single upgrades (any undominated option of any tensor, one per tensor):
an exact knapsack over the leftover counted in units of 1/`FILL_UNITS` of the blocked step's
bytes (costs rounded up, so the result always fits). This is within one hull step of the optimum
(the greedy's prefix is the LP relaxation's solution) and monotone in the budget: within a blocked
step the fill's optimum only grows with the leftover, and no allocation below the blocked step's
end beats taking it (LP bound). Bytes are exact (`_core.layout`: rows × row bytes).

With `importance` (the imatrix, GPTQ and AWQ conversions) every candidate is quantized with the
importance mean x² per input column (`LayerStats.importance`; `lm_head`: of the final norm's
output; the embedding has none), as those methods weight their scale search.
"""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from .. import _core
from ..calib.capture import TAP_LINEARS, check_model, collect, embed, layer_forward, layer_weights, rms_norm
from ..calib.data import CalibrationSet
from ..conversion.recipes import RAGGED
from ..conversion.source import SourceTensor
from ..errors import ParameterError, ShapeError
from ..eval import log_softmax
from ..qtensor import QTensor, quantize
from .gptq import quad_error

__all__ = [
    "DEFAULT_CANDIDATES",
    "GGUF_CANDIDATES",
    "PROBE_BPW",
    "Allocation",
    "Option",
    "Sensitivity",
    "TensorSensitivity",
    "allocate",
    "check_target",
    "measure_sensitivity",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

DEFAULT_CANDIDATES: tuple[str, ...] = ("int2-g64", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q8_0")
"""The qtypes `measure_sensitivity` tries by default, cheapest first."""
GGUF_CANDIDATES: tuple[str, ...] = ("q2_k", "q3_k", "iq4_nl", "q4_0", "q4_k", "q5_0", "q5_k", "q6_k", "q8_0")
"""The default for a GGUF-compatible file: ggml types only, the legacy 32-value types included
for rows that are not a multiple of 256 (k-quants there are skipped)."""
PROBE_BPW = 4.0
"""The probe candidate of a tensor is its option with bits per weight closest to this."""
EMBED = "model.embed_tokens.weight"
HEAD = "lm_head.weight"
LOGIT_CHUNK_VALUES = 1 << 22
"""Logits computed at a time in the head stage (tokens × vocab; float64: 32 MiB)."""
LAYER_CHUNK_TOKENS = 4096
"""Probe tokens per engine call."""
FILL_UNITS = 1024
"""The leftover-filling knapsack counts bytes in units of the blocked step's bytes / FILL_UNITS."""

_LINEAR = re.compile(r"model\.layers\.(\d+)\.((?:self_attn|mlp)\.[a-z]+_proj)\.weight")
_TAP_OF = {lin: tap for tap, lins in TAP_LINEARS.items() for lin in lins}


@dataclass(frozen=True)
class Option:
    """One candidate of one tensor. `requested`: the candidate as given; `qtype`: what is stored
    (its ragged k-type on rows that are not a multiple of 256); `nbytes`: exact bytes of the
    tensor's data; `error`: e = tr(ΔW H ΔWᵀ) (for the embedding H is the one-hot inputs' — Σ over
    calibration tokens of ‖ΔW[token]‖²); `predicted`: the predicted ΔKLD, α · e, or for the
    embedding and lm_head the KLD measured with this option (nats per token)."""

    requested: str
    qtype: str
    nbytes: int
    error: float
    predicted: float


@dataclass
class TensorSensitivity:
    """A tensor's options, cheapest first. `alpha`: ΔKLD per unit of e (None when measured
    directly); `probe`: the requested candidate α was measured with, `probe_kld` its KLD;
    `skipped`: requested candidate → why it does not fit this tensor."""

    name: str
    shape: tuple[int, int]
    alpha: float | None
    probe: str | None
    probe_kld: float | None
    options: list[Option]
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]


@dataclass
class Sensitivity:
    """`measure_sensitivity`'s result: per tensor name its sensitivity; `probe_tokens`: tokens
    the KLDs are averaged over; `reference_kld_check`: KLD of the reference probe state against
    the same tokens from the full calibration pass (0 by construction, checked)."""

    tensors: dict[str, TensorSensitivity]
    probe_tokens: int
    reference_kld_check: float

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (for `quantization.params` or a report file)."""
        return {
            "probe_tokens": self.probe_tokens,
            "reference_kld_check": self.reference_kld_check,
            "tensors": {
                n: {
                    "shape": list(t.shape),
                    "alpha": t.alpha,
                    "probe": t.probe,
                    "probe_kld": t.probe_kld,
                    "options": [asdict(o) for o in t.options],
                    "skipped": dict(t.skipped),
                }
                for n, t in self.tensors.items()
            },
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Sensitivity:
        """The inverse of `to_json`."""
        tensors = {}
        for n, t in d["tensors"].items():
            shape = (int(t["shape"][0]), int(t["shape"][1]))
            opts = [Option(**o) for o in t["options"]]
            tensors[n] = TensorSensitivity(n, shape, t["alpha"], t["probe"], t["probe_kld"], opts, dict(t["skipped"]))
        return cls(tensors, int(d["probe_tokens"]), float(d["reference_kld_check"]))


# --------------------------------------------------------------------------------------------
# Measurement


def _fit(requested: str, shape: tuple[int, int], gguf_compatible: bool, ggml: set[str]) -> tuple[str, int] | str:
    """(stored qtype, bytes) of candidate `requested` on a (rows, cols) tensor, or why it does
    not fit: with `gguf_compatible` only ggml types whose blocks divide the row length; otherwise
    k-quants become their ragged k-type."""
    rows, cols = shape
    name = RAGGED.get(requested, requested) if not gguf_compatible else requested
    try:
        canonical, _, _, row_bytes = _core.layout(name, rows, cols)
    except ShapeError as e:
        return str(e)
    if gguf_compatible and canonical not in ggml:
        return f"{canonical} is not a ggml type (gguf_compatible)"
    return canonical, rows * row_bytes


def _normed(x: F32, norm: F64, eps: float) -> F32:
    """The final RMSNorm of hidden states `x` (tokens, hidden), computed in float64."""
    return rms_norm(x, norm, eps).astype(np.float32)


def _klds(ref: F32, head: F32, states: Sequence[F32], state_head: F32, norm: F64, eps: float) -> list[float]:
    """Mean KLD(ref ‖ state) per token for each of `states` (float32 (tokens, hidden), final
    hidden states before the norm): the reference's logits through `head`, the states' through
    `state_head` (float32 (vocab, hidden) each)."""
    n = ref.shape[0]
    chunk = max(1, LOGIT_CHUNK_VALUES // head.shape[0])
    sums = [0.0] * len(states)
    for s in range(0, n, chunk):
        lp = log_softmax(_normed(ref[s : s + chunk], norm, eps) @ head.T)
        p = np.exp(lp)
        for k, x in enumerate(states):
            lq = log_softmax(_normed(x[s : s + chunk], norm, eps) @ state_head.T)
            sums[k] += float(np.einsum("ij,ij->", p, lp - lq))
    return [v / n for v in sums]


@dataclass
class _Plan:
    """What `measure_sensitivity` does to one tensor: its fitting candidates (requested → (qtype,
    bytes)) and the skipped ones."""

    name: str
    shape: tuple[int, int]
    fits: dict[str, tuple[str, int]]
    skipped: dict[str, str]

    @property
    def probe(self) -> str:
        return min(self.fits, key=lambda c: abs(8 * self.fits[c][1] / (self.shape[0] * self.shape[1]) - PROBE_BPW))


def _quantized(w: F32, qtype: str, imp: F32 | None, h: F32 | None) -> tuple[QTensor, F32, float]:
    """`w` quantized to `qtype`: the tensor, its dequantized values and e = tr(ΔW H ΔWᵀ) (0.0
    without `h`)."""
    q = quantize(w, qtype, importance=imp)
    deq = q.dequantize()
    return q, deq, quad_error(deq - w, h) if h is not None else 0.0


def measure_sensitivity(
    config: Mapping[str, Any],
    tensors: Mapping[str, SourceTensor],
    cal: CalibrationSet,
    names: Sequence[str],
    *,
    candidates: Sequence[str] = DEFAULT_CANDIDATES,
    gguf_compatible: bool = False,
    importance: bool = False,
    probe_samples: int = 2,
    probe_len: int = 256,
    progress: bool = True,
) -> Sensitivity:
    """Measure the sensitivity of the 2-D tensors `names` (decoder linears
    `model.layers.{i}.{self_attn,mlp}.*_proj.weight`, `model.embed_tokens.weight`,
    `lm_head.weight`) of a model (`config`: its HF config; `tensors`: `{t.name: t for t in
    source.tensors}`) on the calibration set `cal` (see the module doc).

    `candidates`: requested qtypes (any `lowbit.quantize` name); with `gguf_compatible` only
    ggml types, k-quants stay themselves (a tensor whose rows they do not divide skips them),
    otherwise k-quants become their ragged k-type where needed (`recipes.RAGGED`).
    `importance`: quantize with the importance of each linear's inputs (see the module doc).
    Probe tokens: the first `probe_samples` samples, their first `probe_len` tokens.

    Memory: the calibration pass holds `cal.n_samples · cal.seq_len × hidden` float32 and one
    layer's weights, statistics (H per tap) and candidate quantizations; the probe states take
    `n_probes × probe_tokens × hidden × 4` bytes, n_probes = 1 + the linears in `names` + (with
    the embedding) one per candidate; the head stage one dequantized head at a time.

    Raises ParameterError (a name that is not an allocatable tensor of the model, duplicate or
    unknown candidates, a tensor no candidate fits, probe sizes out of range), plus what
    `check_model` and `lowbit.quantize` raise, before any layer runs."""
    n_layers = check_model(config, tensors)
    if not 1 <= probe_samples <= cal.n_samples:
        raise ParameterError(
            f"probe_samples must be in 1..{cal.n_samples} (the calibration samples), got {probe_samples}"
        )
    if probe_len < 1:
        raise ParameterError(f"probe_len must be at least 1, got {probe_len}")
    if not candidates or len(set(candidates)) != len(candidates):
        raise ParameterError(f"candidates must be distinct and at least one, got {list(candidates)}")
    type_table = _core.qtypes()
    known = {str(t["name"]) for t in type_table}
    for c in candidates:
        if c.split("-")[0] not in known:
            raise ParameterError(f"unknown candidate qtype {c!r}")
    ggml = {str(t["name"]) for t in type_table if t["gguf_type"] is not None}
    if len(set(names)) != len(names):
        raise ParameterError("names holds duplicates")
    by_layer: dict[int, list[str]] = {}
    plans: dict[str, _Plan] = {}
    for name in names:
        m = _LINEAR.fullmatch(name)
        linear = m is not None and int(m.group(1)) < n_layers and m.group(2) in _TAP_OF
        if name not in tensors or not (linear or name in (EMBED, HEAD)) or len(tensors[name].shape) != 2:
            raise ParameterError(f"{name!r} is not a decoder linear, the embedding or lm_head of this model")
        shape = (int(tensors[name].shape[0]), int(tensors[name].shape[1]))
        fits: dict[str, tuple[str, int]] = {}
        skipped: dict[str, str] = {}
        for c in candidates:
            r = _fit(c, shape, gguf_compatible, ggml)
            if isinstance(r, str):
                skipped[c] = r
            else:
                fits[c] = r
        if not fits:
            raise ParameterError(
                f"no candidate fits {name} {shape}: {'; '.join(f'{k}: {v}' for k, v in skipped.items())}"
            )
        plans[name] = _Plan(name, shape, fits, skipped)
        if m is not None:
            by_layer.setdefault(int(m.group(1)), []).append(name)

    n_probe = min(probe_len, cal.seq_len)
    ptok = np.ascontiguousarray(cal.tokens[:probe_samples, :n_probe])
    pt = ptok.size
    head_name = HEAD if HEAD in tensors else EMBED
    embed_plan = plans.get(EMBED)
    n_states = 1 + sum(len(v) for v in by_layer.values()) + (len(embed_plan.fits) if embed_plan else 0)
    x = embed(tensors, cal.tokens)
    hidden = x.shape[1]
    states = np.empty((n_states, pt, hidden), np.float32)  # probe states; [0] is the reference
    states[0] = embed(tensors, ptok)
    active = 1
    out: dict[str, TensorSensitivity] = {}
    embed_q: dict[str, QTensor] = {}  # the embedding's candidates, for a tied head at the end
    embed_errors: dict[str, float] = {}
    started: dict[str, int] = {}  # tensor or embedding candidate → its probe state
    if embed_plan is not None:
        table = tensors[EMBED].load().reshape(embed_plan.shape)
        counts = np.bincount(cal.tokens.reshape(-1), minlength=embed_plan.shape[0]).astype(np.float64)
        for c, (qt, _) in embed_plan.fits.items():
            q, deq, _ = _quantized(table, qt, None, None)
            dw = deq - table
            embed_errors[c] = float(counts @ np.einsum("ij,ij->i", dw, dw, dtype=np.float64))
            embed_q[c] = q
            started[f"{EMBED}:{c}"] = active
            states[active] = deq[ptok.reshape(-1)]
            active += 1
        del table

    bar = tqdm(total=n_layers + 1, unit="layer", desc="sensitivity", disable=not progress)
    try:
        for i in range(n_layers):
            w = layer_weights(tensors, i)
            lins = by_layer.get(i, [])
            x, stats = collect(config, w, x, cal.seq_len, hessian=bool(lins))
            x0 = states[0].copy()  # the reference at this layer's input: where its probes start
            flat = states[:active].reshape(-1, hidden)
            per = max(1, LAYER_CHUNK_TOKENS // n_probe) * n_probe
            for s in range(0, flat.shape[0], per):
                flat[s : s + per] = layer_forward(config, w, flat[s : s + per], n_probe)[0]
            for name in lins:
                key = name.split(".", 3)[3]
                tap = _TAP_OF[key.removesuffix(".weight")]
                h = stats.hessian[tap].astype(np.float32)
                imp = stats.importance(tap) if importance else None
                plan = plans[name]
                options: list[Option] = []
                for c, (qt, nbytes) in plan.fits.items():
                    _, deq, err = _quantized(w[key], qt, imp, h)
                    if c == plan.probe:
                        states[active] = layer_forward(config, {**w, key: deq}, x0, n_probe)[0]
                        started[name] = active
                        active += 1
                    options.append(Option(c, qt, nbytes, err, 0.0))
                out[name] = TensorSensitivity(name, plan.shape, None, plan.probe, None, options, plan.skipped)
            bar.update(1)

        norm = tensors["model.norm.weight"].load().astype(np.float64)
        eps = float(config.get("rms_norm_eps", 1e-6))
        head = tensors[head_name].load().reshape(tensors[head_name].shape)
        ref = states[0]
        full_ref = x.reshape(cal.n_samples, cal.seq_len, hidden)[:probe_samples, :n_probe].reshape(pt, hidden)
        # every probe whose head is the float one, and the reference check
        float_head = [k for k in started if not (k.startswith(EMBED + ":") and head_name == EMBED)]
        klds = _klds(ref, head, [full_ref, *(states[started[k]] for k in float_head)], head, norm, eps)
        check = klds[0]
        if check != 0.0:
            raise AssertionError(f"the reference probe state differs from the calibration pass (KLD {check})")
        measured = dict(zip(float_head, klds[1:], strict=True))
        if head_name == EMBED and embed_plan is not None:  # tied: the quantized embedding at both ends
            for c, q in embed_q.items():
                k = f"{EMBED}:{c}"
                measured[k] = _klds(ref, head, [states[started[k]]], q.dequantize(), norm, eps)[0]
        if embed_plan is not None:
            options = [
                Option(c, qt, nb, embed_errors[c], measured[f"{EMBED}:{c}"]) for c, (qt, nb) in embed_plan.fits.items()
            ]
            out[EMBED] = TensorSensitivity(EMBED, embed_plan.shape, None, None, None, options, embed_plan.skipped)
        if HEAD in plans:
            plan = plans[HEAD]
            xn = _normed(x, norm, eps)
            h = (xn.T @ xn).astype(np.float32)
            mean_sq = np.einsum("ij,ij->j", xn, xn, dtype=np.float64) / xn.shape[0]
            imp = mean_sq.astype(np.float32) if importance else None
            options = []
            for c, (qt, nb) in plan.fits.items():
                _, deq, err = _quantized(head, qt, imp, h)
                kld = _klds(ref, head, [ref], deq, norm, eps)[0]
                options.append(Option(c, qt, nb, err, kld))
            out[HEAD] = TensorSensitivity(HEAD, plan.shape, None, None, None, options, plan.skipped)
        for name, t in out.items():
            if name in started:
                e = next(o.error for o in t.options if o.requested == t.probe)
                t.probe_kld = measured[name]
                t.alpha = t.probe_kld / e if e > 0 else 0.0
                t.options = [Option(o.requested, o.qtype, o.nbytes, o.error, t.alpha * o.error) for o in t.options]
        bar.update(1)
    finally:
        bar.close()
    ordered = {n: out[n] for n in names}
    for t in ordered.values():
        t.options.sort(key=lambda o: (o.nbytes, o.predicted))
    return Sensitivity(ordered, pt, check)


# --------------------------------------------------------------------------------------------
# Allocation


@dataclass(frozen=True)
class Allocation:
    """A plan under a budget. `choice`: tensor → stored qtype; `chosen`: tensor → its option;
    `shapes`: tensor → (rows, cols); `nbytes`: bytes of the allocated tensors; `bits_per_weight`:
    of the whole model, (nbytes + fixed_bytes) · 8 / n_weights; `predicted_kld`: Σ of the chosen
    options' predicted ΔKLD (nats per token)."""

    choice: dict[str, str]
    chosen: dict[str, Option]
    shapes: dict[str, tuple[int, int]]
    nbytes: int
    bits_per_weight: float
    predicted_kld: float

    def table(self) -> str:
        """The plan as text: one line per tensor (qtype, bits per weight, predicted ΔKLD), then
        the totals."""
        width = max(len(n) for n in self.choice)
        lines = [f"{'tensor':<{width}}  {'qtype':<10} {'bpw':>6}  {'ΔKLD':>10}"]
        for name, o in self.chosen.items():
            rows, cols = self.shapes[name]
            lines.append(f"{name:<{width}}  {o.qtype:<10} {8 * o.nbytes / (rows * cols):6.3f}  {o.predicted:10.3e}")
        lines.append(
            f"{'total':<{width}}  {'':<10} {self.bits_per_weight:6.3f}  {self.predicted_kld:10.3e}  "
            f"({self.nbytes} bytes allocated)"
        )
        return "\n".join(lines)


def _hull(options: Sequence[Option]) -> list[Option]:
    """The lower convex hull of (bytes, predicted) over the options no cheaper option beats,
    cheapest first: along it each byte buys less than the one before."""
    frontier: list[Option] = []
    for o in sorted(options, key=lambda o: (o.nbytes, o.predicted)):
        if not frontier or (o.predicted < frontier[-1].predicted and o.nbytes > frontier[-1].nbytes):
            frontier.append(o)
    hull: list[Option] = []
    for o in frontier:
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b when a → o gains at least as much per byte as a → b
            gain_b, gain_o = a.predicted - b.predicted, a.predicted - o.predicted
            if gain_b * (o.nbytes - a.nbytes) <= gain_o * (b.nbytes - a.nbytes):
                hull.pop()
            else:
                break
        hull.append(o)
    return hull


def check_target(
    shapes: Mapping[str, tuple[int, int]],
    candidates: Sequence[str],
    target_bpw: float,
    *,
    gguf_compatible: bool = False,
    n_weights: int,
    fixed_bytes: int,
) -> None:
    """Before measuring: ParameterError when `target_bpw` lies outside what the candidates can
    store for tensors of these `shapes` (every tensor at its smallest … at its largest fitting
    candidate; `allocate` checks the exact range, whose top is every tensor's least-loss option),
    or when no candidate fits a tensor."""
    ggml = {str(t["name"]) for t in _core.qtypes() if t["gguf_type"] is not None}
    low = high = 0
    for name, shape in shapes.items():
        sizes = [r[1] for c in candidates if not isinstance(r := _fit(c, shape, gguf_compatible, ggml), str)]
        if not sizes:
            raise ParameterError(f"no candidate of {', '.join(candidates)} fits {name} {shape}")
        low, high = low + min(sizes), high + max(sizes)
    budget = _target_bytes(target_bpw, n_weights) - fixed_bytes if math.isfinite(target_bpw) else -1
    if not low <= budget <= high:
        lo, hi = (8 * (b + fixed_bytes) / n_weights for b in (low, high))
        raise ParameterError(
            f"target {target_bpw:g} bpw is outside the feasible {lo:.4f} … {hi:.4f} bpw for these candidates"
        )


def _target_bytes(target_bpw: float, n_weights: int) -> int:
    """Bytes of `target_bpw` bits per weight, rounded down (a product that is an integer up to
    float rounding counts as that integer)."""
    b = target_bpw * n_weights / 8
    return round(b) if abs(b - round(b)) < 1e-6 * max(1.0, b) else math.floor(b)


def _fill(sens: Sensitivity, chosen: dict[str, Option], leftover: int, step_bytes: int) -> dict[str, Option]:
    """Upgrade at most one option per tensor of `chosen` within `leftover` bytes, maximising the
    predicted gain: a knapsack on a grid of `step_bytes / FILL_UNITS` bytes, costs rounded up."""
    unit = step_bytes / FILL_UNITS
    cap = int(leftover // unit)
    best = np.zeros(cap + 1)  # the largest gain within c units, over the tensors so far
    picks: list[tuple[str, list[tuple[int, Option]], npt.NDArray[np.intp]]] = []
    for name, t in sens.tensors.items():
        cur = chosen[name]
        ups = [(math.ceil((o.nbytes - cur.nbytes) / unit), o) for o in t.options if o.predicted < cur.predicted]
        ups = [(w, o) for w, o in ups if 0 < w <= cap]
        if not ups:
            continue
        new, arg = best.copy(), np.full(cap + 1, -1)
        for j, (w, o) in enumerate(ups):
            cand = best[: cap + 1 - w] + (cur.predicted - o.predicted)
            better = cand > new[w:]
            new[w:][better] = cand[better]
            arg[w:][better] = j
        picks.append((name, ups, arg))
        best = new
    out, c = dict(chosen), cap
    for name, ups, arg in reversed(picks):
        if arg[c] >= 0:
            w, out[name] = ups[arg[c]]
            c -= w
    return out


def allocate(sens: Sensitivity, target_bpw: float, *, n_weights: int, fixed_bytes: int) -> Allocation:
    """The qtype of each tensor of `sens` minimising the predicted KLD with at most
    `target_bpw × n_weights / 8 − fixed_bytes` bytes for them (`n_weights`: the model's weights,
    `fixed_bytes`: the bytes of everything not allocated), by the greedy of the module doc.

    Raises ParameterError for n_weights < 1, fixed_bytes < 0, a tensor without options, or a
    target outside the feasible range (all tensors at their cheapest option … all at their
    lowest-loss option), which the message gives in bits per weight."""
    if n_weights < 1 or fixed_bytes < 0:
        raise ParameterError(f"n_weights must be ≥ 1 and fixed_bytes ≥ 0, got {n_weights} and {fixed_bytes}")
    if not sens.tensors or any(not t.options for t in sens.tensors.values()):
        raise ParameterError("every tensor to allocate needs at least one option")
    if not math.isfinite(target_bpw):
        raise ParameterError(f"target_bpw must be finite, got {target_bpw}")
    hulls = {n: _hull(t.options) for n, t in sens.tensors.items()}
    low = sum(h[0].nbytes for h in hulls.values())
    high = sum(h[-1].nbytes for h in hulls.values())
    budget = _target_bytes(target_bpw, n_weights) - fixed_bytes
    if not low <= budget <= high:
        lo, hi = (8 * (b + fixed_bytes) / n_weights for b in (low, high))
        raise ParameterError(
            f"target {target_bpw:g} bpw is outside the feasible {lo:.4f} … {hi:.4f} bpw for these candidates"
        )
    at = dict.fromkeys(hulls, 0)
    spent = low

    def ratio(name: str) -> float:
        a, b = hulls[name][at[name]], hulls[name][at[name] + 1]
        return -(a.predicted - b.predicted) / (b.nbytes - a.nbytes)

    heap = [(ratio(name), n, name) for n, name in enumerate(hulls) if len(hulls[name]) > 1]
    heapq.heapify(heap)
    blocked = 0
    while heap:
        _, n, name = heap[0]
        step = hulls[name][at[name] + 1].nbytes - hulls[name][at[name]].nbytes
        if spent + step > budget:
            blocked = step
            break
        heapq.heappop(heap)
        spent += step
        at[name] += 1
        if at[name] + 1 < len(hulls[name]):
            heapq.heappush(heap, (ratio(name), n, name))
    chosen = {name: hulls[name][at[name]] for name in hulls}
    if blocked:
        chosen = _fill(sens, chosen, budget - spent, blocked)
        spent = sum(o.nbytes for o in chosen.values())
    return Allocation(
        choice={n: o.qtype for n, o in chosen.items()},
        chosen=chosen,
        shapes={n: t.shape for n, t in sens.tensors.items()},
        nbytes=spent,
        bits_per_weight=8 * (spent + fixed_bytes) / n_weights,
        predicted_kld=sum(o.predicted for o in chosen.values()),
    )
