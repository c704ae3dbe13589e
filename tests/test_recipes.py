"""Recipes and plans (lowbit.conversion.recipes): roles, llama.cpp's layer rules, fallbacks and
`--tensor-type` overrides, on shapes alone (no weights needed)."""

from __future__ import annotations

import re

import pytest

from lowbit import ParameterError
from lowbit.conversion import FALLBACK, RECIPES, PlanEntry, make_plan
from lowbit.conversion.recipes import parse_tensor_types, recipe_for, role_of, use_more_bits


def llama_shapes(
    n_layers: int, hidden: int, ffn: int, vocab: int, kv: int, tied: bool
) -> list[tuple[str, tuple[int, ...], str, int]]:
    """(name, shape, dtype, bytes) of a llama-family model in HF names, f32 source."""
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(n_layers):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (hidden,)),
            (p + "self_attn.q_proj.weight", (hidden, hidden)),
            (p + "self_attn.k_proj.weight", (kv, hidden)),
            (p + "self_attn.v_proj.weight", (kv, hidden)),
            (p + "self_attn.o_proj.weight", (hidden, hidden)),
            (p + "post_attention_layernorm.weight", (hidden,)),
            (p + "mlp.gate_proj.weight", (ffn, hidden)),
            (p + "mlp.up_proj.weight", (ffn, hidden)),
            (p + "mlp.down_proj.weight", (hidden, ffn)),
        ]
    out.append(("model.norm.weight", (hidden,)))
    if not tied:
        out.append(("lm_head.weight", (vocab, hidden)))
    return [(n, s, "F32", 4 * _numel(s)) for n, s in out]


def _numel(s: tuple[int, ...]) -> int:
    n = 1
    for d in s:
        n *= d
    return n


def by_name(plan: list[PlanEntry]) -> dict[str, PlanEntry]:
    return {e.name: e for e in plan}


def test_use_more_bits_picks_first_and_last_eighth_and_every_third_between() -> None:
    # n = 16: n/8 = 2, 7n/8 = 14; between, i - 2 ≡ 2 (mod 3) → 4, 7, 10, 13.
    assert [i for i in range(16) if use_more_bits(i, 16)] == [0, 1, 4, 7, 10, 13, 14, 15]
    # n = 30 (the demo model): n/8 = 3, 7n/8 = 26.
    assert [i for i in range(30) if use_more_bits(i, 30)] == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]


def test_roles_from_hf_names() -> None:
    assert role_of("model.layers.12.self_attn.v_proj.weight", tied=False) == ("attn_v", 12)
    assert role_of("model.layers.0.mlp.down_proj.weight", tied=False) == ("ffn_down", 0)
    assert role_of("model.embed_tokens.weight", tied=False) == ("token_embd", None)
    assert role_of("model.embed_tokens.weight", tied=True) == ("output", None)
    assert role_of("lm_head.weight", tied=False) == ("output", None)
    assert role_of("transformer.h.0.attn.c_attn.weight", tied=False) == ("other", None)


@pytest.mark.parametrize("tied", [False, True])
def test_q4_k_m_on_aligned_rows(tied: bool) -> None:
    shapes = llama_shapes(16, 256, 512, 1000, 128, tied)
    plan = by_name(make_plan(shapes, RECIPES["q4_k_m"], n_layers=16, n_gqa=2, tied=tied))
    more = {0, 1, 4, 7, 10, 13, 14, 15}
    for i in range(16):
        p = f"model.layers.{i}."
        want = "q6_k" if i in more else "q4_k"
        assert plan[p + "self_attn.v_proj.weight"].qtype == want
        assert plan[p + "mlp.down_proj.weight"].qtype == want
        for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj"):
            assert plan[p + n + ".weight"].qtype == "q4_k"
        assert plan[p + "input_layernorm.weight"].qtype == "f32"
    out = plan["model.embed_tokens.weight" if tied else "lm_head.weight"]
    assert out.qtype == "q6_k"
    if not tied:
        assert plan["model.embed_tokens.weight"].qtype == "q4_k"
    assert not any(e.fallback for e in plan.values())
    # bytes follow the type table: q4_k stores 144 bytes per 256 values, q6_k 210.
    q = plan["model.layers.2.self_attn.q_proj.weight"]
    assert q.nbytes == 256 * 144 and q.bits_per_weight == 4.5
    assert plan["model.layers.0.mlp.down_proj.weight"].nbytes == 256 * 2 * 210


