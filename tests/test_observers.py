"""Range observers (`lowbit.calib.observers`): each does what its name says on known
distributions, per-group ranges feed `lowbit.quantize`, and bad input gets a typed error."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import lowbit
from lowbit.calib.observers import (
    OBSERVER_NAMES,
    EntropyObserver,
    Granularity,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    Observer,
    PercentileObserver,
    _fake_quant,
    make_observer,
)
from lowbit.errors import InvalidValueError, ParameterError, ShapeError

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def group_ranges(w: npt.NDArray[Any], g: int) -> tuple[F64, F64]:
    """min(min, 0) and max(max, 0) of each (row, group of g columns), by plain loops."""
    rows, cols = w.shape
    g = g or cols
    starts = list(range(0, cols, g))
    lo, hi = np.zeros((rows, len(starts))), np.zeros((rows, len(starts)))
    for r in range(rows):
        for j, s in enumerate(starts):
            lo[r, j] = min(float(w[r, s : s + g].min()), 0.0)
            hi[r, j] = max(float(w[r, s : s + g].max()), 0.0)
    return lo, hi


def qdq_error(w: F32, qtype: str, lo: F64, hi: F64) -> float:
    """Sum of squared errors of lowbit's round trip with explicit ranges."""
    deq = lowbit.dequantize(lowbit.quantize(w, qtype, group_min=lo, group_max=hi))
    return float(((deq.astype(np.float64) - w) ** 2).sum())


# ---------------------------------------------------------------- min-max


def test_minmax_per_tensor_and_channel_match_numpy() -> None:
    x = rng(0).standard_normal((3, 50, 24)).astype(np.float32) + 0.5
    t, c = MinMaxObserver(), MinMaxObserver("channel")
    for o in (t, c):
        o.update(x)
    lo, hi = t.range()
    assert lo.shape == hi.shape == ()
    assert (lo, hi) == (min(x.min(), 0), max(x.max(), 0))
    lo, hi = c.range()
    flat = x.reshape(-1, 24)
    np.testing.assert_array_equal(lo, np.minimum(flat.min(axis=0), 0))
    np.testing.assert_array_equal(hi, np.maximum(flat.max(axis=0), 0))
    assert (lo <= 0).all() and (hi >= 0).all()


def test_positive_data_range_is_widened_to_zero() -> None:
    o = MinMaxObserver("channel")
    o.update(np.array([[1.0, -2.0], [3.0, -1.0]], np.float32))
    lo, hi = o.range()
    np.testing.assert_array_equal(lo, [0.0, -2.0])
    np.testing.assert_array_equal(hi, [3.0, 0.0])


