//! Every hardware implementation of the SIMD vocabulary agrees bit for bit with the array
//! emulation `Emu<W>` (which defines the semantics), op by op, on random data and on the edge
//! values the kernels meet: ±0, denormals, huge values, exact rounding ties.

mod common;

use common::Rng;
use lowbit_core::simd::emu::Emu;
use lowbit_core::simd::vocab::Simd;

/// Values that stress each op: ties for rounding, signed zeros, denormals, extremes.
fn edge_values(r: &mut Rng, n: usize) -> Vec<f32> {
    let specials = [
        0.0,
        -0.0,
        0.5,
        -0.5,
        1.5,
        -1.5,
        2.5,
        -2.5,
        8.5,
        -7.5,
        1e-45,
        -1e-45,
        1e-39,
        -3e-39,
        1.0e38,
        -3.0e38,
        8388607.5,
        -8388607.5,
        16777216.0,
        0.49999997,
        -0.49999997,
        1.0,
        -1.0,
        127.0,
        255.0,
        3.0e-8,
    ];
    (0..n)
        .map(|i| match i % 4 {
            0 => specials[r.below(specials.len())],
            1 => r.normal() * 10.0,
            2 => (r.below(64) as f32 - 32.0) * 0.5,
            _ => r.normal() * 1e-3,
        })
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Run one f32 op on `S` and on `Emu<W>` lane-for-lane and compare bits.
fn check<S: Simd, const W: usize>(s: S, name: &str) {
    assert_eq!(S::W, W);
    let e = Emu::<W>;
    let mut r = Rng::new(7);
    for round in 0..200 {
        let a = edge_values(&mut r, W);
        let b = edge_values(&mut r, W);
        let ints: Vec<i32> = (0..W).map(|_| r.below(1 << 20) as i32 - (1 << 19)).collect();
        let small: Vec<i32> = (0..W).map(|_| r.below(256) as i32).collect();
        let bytes: Vec<u8> = (0..W).map(|_| r.below(256) as u8).collect();
        let (fa, fb, ea, eb) = (s.load(&a), s.load(&b), e.load(&a), e.load(&b));
        // The four-vector lane sum is four lane sums, bit for bit (its order is the level's).
        let v = [fa, fb, s.load(&edge_values(&mut r, W)), s.load(&edge_values(&mut r, W))];
        assert_eq!(s.hsum4(v).map(f32::to_bits), v.map(|x| s.hsum(x).to_bits()), "{name} hsum4 round {round}");
        let mut got = vec![0f32; W];
        let mut want = vec![0f32; W];
        // exp, a composition of the ops, gives the emulation's bits on finite inputs.
        let finite: Vec<f32> = a.iter().map(|&x| if x.abs() > 200.0 { x.signum() * 90.0 } else { x }).collect();
        s.store(&mut got, lowbit_core::simd::vocab::exp(s, s.load(&finite)));
        e.store(&mut want, lowbit_core::simd::vocab::exp(e, e.load(&finite)));
        assert_eq!(bits(&got), bits(&want), "{name} exp round {round}: {finite:?}");
        macro_rules! f2 {
            ($op:ident) => {{
                s.store(&mut got, s.$op(fa, fb));
                e.store(&mut want, e.$op(ea, eb));
                assert_eq!(bits(&got), bits(&want), "{name} {} round {round}: a={a:?} b={b:?}", stringify!($op));
            }};
        }
        macro_rules! f1 {
            ($op:ident) => {{
                s.store(&mut got, s.$op(fa));
                e.store(&mut want, e.$op(ea));
                assert_eq!(bits(&got), bits(&want), "{name} {} round {round}: a={a:?}", stringify!($op));
            }};
        }
        f2!(add);
        f2!(sub);
        f2!(mul);
        f2!(div);
        f2!(min);
        f2!(max);
        f1!(abs);
        f1!(neg);
        f1!(round_even);
        f1!(round_away);
        f1!(trunc);
        for (mname, m, me) in
            [("lt", s.lt(fa, fb), e.lt(ea, eb)), ("le", s.le(fa, fb), e.le(ea, eb)), ("eq", s.eq(fa, fa), e.eq(ea, ea))]
        {
            assert_eq!(s.bitmask(m), e.bitmask(me), "{name} {mname}");
            s.store(&mut got, s.select(m, fa, fb));
            e.store(&mut want, e.select(me, ea, eb));
            assert_eq!(bits(&got), bits(&want), "{name} select/{mname}");
            let n = s.lt(fb, fa);
            let ne = e.lt(eb, ea);
            assert_eq!(s.bitmask(s.mand(m, n)), e.bitmask(e.mand(me, ne)), "{name} mand");
            assert_eq!(s.bitmask(s.mor(m, n)), e.bitmask(e.mor(me, ne)), "{name} mor");
            assert_eq!(s.bitmask(s.mnot(m)), e.bitmask(e.mnot(me)), "{name} mnot");
        }
        // Horizontal max/min are exact; a ±0 tie may return either zero (callers normalise).
        let norm = |x: f32| x + 0.0;
        assert_eq!(norm(s.hmax(fa)).to_bits(), norm(e.hmax(ea)).to_bits(), "{name} hmax {a:?}");
        assert_eq!(norm(s.hmin(fa)).to_bits(), norm(e.hmin(ea)).to_bits(), "{name} hmin {a:?}");

        // Integer side.
        let (ia, ea_i) = (s.load_i32(&ints), e.load_i32(&ints));
        let (ib, eb_i) = (s.load_i32(&small), e.load_i32(&small));
        let mut gi = vec![0i32; W];
        let mut wi = vec![0i32; W];
        macro_rules! i2 {
            ($op:ident) => {{
                s.store_i32(&mut gi, s.$op(ia, ib));
                e.store_i32(&mut wi, e.$op(ea_i, eb_i));
                assert_eq!(gi, wi, "{name} {}", stringify!($op));
            }};
        }
        i2!(iadd);
        i2!(iand);
        i2!(ior);
        i2!(imin);
        i2!(imax);
        for n in [0u32, 1, 3, 4, 7, 16, 31] {
            s.store_i32(&mut gi, s.shl(ia, n));
            e.store_i32(&mut wi, e.shl(ea_i, n));
            assert_eq!(gi, wi, "{name} shl {n}");
            s.store_i32(&mut gi, s.shr(ia, n));
            e.store_i32(&mut wi, e.shr(ea_i, n));
            assert_eq!(gi, wi, "{name} shr {n}");
        }
        assert_eq!(s.bitmask(s.ieq(ia, ia)), e.bitmask(e.ieq(ea_i, ea_i)), "{name} ieq");
        assert_eq!(s.bitmask(s.ieq(ia, ib)), e.bitmask(e.ieq(ea_i, eb_i)), "{name} ieq2");
        s.store_i32(&mut gi, s.isplat(-5));
        assert_eq!(gi, vec![-5; W]);
        // f32 <-> i32 conversions on integral values, bit casts.
        let integral: Vec<f32> = ints.iter().map(|&v| v as f32).collect();
        s.store_i32(&mut gi, s.to_i32(s.load(&integral)));
        assert_eq!(gi, ints, "{name} to_i32");
        s.store(&mut got, s.to_f32(ia));
        e.store(&mut want, e.to_f32(ea_i));
        assert_eq!(bits(&got), bits(&want), "{name} to_f32");
        s.store_i32(&mut gi, s.to_bits(fa));
        e.store_i32(&mut wi, e.to_bits(ea));
        assert_eq!(gi, wi, "{name} to_bits");
        s.store(&mut got, s.from_bits(ia));
        e.store(&mut want, e.from_bits(ea_i));
        assert_eq!(bits(&got), bits(&want), "{name} from_bits");
        // Byte loads and stores (with a tail after the W bytes that must stay untouched).
        s.store_i32(&mut gi, s.load_u8(&bytes));
        e.store_i32(&mut wi, e.load_u8(&bytes));
        assert_eq!(gi, wi, "{name} load_u8");
        s.store_i32(&mut gi, s.load_i8(&bytes));
        e.store_i32(&mut wi, e.load_i8(&bytes));
        assert_eq!(gi, wi, "{name} load_i8");
        let mut gb = vec![0xAAu8; W + 3];
        let mut wb = vec![0xAAu8; W + 3];
        s.store_u8(&mut gb, ib);
        e.store_u8(&mut wb, eb_i);
        assert_eq!(gb, wb, "{name} store_u8");
        assert_eq!(s.hmax(s.splat(3.0)), 3.0);
    }
}

#[test]
#[cfg(target_arch = "x86_64")]
fn avx2_matches_emulation() {
    match lowbit_core::simd::avx2::Avx2::new() {
        Some(t) => check::<_, 8>(t, "avx2"),
        None => eprintln!("skipped: avx2 (not available on this CPU)"),
    }
}

#[test]
#[cfg(target_arch = "x86_64")]
fn avx512_matches_emulation() {
    match lowbit_core::simd::avx512::Avx512::new() {
        Some(t) => check::<_, 16>(t, "avx512"),
        None => eprintln!("skipped: avx512 (not available on this CPU)"),
    }
}

#[test]
#[cfg(target_arch = "aarch64")]
fn neon_matches_emulation() {
    check::<_, 4>(lowbit_core::simd::neon::Neon::new().expect("neon"), "neon");
}

#[test]
fn emulation_is_self_consistent() {
    // The scalar semantics the emulation encodes, checked against std directly.
    let e = Emu::<4>;
    let mut out = [0f32; 4];
    e.store(&mut out, e.round_even(e.load(&[0.5, 1.5, 2.5, -0.5])));
    assert_eq!(out, [0.0, 2.0, 2.0, -0.0]);
    e.store(&mut out, e.round_away(e.load(&[0.5, 1.5, 2.5, -0.5])));
    assert_eq!(out, [1.0, 2.0, 3.0, -1.0]);
    e.store(&mut out, e.trunc(e.load(&[0.7, -1.7, 2.5, -0.2])));
    assert_eq!(out, [0.0, -1.0, 2.0, -0.0]);
}

#[test]
fn exp_is_within_two_ulp_and_saturates_as_documented() {
    use lowbit_core::simd::vocab::exp;
    let e = Emu::<4>;
    let one = |x: f32| {
        let mut out = [0f32; 4];
        e.store(&mut out, exp(e, e.splat(x)));
        out[0]
    };
    assert_eq!(one(0.0), 1.0);
    assert_eq!(one(-0.0), 1.0);
    assert_eq!(one(-87.4), 0.0);
    assert_eq!(one(-1e30), 0.0);
    assert_eq!(one(88.8), f32::INFINITY);
    assert_eq!(one(88.5), one(88.37));
    let mut r = Rng::new(9);
    let mut worst = 0f64;
    for i in 0..200_000 {
        let x = if i % 2 == 0 { (r.normal() * 30.0).clamp(-87.3, 88.37) } else { r.normal() * 1e-3 };
        let want = f64::from(x).exp();
        // One ulp of the f32 result, at its binade.
        let ulp = f64::from(f32::EPSILON) * 2f64.powi(want.log2().floor() as i32);
        worst = worst.max((f64::from(one(x)) - want).abs() / ulp);
    }
    assert!(worst <= 2.0, "exp is {worst} ulp off");
}