def test_q3_k_m_and_q2_k_layer_rules() -> None:
    shapes = llama_shapes(32, 256, 512, 1000, 64, tied=False)
    q3 = by_name(make_plan(shapes, RECIPES["q3_k_m"], n_layers=32, n_gqa=4))
    assert [q3[f"model.layers.{i}.self_attn.v_proj.weight"].qtype for i in (0, 1, 2, 31)] == ["q5_k"] * 2 + ["q4_k"] * 2
    assert q3["model.layers.0.mlp.down_proj.weight"].qtype == "q5_k"  # i < 32/16
    # q4_k on every other layer: llama.cpp keeps q3_k there only for Falcon (what llama-cpp-python
    # 0.3.36's quantizer does on the demo model, benches/quality_vs_llamacpp.py)
    assert {q3[f"model.layers.{i}.mlp.down_proj.weight"].qtype for i in range(2, 32)} == {"q4_k"}
    assert q3["model.layers.9.self_attn.o_proj.weight"].qtype == "q4_k"
    assert q3["model.layers.9.mlp.up_proj.weight"].qtype == "q3_k"
    # q2_k: attn_v gets q4_k only when n_head / n_kv_head >= 4.
    for gqa, want in ((4, "q4_k"), (3, "q3_k")):
        q2 = by_name(make_plan(shapes, RECIPES["q2_k"], n_layers=32, n_gqa=gqa))
        assert q2["model.layers.7.self_attn.v_proj.weight"].qtype == want
        assert q2["model.layers.7.mlp.down_proj.weight"].qtype == "q3_k"
        assert q2["model.layers.7.mlp.gate_proj.weight"].qtype == "q2_k"


def test_ragged_k_types_when_rows_do_not_fill_super_blocks() -> None:
    """hidden 576 (the demo model): rows of 576 values get the ragged k-types, aligned rows the
    ggml k-quants."""
    shapes = llama_shapes(4, 576, 1536, 1000, 192, tied=True)
    plan = by_name(make_plan(shapes, RECIPES["q4_k_m"], n_layers=4, n_gqa=3, tied=True))
    q = plan["model.layers.1.self_attn.q_proj.weight"]
    assert (q.requested, q.qtype) == ("q4_k", "q4_kr") and "576" in q.fallback and q.fallback.startswith("ragged")
    assert q.nbytes == 576 * (2 * 144 + 18 * 2 + 4)
    assert plan["model.layers.3.self_attn.v_proj.weight"].qtype == "q6_kr"
    down = plan["model.layers.1.mlp.down_proj.weight"]  # rows of 1536 = 6 × 256
    assert (down.qtype, down.fallback) == ("q4_k", "")
    q3 = by_name(make_plan(shapes, RECIPES["q3_k_m"], n_layers=4, n_gqa=3, tied=True))
    assert q3["model.layers.1.mlp.up_proj.weight"].qtype == "q3_kr"
    # Asking for a ragged type is asking for its k-quant (ragged where rows need it).
    assert recipe_for("q5_kr").base == "q5_k"
    direct = make_plan(shapes[2:3], recipe_for("q5_kr"), n_layers=4)
    assert (direct[0].requested, direct[0].qtype) == ("q5_k", "q5_kr")
    direct = make_plan(shapes[2:3], recipe_for("q5_kr"), n_layers=4, gguf_compatible=True)
    assert (direct[0].requested, direct[0].qtype) == ("q5_k", "q5_1")


def test_gguf_compatible_falls_back_like_llama_cpp() -> None:
    """With gguf_compatible, rows of 576 fall back to llama.cpp's legacy types."""
    shapes = llama_shapes(4, 576, 1536, 1000, 192, tied=True)
    plan = by_name(make_plan(shapes, RECIPES["q4_k_m"], n_layers=4, n_gqa=3, tied=True, gguf_compatible=True))
    q = plan["model.layers.1.self_attn.q_proj.weight"]
    assert (q.requested, q.qtype) == ("q4_k", "q5_0") and "576" in q.fallback and "q4_k" in q.fallback
    v = plan["model.layers.3.self_attn.v_proj.weight"]  # use_more_bits(3, 4): the last eighth
    assert (v.requested, v.qtype) == ("q6_k", "q8_0")
    down = plan["model.layers.1.mlp.down_proj.weight"]  # rows of 1536 = 6 × 256: no fallback
    assert (down.qtype, down.fallback) == ("q4_k", "")
    q3 = by_name(make_plan(shapes, RECIPES["q3_k_m"], n_layers=4, n_gqa=3, tied=True, gguf_compatible=True))
    assert q3["model.layers.1.mlp.up_proj.weight"].qtype == FALLBACK["q3_k"] == "q4_0"