@pytest.mark.parametrize(("cols", "g"), [(320, 128), (256, 128), (320, 0), (72, 32)])
def test_minmax_per_group_matches_loops(cols: int, g: int) -> None:
    w = rng(1).standard_t(4, (7, cols)).astype(np.float32)
    o = MinMaxObserver("group", g)
    o.update(w)
    lo, hi = o.range()
    want_lo, want_hi = group_ranges(w, g)
    assert lo.shape == (7, -(-cols // g) if g else 1)
    np.testing.assert_array_equal(lo, want_lo)
    np.testing.assert_array_equal(hi, want_hi)


def test_minmax_updates_equal_one_update_of_the_concatenation() -> None:
    batches = [rng(i).standard_normal((n, 16)) * (i + 1) for i, n in enumerate((5, 40, 1, 13))]
    for gran in ("tensor", "channel"):
        several, once = MinMaxObserver(gran), MinMaxObserver(gran)
        for b in batches:
            several.update(b)
        once.update(np.concatenate(batches))
        for a, b in zip(several.range(), once.range(), strict=True):
            np.testing.assert_array_equal(a, b)


def test_minmax_group_updates_combine_elementwise() -> None:
    w1, w2 = rng(2).standard_normal((2, 4, 96)).astype(np.float32)
    o = MinMaxObserver("group", 32)
    o.update(w1)
    o.update(w2)
    (lo1, hi1), (lo2, hi2) = group_ranges(w1, 32), group_ranges(w2, 32)
    lo, hi = o.range()
    np.testing.assert_array_equal(lo, np.minimum(lo1, lo2))
    np.testing.assert_array_equal(hi, np.maximum(hi1, hi2))


def test_float64_input_is_kept_exactly() -> None:
    x = np.array([1.0 + 2.0**-40, -(2.0**-60)])
    o = MinMaxObserver()
    o.update(x)
    assert o.range() == (x[1], x[0])


# ---------------------------------------------------------------- moving average


@pytest.mark.parametrize("momentum", [0.1, 0.5, 0.9])
def test_moving_average_follows_its_formula(momentum: float) -> None:
    batches = [rng(i).standard_normal((20, 3)) * s + m for i, (s, m) in enumerate([(1, 0), (5, 1), (0.5, -2), (3, 4)])]
    o = MovingAverageMinMaxObserver("channel", momentum=momentum)
    lo = np.minimum(batches[0].min(axis=0), 0)
    hi = np.maximum(batches[0].max(axis=0), 0)
    for b in batches[1:]:
        lo = (1 - momentum) * lo + momentum * np.minimum(b.min(axis=0), 0)
        hi = (1 - momentum) * hi + momentum * np.maximum(b.max(axis=0), 0)
    for b in batches:
        o.update(b)
    got_lo, got_hi = o.range()
    np.testing.assert_allclose(got_lo, lo, rtol=1e-12)
    np.testing.assert_allclose(got_hi, hi, rtol=1e-12)
    # the last batch pulls the range away from plain min-max
    assert not np.allclose(got_hi, np.max([b.max(axis=0) for b in batches], axis=0))


# ---------------------------------------------------------------- percentile and KL ignore outliers

OUTLIER = 1000.0


def gaussian_with_outlier(n: int = 100_000) -> tuple[F32, F32]:
    g = rng(3).standard_normal(n).astype(np.float32)
    x = g.copy()
    x[n // 2] = OUTLIER
    return g, x


def assert_ignores_outlier(lo: F64, hi: F64, g: F32) -> None:
    assert hi < OUTLIER / 10
    # still covers at least 99 % of the Gaussian
    assert hi >= np.quantile(g, 0.995) and lo <= np.quantile(g, 0.005)
    assert ((g >= lo) & (g <= hi)).mean() >= 0.99


@pytest.mark.parametrize(
    "obs", [PercentileObserver(), PercentileObserver(percentile=99.9), EntropyObserver(), EntropyObserver(bits=4)]
)
def test_percentile_and_kl_ignore_a_planted_outlier(obs: Observer) -> None:
    g, x = gaussian_with_outlier()
    obs.update(x.reshape(100, -1))
    lo, hi = obs.range()
    assert_ignores_outlier(lo, hi, g)
    mm = MinMaxObserver()
    mm.update(x)
    assert mm.range()[1] == OUTLIER  # the outlier is there to be ignored


def test_percentile_of_one_update_is_exact_per_group() -> None:
    w = rng(4).laplace(size=(6, 200))
    o = PercentileObserver("group", 64, percentile=90)
    o.update(w)
    lo, hi = o.range()
    for r in range(6):
        for j, s in enumerate(range(0, 200, 64)):
            part = w[r, s : s + 64]
            assert hi[r, j] == pytest.approx(max(np.percentile(part, 90), 0), rel=1e-12)
            assert lo[r, j] == pytest.approx(min(np.percentile(part, 10), 0), rel=1e-12)


def test_percentile_over_updates_is_the_size_weighted_mean() -> None:
    b1, b2 = rng(5).standard_normal(1000), 3 * rng(6).standard_normal(3000)
    o = PercentileObserver(percentile=99)
    o.update(b1)
    o.update(b2)
    lo, hi = o.range()
    assert hi == pytest.approx((1000 * np.percentile(b1, 99) + 3000 * np.percentile(b2, 99)) / 4000, rel=1e-12)
    assert lo == pytest.approx((1000 * np.percentile(b1, 1) + 3000 * np.percentile(b2, 1)) / 4000, rel=1e-12)


def test_kl_threshold_on_a_gaussian_is_plausible() -> None:
    x = rng(7).standard_normal(200_000).astype(np.float32)
    a = np.abs(x)
    t = {}
    for bits in (8, 4):
        o = EntropyObserver(bits=bits)
        o.update(x)
        lo, hi = o.range()
        assert lo == -hi  # a symmetric threshold, inside both extremes here
        t[bits] = float(hi)
    # clips the sparse tail, not the body: between the 99.9 % point of |x| (3.29 σ) and max |x|
    assert np.quantile(a, 0.999) <= t[8] < a.max()
    assert np.quantile(a, 0.99) <= t[4] < a.max()
    assert t[4] < t[8]  # a coarser grid is worth more clipping


def test_kl_keeps_one_signed_data_one_signed() -> None:
    x = np.maximum(rng(8).standard_normal((400, 64)), 0)
    o = EntropyObserver()
    o.update(x)
    lo, hi = o.range()
    assert lo == 0 and 0 < hi <= x.max()


def test_kl_streaming_histogram_merges_exactly() -> None:
    """A first batch with max |x| 1, a second with max 4: the histogram top doubles twice and
    merges bins, which must give exactly the histogram of one update with max 4."""
    b1 = rng(9).uniform(-1, 1, 5000)
    b1[0] = 1.0
    b2 = rng(10).standard_normal(20000)
    b2 = b2 / np.abs(b2).max() * 4
    several, once = EntropyObserver(), EntropyObserver()
    several.update(b1)
    several.update(b2)
    once.update(np.concatenate([b1, b2]))
    np.testing.assert_array_equal(several._hist, once._hist)
    assert several.range() == once.range()
    third = EntropyObserver()
    third.update(b2)
    third.update(b1)
    assert third.range() == once.range()


def test_kl_on_small_groups_is_not_degenerate() -> None:
    """128 values in 2048 bins is no density: uncoarsened, KL would clip at the first nonzero bin."""
    w = rng(16).standard_t(5, (16, 256)).astype(np.float32)
    for bits in (8, 4):
        o = EntropyObserver("group", 128, bits=bits)
        o.update(w)
        lo, hi = o.range()
        groups = w.reshape(16, 2, 128)
        kept = ((groups >= lo[..., None]) & (groups <= hi[..., None])).mean(axis=-1)
        assert kept.min() >= 0.75


# ---------------------------------------------------------------- MSE


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_fake_quant_is_lowbits_grid(bits: int, symmetric: bool) -> None:
    """The grid the MSE search scores is bit-exactly what lowbit.quantize makes."""
    w = rng(bits).standard_normal((16, 256)).astype(np.float32) * np.float32(3)
    r = rng(bits + 10)
    lo = (-r.uniform(0, 3, (16, 2)) * (r.uniform(size=(16, 2)) > 0.1)).astype(np.float32)
    hi = (r.uniform(0, 3, (16, 2)) * (r.uniform(size=(16, 2)) > 0.1)).astype(np.float32)
    lo[0, 0] = hi[0, 0] = 0  # an all-zero range
    lo[1, 1], hi[1, 1] = -1e-9, 1e-9  # a range too small for an f16 scale
    qtype = f"int{bits}-g128" + ("-sym" if symmetric else "")
    want = lowbit.dequantize(lowbit.quantize(w, qtype, group_min=lo, group_max=hi))
    got = _fake_quant(w.reshape(32, 128), lo.reshape(-1), hi.reshape(-1), bits, symmetric).reshape(16, 256)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dist", ["student_t", "laplace"])
@pytest.mark.parametrize(("bits", "symmetric"), [(2, False), (3, False), (4, False), (4, True)])
def test_mse_beats_minmax_on_heavy_tails(dist: str, bits: int, symmetric: bool) -> None:
    r = rng(11)
    w = (r.standard_t(3, (32, 320)) if dist == "student_t" else r.laplace(size=(32, 320))).astype(np.float32)
    qtype = f"int{bits}-g128" + ("-sym" if symmetric else "")
    mse = MSEObserver("group", 128, bits=bits, symmetric=symmetric)
    mm = MinMaxObserver("group", 128)
    for o in (mse, mm):
        o.update(w)
    e_mse, e_mm = qdq_error(w, qtype, *mse.range()), qdq_error(w, qtype, *mm.range())
    assert e_mse < 0.95 * e_mm
    deq_default = lowbit.dequantize(lowbit.quantize(w, qtype))
    assert e_mse < float(((deq_default.astype(np.float64) - w) ** 2).sum())


def test_mse_beats_minmax_per_tensor_int8_activations() -> None:
    x = rng(12).laplace(size=(1, 50_000)).astype(np.float32)
    mse, mm = MSEObserver(bits=8), MinMaxObserver()
    for o in (mse, mm):
        o.update(x)
    ranges = [tuple(a.reshape(1, 1) for a in o.range()) for o in (mse, mm)]
    e_mse, e_mm = (qdq_error(x, "int8-row", lo, hi) for lo, hi in ranges)
    assert e_mse < 0.95 * e_mm


@pytest.mark.parametrize(("bits", "symmetric"), [(2, False), (3, True), (4, False), (4, True), (8, False)])
def test_mse_never_worse_than_minmax_on_uniform_data(bits: int, symmetric: bool) -> None:
    w = rng(13).uniform(-1, 1, (24, 384)).astype(np.float32)
    w[:, ::7] += 0.5
    qtype = f"int{bits}-g128" + ("-sym" if symmetric else "")
    mse, mm = MSEObserver("group", 128, bits=bits, symmetric=symmetric), MinMaxObserver("group", 128)
    for o in (mse, mm):
        o.update(w)
    assert qdq_error(w, qtype, *mse.range()) <= qdq_error(w, qtype, *mm.range())


def test_mse_ranges_are_shrunk_minmax_ranges() -> None:
    w = rng(14).standard_t(3, (8, 256)).astype(np.float32)
    o = MSEObserver("group", 128, bits=3, grid=20, max_shrink=0.5)
    o.update(w)
    lo, hi = o.range()
    mlo, mhi = group_ranges(w, 128)
    ratios = (1 - np.arange(11) / 20).astype(np.float32)  # 1.0, 0.95, ..., 0.5
    # each range is one candidate r · (min, max), computed in float32
    cand_lo = mlo.astype(np.float32)[..., None] * ratios
    cand_hi = mhi.astype(np.float32)[..., None] * ratios
    match = (cand_lo == lo[..., None]) & (cand_hi == hi[..., None])
    assert match.any(axis=-1).all()
    assert (hi < mhi).any()


# ---------------------------------------------------------------- group ranges feed lowbit.quantize


@pytest.mark.parametrize("name", OBSERVER_NAMES)
@pytest.mark.parametrize(("bits", "symmetric"), [(4, False), (8, True), (3, False)])
def test_group_ranges_feed_quantize(name: str, bits: int, symmetric: bool) -> None:
    w = rng(15).standard_t(5, (12, 320)).astype(np.float32)
    o = make_observer(name, granularity="group", group_size=128, bits=bits, symmetric=symmetric)
    o.update(w)
    lo, hi = o.range()
    assert lo.shape == hi.shape == (12, 3) and (lo <= 0).all() and (hi >= 0).all()
    qtype = f"int{bits}-g128" + ("-sym" if symmetric else "")
    deq = lowbit.dequantize(lowbit.quantize(w, qtype, group_min=lo, group_max=hi))
    # QUANT_TYPES.md: values inside a group's range come back within half a step (the f16 scale
    # rounds up by at most 2^-10), values outside are clipped to the grid, which spans the range
    # (± amax when symmetric) and at most half a step (and the scale's rounding) more
    cols = np.repeat(np.arange(3), 128)[:320]
    glo, ghi = lo[:, cols], hi[:, cols]
    amax = np.maximum(-glo, ghi)
    if symmetric:
        glo, ghi = -amax, amax
    step = (ghi - glo) / (2**bits - 1) * (1 + 2**-10)
    inside = (w >= glo) & (w <= ghi)
    assert (np.abs(deq - w)[inside] <= 0.5 * step[inside] + 1e-6).all()
    slack = 0.5 * step + (ghi - glo) * 2**-10 + 1e-6
    assert ((deq >= glo - slack) & (deq <= ghi + slack)).all()
    assert name in ("minmax", "ema") or not inside.all()  # the others do clip something


@pytest.mark.parametrize("name", OBSERVER_NAMES)
@pytest.mark.parametrize(("gran", "gs"), [("tensor", None), ("channel", None), ("group", 128), ("group", 0)])
def test_all_zero_input_gives_zero_range(name: str, gran: str, gs: int | None) -> None:
    o = make_observer(name, granularity=gran, group_size=gs, bits=4)
    z = np.zeros((8, 256), np.float32)
    o.update(z)
    o.update(z)
    lo, hi = o.range()
    assert not lo.any() and not hi.any()
    if gran == "group":
        qt = lowbit.quantize(z, "int4-row" if gs == 0 else f"int4-g{gs}", group_min=lo, group_max=hi)
        assert not lowbit.dequantize(qt).any()


# ---------------------------------------------------------------- factory and bad input


def test_make_observer_names_and_options() -> None:
    classes = [MinMaxObserver, MovingAverageMinMaxObserver, PercentileObserver, EntropyObserver, MSEObserver]
    for name, cls in zip(OBSERVER_NAMES, classes, strict=True):
        assert type(make_observer(name)) is cls
    kl = make_observer("kl", bits=4, bins=512)
    assert isinstance(kl, EntropyObserver) and (kl.bits, kl.bins) == (4, 512)
    mse = make_observer("mse", granularity=Granularity.GROUP, bits=3, symmetric=True, norm=2.4)
    assert isinstance(mse, MSEObserver) and (mse.bits, mse.symmetric, mse.norm, mse.group_size) == (3, True, 2.4, 128)
    with pytest.raises(ParameterError, match="unknown observer 'max'"):
        make_observer("max")
    with pytest.raises(ParameterError, match="bits"):
        make_observer("minmax", bits=5)
    with pytest.raises(TypeError):
        make_observer("minmax", percentile=99)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", OBSERVER_NAMES)
def test_non_finite_input(bad: float, name: str) -> None:
    x = np.ones((4, 32), np.float32)
    x[2, 5] = x[3, 1] = bad
    o = make_observer(name, granularity="channel")
    with pytest.raises(InvalidValueError, match="non-finite") as e:
        o.update(x)
    assert (e.value.index, e.value.row, e.value.col) == (2 * 32 + 5, 2, 5)
    with pytest.raises(ShapeError, match="nothing observed"):
        o.range()  # the bad batch was not half-taken


@pytest.mark.parametrize("name", OBSERVER_NAMES)
def test_range_before_update(name: str) -> None:
    with pytest.raises(ShapeError, match="update"):
        make_observer(name).range()


def test_wrong_shapes() -> None:
    c = MinMaxObserver("channel")
    c.update(np.ones((4, 16)))
    c.update(np.ones((2, 3, 16)))  # leading axes may change
    with pytest.raises(ShapeError, match="does not match"):
        c.update(np.ones((4, 17)))
    g = MSEObserver("group", 32)
    g.update(np.ones((4, 64)))
    with pytest.raises(ShapeError, match="does not match"):
        g.update(np.ones((5, 64)))
    for shape in [(64,), (2, 4, 64)]:
        with pytest.raises(ShapeError, match="2-D"):
            MinMaxObserver("group").update(np.ones(shape))
    for o in (MinMaxObserver(), MinMaxObserver("channel")):
        with pytest.raises(ShapeError, match="empty"):
            o.update(np.ones((0, 8)))
        with pytest.raises(ShapeError, match="1-D"):
            o.update(np.float32(3))
    with pytest.raises(TypeError, match="real numeric"):
        MinMaxObserver().update(np.ones(4, np.complex64))


@pytest.mark.parametrize("p", [0, -1, 100.5, float("nan")])
def test_bad_percentile(p: float) -> None:
    with pytest.raises(ParameterError, match=r"percentile must be in \(0, 100\]"):
        PercentileObserver(percentile=p)


@pytest.mark.parametrize("m", [0, 1, 1.5, -0.1, float("nan")])
def test_bad_momentum(m: float) -> None:
    with pytest.raises(ParameterError, match=r"momentum must be in \(0, 1\)"):
        MovingAverageMinMaxObserver(momentum=m)


@pytest.mark.parametrize("bits", [0, 1, 5, 6, 16, True])
@pytest.mark.parametrize("cls", [EntropyObserver, MSEObserver])
def test_bad_bits(bits: int, cls: type[EntropyObserver] | type[MSEObserver]) -> None:
    with pytest.raises(ParameterError, match="bits must be one of"):
        cls(bits=bits)


def test_bad_other_parameters() -> None:
    with pytest.raises(ParameterError, match="granularity must be one of"):
        MinMaxObserver("row")
    with pytest.raises(ParameterError, match="group_size needs granularity 'group'"):
        MinMaxObserver("channel", 128)
    with pytest.raises(ParameterError, match="group_size must be >= 0"):
        MinMaxObserver("group", -1)
    with pytest.raises(ParameterError, match="power of two"):
        EntropyObserver(bins=3000)
    with pytest.raises(ParameterError, match="bins must be >= 256"):
        EntropyObserver(bins=128)
    with pytest.raises(ParameterError, match="max_shrink"):
        MSEObserver(max_shrink=1)
    with pytest.raises(ParameterError, match="norm"):
        MSEObserver(norm=0)
    with pytest.raises(ParameterError, match="grid must be >= 1"):
        MSEObserver(grid=0)
