"""Recipes: which qtype each tensor of a model gets, and the plan that results.

A recipe names a base qtype and a short ordered list of rules `(role, layers, qtype)`; the
first rule that matches a tensor wins, otherwise it gets the base qtype. Roles come from the
Hugging Face names of the llama family (`ROLE_PATTERNS`); `output` is `lm_head.weight`, or the
token embedding when the model ties them (llama.cpp does the same: the tied matrix serves as the
output layer). 1-D tensors (norms, biases) always stay f32.

The k-quant mixes follow llama.cpp's `llama_tensor_get_type` for dense llama-family models:
attn_v and ffn_down get more bits on the layers `use_more_bits` picks (the first and last
eighth and every third layer between), the output matrix gets q6_k. `int4-g128`/`int3-g128`
are the GPTQ/AWQ-style group-affine layouts; where those tools keep embeddings and lm_head in
f16 we store q8_0 (half the bytes, relative RMSE ≈ 0.3 %).

When a tensor's rows are not a multiple of 256 (hidden sizes 576, 896, 960, …), a k-quant
becomes its ragged k-type (`RAGGED`: q4_k → q4_kr, ggml's super-blocks plus one partial
super-block, formats/QUANT_TYPES.md), which keeps k-quant accuracy at k-quant size. With
`gguf_compatible` (the file must export to GGUF) llama.cpp's fallbacks apply instead: `FALLBACK`
gives the next type to try (q4_k → q5_0, q5_k → q5_1, q6_k → q8_0, q2_k/q3_k → q4_0, as measured
with llama-cpp-python 0.3.36's `llama_model_quantize`), and f16 as the last resort. The plan records every substitution.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .. import _core
from ..errors import LowbitError, ParameterError

__all__ = [
    "FALLBACK",
    "RAGGED",
    "RECIPES",
    "ROLE_PATTERNS",
    "PlanEntry",
    "Recipe",
    "Rule",
    "make_plan",
    "parse_tensor_types",
    "role_of",
    "use_more_bits",
]


# --------------------------------------------------------------------------------------------
# Roles

# HF name → (role, layer index or None). The GGUF-style role names make `--tensor-type` patterns
# written for llama-quantize (`attn_v=q8_0`) work unchanged.
ROLE_PATTERNS: tuple[tuple[str, str], ...] = (
    ("token_embd", r"(?:model\.)?embed_tokens\.weight"),
    ("output", r"lm_head\.weight"),
    ("attn_q", r"(?:model\.)?layers\.(\d+)\.self_attn\.q_proj\.weight"),
    ("attn_k", r"(?:model\.)?layers\.(\d+)\.self_attn\.k_proj\.weight"),
    ("attn_v", r"(?:model\.)?layers\.(\d+)\.self_attn\.v_proj\.weight"),
    ("attn_output", r"(?:model\.)?layers\.(\d+)\.self_attn\.o_proj\.weight"),
    ("ffn_gate", r"(?:model\.)?layers\.(\d+)\.mlp\.gate_proj\.weight"),
    ("ffn_up", r"(?:model\.)?layers\.(\d+)\.mlp\.up_proj\.weight"),
    ("ffn_down", r"(?:model\.)?layers\.(\d+)\.mlp\.down_proj\.weight"),
)
_ROLE_RES = tuple((role, re.compile(p)) for role, p in ROLE_PATTERNS)


def role_of(name: str, tied: bool) -> tuple[str, int | None]:
    """(role, layer) of a 2-D tensor; role "other" for names outside the llama family."""
    for role, rx in _ROLE_RES:
        m = rx.fullmatch(name)
        if m:
            if role == "token_embd" and tied:
                role = "output"
            return role, int(m.group(1)) if m.groups() else None
    return "other", None


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's layer choice for the `_M` mixes: the first and last eighth of the layers,
    and every third layer in between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


# --------------------------------------------------------------------------------------------
# The recipe table

# A layer selector: (layer, n_layers, n_gqa) → applies?
Layers = Callable[[int | None, int, int], bool]


def _all(i: int | None, n: int, gqa: int) -> bool:
    return True


def _more_bits(i: int | None, n: int, gqa: int) -> bool:
    return i is not None and use_more_bits(i, n)


def _first(k: int) -> Layers:
    return lambda i, n, gqa: i is not None and i < k


def _first_frac(d: int) -> Layers:
    return lambda i, n, gqa: i is not None and i < n // d


def _gqa_at_least(g: int) -> Layers:
    return lambda i, n, gqa: gqa >= g


@dataclass(frozen=True)
class Rule:
    role: str
    layers: Layers
    qtype: str
    why: str  # shown by `lowbit convert --list-recipes`


@dataclass(frozen=True)
class Recipe:
    name: str
    base: str
    rules: tuple[Rule, ...]
    summary: str


def _r(role: str, layers: Layers, qtype: str, why: str) -> Rule:
    return Rule(role, layers, qtype, why)


_OUT6 = _r("output", _all, "q6_k", "output")
RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("q2_k", "q2_k", (
            _OUT6,
            _r("attn_v", _gqa_at_least(4), "q4_k", "attn_v, GQA ≥ 4"),
            _r("attn_v", _all, "q3_k", "attn_v"),
            _r("attn_output", _all, "q3_k", "attn_output"),
            _r("ffn_down", _all, "q3_k", "ffn_down"),
        ), "≈ 2.9 bpw; llama.cpp's Q2_K mix"),
        Recipe("q3_k_m", "q3_k", (
            _OUT6,
            _r("attn_v", _first(2), "q5_k", "attn_v, first 2 layers"),
            _r("attn_v", _all, "q4_k", "attn_v"),
            _r("attn_output", _all, "q4_k", "attn_output"),
            _r("ffn_down", _first_frac(16), "q5_k", "ffn_down, first 1/16"),
            _r("ffn_down", _all, "q4_k", "ffn_down"),
        ), "≈ 3.9 bpw; llama.cpp's Q3_K_M mix"),
        Recipe("q4_k_s", "q4_k", (
            _OUT6,
            _r("attn_v", _first(4), "q5_k", "attn_v, first 4 layers"),
            _r("ffn_down", _first_frac(8), "q5_k", "ffn_down, first 1/8"),
        ), "≈ 4.6 bpw; llama.cpp's Q4_K_S mix"),
        Recipe("q4_k_m", "q4_k", (
            _OUT6,
            _r("attn_v", _more_bits, "q6_k", "attn_v, use_more_bits"),
            _r("ffn_down", _more_bits, "q6_k", "ffn_down, use_more_bits"),
        ), "≈ 4.9 bpw; llama.cpp's Q4_K_M mix"),
        Recipe("q5_k_m", "q5_k", (
            _OUT6,
            _r("attn_v", _more_bits, "q6_k", "attn_v, use_more_bits"),
            _r("ffn_down", _more_bits, "q6_k", "ffn_down, use_more_bits"),
        ), "≈ 5.7 bpw; llama.cpp's Q5_K_M mix"),
        Recipe("q6_k", "q6_k", (), "≈ 6.6 bpw; every matrix q6_k"),
        Recipe("q8_0", "q8_0", (), "≈ 8.5 bpw; every matrix q8_0 (near lossless)"),
        Recipe("int4-g128", "int4-g128", (
            _r("output", _all, "q8_0", "output"),
            _r("token_embd", _all, "q8_0", "token_embd"),
        ), "≈ 4.2 bpw; GPTQ/AWQ-style 4-bit, groups of 128, embeddings/output q8_0"),
        Recipe("int3-g128", "int3-g128", (
            _r("output", _all, "q8_0", "output"),
            _r("token_embd", _all, "q8_0", "token_embd"),
        ), "≈ 3.2 bpw; 3-bit, groups of 128, embeddings/output q8_0"),
    )
}  # fmt: skip

# Next type to try when a tensor's rows do not fill the type's blocks (then f16).
FALLBACK: dict[str, str] = {"q2_k": "q4_0", "q3_k": "q4_0", "q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}
# The ragged k-type of each k-quant: rows of any length (stored as the k-quant itself when aligned).
RAGGED: dict[str, str] = {k: k + "r" for k in ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k")}


def recipe_for(type_: str) -> Recipe:
    """The recipe named `type_`, or a one-type recipe (every matrix gets that qtype)."""
    if type_ in RECIPES:
        return RECIPES[type_]
    try:
        canonical = _core.layout(type_, 1, 256)[0]
    except LowbitError as e:
        raise ParameterError(f"{type_!r} is neither a recipe ({', '.join(RECIPES)}) nor a qtype: {e}") from None
    return Recipe(canonical, canonical, (), f"every matrix {canonical}")


def parse_tensor_types(specs: Sequence[str]) -> list[tuple[re.Pattern[str], str]]:
    """`REGEX=QTYPE` overrides (repeatable; the first match wins), checked up front."""
    out: list[tuple[re.Pattern[str], str]] = []
    for spec in specs:
        pattern, sep, qtype = spec.rpartition("=")
        if not sep or not pattern or not qtype:
            raise ParameterError(f"--tensor-type {spec!r}: expected REGEX=QTYPE, e.g. 'attn_v=q8_0'")
        try:
            rx = re.compile(pattern)
        except re.error as e:
            raise ParameterError(f"--tensor-type {spec!r}: bad regular expression: {e}") from None
        try:
            canonical = _core.layout(qtype, 1, 256)[0]
        except LowbitError as e:
            raise ParameterError(f"--tensor-type {spec!r}: {e}") from None
        out.append((rx, canonical))
    return out


# --------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class PlanEntry:
    """One tensor's fate. `qtype` is what is stored; `requested` what the recipe or an override
    asked for (they differ after a fallback); bytes are exact tensor data sizes in the file."""

    name: str
    role: str
    layer: int | None
    shape: tuple[int, ...]
    src_dtype: str
    src_bytes: int
    requested: str
    qtype: str
    nbytes: int
    reason: str  # which rule or override chose `requested` ("base", "1-D: f32", ...)
    fallback: str  # why `qtype` differs from `requested` ("ragged: …", "fallback: …"; "" if it does not)
    outliers: int = 0  # the sparse outlier budget (`nbytes` counts its sidecar)
    predicted: float | None = None  # --target-bpw: the predicted ΔKLD of this choice

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / self.numel if self.numel else 0.0


def _fit(qtype: str, shape: tuple[int, ...], gguf_compatible: bool) -> tuple[str, int, str]:
    """(stored qtype, bytes, note): `qtype`, its ragged k-type on rows that are not a multiple of
    256, or (`gguf_compatible`: ggml types only) the first fallback whose blocks fit."""
    rows, cols = shape
    base = next((k for k, r in RAGGED.items() if r == qtype), None)
    if gguf_compatible and base is not None:
        qtype = base
    if not gguf_compatible and qtype in RAGGED:
        canonical, _, _, row_bytes = _core.layout(RAGGED[qtype], rows, cols)
        note = f"ragged: rows of {cols} are not a multiple of 256" if canonical != qtype else ""
        return canonical, rows * row_bytes, note
    tried: list[str] = []
    t: str | None = qtype
    while t is not None:
        try:
            canonical, _, _, row_bytes = _core.layout(t, rows, cols)
        except LowbitError:
            tried.append(t)
            t = FALLBACK.get(t, "f16" if t != "f16" else None)
            continue
        note = f"fallback: rows of {cols} do not fit {', '.join(tried)}" if tried else ""
        return canonical, rows * row_bytes, note
    raise AssertionError("f16 fits every shape")  # pragma: no cover


def make_plan(
    tensors: Sequence[tuple[str, tuple[int, ...], str, int]],
    recipe: Recipe,
    *,
    n_layers: int,
    n_gqa: int = 1,
    tied: bool = False,
    overrides: Sequence[tuple[re.Pattern[str], str]] = (),
    gguf_compatible: bool = False,
) -> list[PlanEntry]:
    """The plan for `tensors` given as (HF name, shape, source dtype, source bytes).
    `gguf_compatible`: only ggml types (llama.cpp's fallbacks instead of ragged k-types).

    2-D tensors get the first matching override (regex searched in the HF name and in
    `role`/`blk.N.role`), else the recipe's first matching rule, else its base qtype; 1-D
    tensors stay f32; tensors of 3 or more dimensions (not in the llama family) stay f32.
    """
    plan: list[PlanEntry] = []
    for name, shape, dtype, src_bytes in tensors:
        role, layer = role_of(name, tied) if len(shape) == 2 else ("vector" if len(shape) <= 1 else "other", None)
        if len(shape) != 2:
            n = math.prod(shape)
            why = "1-D: f32" if len(shape) <= 1 else f"{len(shape)}-D: f32"
            plan.append(PlanEntry(name, role, layer, shape, dtype, src_bytes, "f32", "f32", 4 * n, why, ""))
            continue
        alias = role if layer is None else f"blk.{layer}.{role}"
        requested, reason = recipe.base, "base"
        for rx, qt in overrides:
            if rx.search(name) or rx.search(alias):
                requested, reason = qt, f"--tensor-type {rx.pattern}"
                break
        else:
            for rule in recipe.rules:
                if rule.role == role and rule.layers(layer, n_layers, n_gqa):
                    requested, reason = rule.qtype, rule.why
                    break
        qtype, nbytes, note = _fit(requested, (shape[0], shape[1]), gguf_compatible)
        plan.append(PlanEntry(name, role, layer, shape, dtype, src_bytes, requested, qtype, nbytes, reason, note))
    return plan