def test_fallback_chain_ends_in_f16() -> None:
    plan = make_plan([("w", (4, 40), "F16", 320)], recipe_for("q4_k"), n_layers=0, gguf_compatible=True)
    assert plan[0].qtype == "f16" and "q4_k" in plan[0].fallback and "q5_0" in plan[0].fallback
    plan = make_plan([("w", (4, 36), "F16", 288)], recipe_for("int4-g128"), n_layers=0)
    assert plan[0].qtype == "f16" and plan[0].nbytes == 4 * 36 * 2


def test_int_recipes_keep_embeddings_and_output_at_q8_0() -> None:
    shapes = llama_shapes(2, 256, 512, 1000, 128, tied=False)
    plan = by_name(make_plan(shapes, RECIPES["int4-g128"], n_layers=2))
    assert plan["model.embed_tokens.weight"].qtype == "q8_0"
    assert plan["lm_head.weight"].qtype == "q8_0"
    assert plan["model.layers.1.mlp.up_proj.weight"].qtype == "int4-g128"
    # per row of 256: 4-bit codes, an f16 scale per group of 128, 4-bit zeros packed (LBF.md)
    assert plan["model.layers.1.mlp.up_proj.weight"].nbytes == 512 * (256 // 2 + 2 * 2 + 1)


def test_a_single_qtype_is_a_recipe_for_every_matrix() -> None:
    shapes = llama_shapes(2, 256, 512, 1000, 128, tied=False)
    plan = make_plan(shapes, recipe_for("q8_0"), n_layers=2)
    assert {e.qtype for e in plan if len(e.shape) == 2} == {"q8_0"}
    assert {e.qtype for e in plan if len(e.shape) == 1} == {"f32"}
    assert recipe_for("int4-g64-sym").base == "int4-g64-sym"
    with pytest.raises(ParameterError, match="neither a recipe"):
        recipe_for("q4_k_xl")


def test_tensor_type_overrides() -> None:
    shapes = llama_shapes(4, 256, 512, 1000, 128, tied=False)
    ov = parse_tensor_types([r"attn_v=q8_0", r"layers\.3\.mlp=f16", r"mlp=q5_k"])
    plan = by_name(make_plan(shapes, RECIPES["q4_k_m"], n_layers=4, overrides=ov))
    assert all(plan[f"model.layers.{i}.self_attn.v_proj.weight"].qtype == "q8_0" for i in range(4))
    assert plan["model.layers.3.mlp.up_proj.weight"].qtype == "f16"  # first match wins
    assert plan["model.layers.2.mlp.down_proj.weight"].qtype == "q5_k"
    assert plan["model.layers.2.mlp.down_proj.weight"].reason == "--tensor-type mlp"
    assert plan["model.layers.2.self_attn.q_proj.weight"].qtype == "q4_k"
    # an override whose rows are not a multiple of 256 is ragged, or falls back for GGUF, like a recipe's choice
    ov = parse_tensor_types([r"blk\.0\.attn_q=q6_k"])
    small = llama_shapes(1, 576, 1536, 100, 192, tied=True)
    name = "model.layers.0.self_attn.q_proj.weight"
    q = by_name(make_plan(small, RECIPES["q8_0"], n_layers=1, overrides=ov))[name]
    assert (q.requested, q.qtype) == ("q6_k", "q6_kr")
    q = by_name(make_plan(small, RECIPES["q8_0"], n_layers=1, overrides=ov, gguf_compatible=True))[name]
    assert (q.requested, q.qtype) == ("q6_k", "q8_0")


@pytest.mark.parametrize(
    ("spec", "msg"),
    [("attn_v", "REGEX=QTYPE"), ("=q8_0", "REGEX=QTYPE"), ("attn_v=", "REGEX=QTYPE"), ("(=q8_0", "regular"),
     ("attn_v=q9_9", "q9_9")],
)  # fmt: skip
def test_bad_tensor_type_specs(spec: str, msg: str) -> None:
    with pytest.raises(ParameterError, match=re.escape(msg)):
        parse_tensor_types([spec])


def test_every_recipe_is_readable_and_uses_known_types() -> None:
    from lowbit import qtypes

    names = {t.name for t in qtypes()}
    for r in RECIPES.values():
        assert r.summary
        for t in [r.base, *(rule.qtype for rule in r.rules)]:
            assert t.split("-")[0] in names, (r.name, t)
    assert set(RECIPES) >= {"q4_k_m", "q4_k_s", "q5_k_m", "q3_k_m", "q2_k", "q6_k", "q8_0", "int4-g128", "int3-g128"}
