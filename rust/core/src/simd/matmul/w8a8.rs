//! The kernels of the W8A8 matmul (int8 weights × int8 activations, [`crate::matmul::ActQuant`]),
//! each with a scalar reference. The semantics are those of `formats/LBF.md` §5 (`act_quant`):
//!
//! 1. **Activation quantization** ([`quantize_i8`]): one row `x` and one step `d` (the stored
//!    static step, or [`dynamic_step`] of the row) give `q_j = round_ties_even(clamp(x_j / d,
//!    −127, 127))` (f32 division; the same as rounding first, the bounds being integers). A step
//!    of 0 (only dynamic: an all-zero row, or a largest magnitude so small that `amax / 127`
//!    underflows to 0) gives all codes 0. Written once over the [`Simd`] vocabulary: every ISA
//!    gives the bits of the scalar reference (each operation is a correctly rounded IEEE one).
//! 2. **The integer dot** ([`dot_i8`]): `Σ_j q_j · c_j` with `c_j = code_j − 128` read straight
//!    from the stored weight row (`code ^ 0x80` as i8), exact in i32 at every ISA: AVX2
//!    `vpsignb` + `vpmaddubsw` + `vpmaddwd` (`|c| ≤ 128`, `|q| ≤ 127`: the i16 pair sums stay
//!    below 2 · 128 · 127 = 32512), AVX-512BW the same on 64 bytes or `vpdpbusd` with AVX-512
//!    VNNI, NEON `smull`/`smlal2` + `sadalp` or `sdot` with the dot-product extension.
//!    [`dot_i8_x4`] is the four-row variant (one activation load serves four weight rows).
//!    Row lengths are at most [`MAX_COLS`], so no partial or total sum overflows i32.
//!
//! The float work left is one multiply pair per output ([`finish`]), the same at every ISA, so
//! W8A8 outputs are bit-identical across ISAs.

use crate::simd::vocab::{abs_max, Simd};
use crate::simd::{Isa, Kernel};

/// Longest row (input features) of a W8A8 weight: `|Σ_j q_j · c_j| ≤ cols · 127 · 128`, which
/// is below 2^31 for `cols ≤ 2^17` (2^17 · 16256 = 2 130 706 432), so the i32 sums (and every
/// partial sum of a SIMD lane) are exact.
pub const MAX_COLS: usize = 1 << 17;

/// Largest activation code magnitude (−128 is never produced, so the AVX2 pair sums cannot
/// saturate).
pub const QMAX: f32 = 127.0;

/// The dynamic (per-token) step of a row: `amax / 127` in f32, `amax = max_j |x_j|` (exact).
/// 0 for an all-zero row (and when the division underflows to 0).
pub fn dynamic_step(isa: Isa, x: &[f32]) -> f32 {
    crate::simd::run(isa, AbsMax { x }) / QMAX
}

/// The scalar reference of [`quantize_i8`].
pub fn quantize_i8_ref(x: &[f32], step: f32, q: &mut [i8]) {
    assert_eq!(x.len(), q.len());
    if step == 0.0 {
        q.fill(0);
        return;
    }
    for (o, &v) in q.iter_mut().zip(x) {
        *o = (v / step).clamp(-QMAX, QMAX).round_ties_even() as i8;
    }
}

/// Largest lane count of the generic kernels.
const MAX_W: usize = 16;

/// The generic [`quantize_i8`] over the vocabulary (public so tests run it on `Emu`).
#[inline(always)]
pub fn quantize_i8_simd<S: Simd>(s: S, x: &[f32], step: f32, q: &mut [i8]) {
    let w = S::W;
    if w > MAX_W || step == 0.0 {
        return quantize_i8_ref(x, step, q);
    }
    let full = x.len() / w * w;
    let (d, lo, hi) = (s.splat(step), s.splat(-QMAX), s.splat(QMAX));
    let mut ints = [0i32; MAX_W];
    for (c, o) in x[..full].chunks_exact(w).zip(q[..full].chunks_exact_mut(w)) {
        let v = s.round_even(s.min(s.max(s.div(s.load(c), d), lo), hi));
        s.store_i32(&mut ints[..w], s.to_i32(v));
        for (o, &i) in o.iter_mut().zip(&ints) {
            *o = i as i8;
        }
    }
    quantize_i8_ref(&x[full..], step, &mut q[full..]);
}

struct QuantizeI8<'a> {
    x: &'a [f32],
    step: f32,
    q: &'a mut [i8],
}

impl Kernel for QuantizeI8<'_> {
    type Output = ();
    fn scalar(self) {
        quantize_i8_ref(self.x, self.step, self.q)
    }
    #[inline(always)]
    fn simd<S: Simd>(self, s: S) {
        quantize_i8_simd(s, self.x, self.step, self.q)
    }
}

/// Quantize one activation row `x` (finite values) with step `step` (finite, ≥ 0) into `q`
/// (same length), see the module doc. Bit-identical at every ISA.
pub fn quantize_i8(isa: Isa, x: &[f32], step: f32, q: &mut [i8]) {
    assert!(x.len() == q.len() && step.is_finite() && step >= 0.0);
    crate::simd::run(isa, QuantizeI8 { x, step, q })
}

struct AbsMax<'a> {
    x: &'a [f32],
}

impl Kernel for AbsMax<'_> {
    type Output = f32;
    fn scalar(self) -> f32 {
        self.x.iter().fold(0f32, |m, v| m.max(v.abs()))
    }
    #[inline(always)]
    fn simd<S: Simd>(self, s: S) -> f32 {
        abs_max(s, self.x)
    }
}

/// The scalar reference of [`dot_i8`]: `Σ_j q_j · (w_j − 128)` in i32.
pub fn dot_i8_ref(w: &[u8], q: &[i8]) -> i32 {
    w.iter().zip(q).map(|(&c, &x)| i32::from(c as i8 ^ i8::MIN) * i32::from(x)).sum()
}

/// `Σ_j q_j · (w_j − 128)`, exact: `w` is a stored int8 code row (u8, zero point 128), `q` the
/// activation codes (−127..=127), of the same length ≤ [`MAX_COLS`].
pub fn dot_i8(isa: Isa, w: &[u8], q: &[i8]) -> i32 {
    assert!(w.len() == q.len() && q.len() <= MAX_COLS);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => super::x86::dot_i8_avx2(w, q),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => super::x86::dot_i8_avx512(w, q),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => super::arm::dot_i8_neon(w, q),
        _ => dot_i8_ref(w, q),
    }
}

/// [`dot_i8`] of one activation row with four weight rows (each activation vector is loaded
/// once for the four). Exact, so equal to [`dot_i8_ref`] of each row at every ISA.
pub fn dot_i8_x4(isa: Isa, w: [&[u8]; 4], q: &[i8]) -> [i32; 4] {
    assert!(w.iter().all(|r| r.len() == q.len()) && q.len() <= MAX_COLS);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => super::x86::dot_i8_x4_avx2(w, q),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => super::x86::dot_i8_x4_avx512(w, q),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => super::arm::dot_i8_x4_neon(w, q),
        _ => w.map(|r| dot_i8_ref(r, q)),
    }
}

/// [`dot_i8`] of two activation rows (of one length) with four weight rows: the GEMM
/// micro-kernel (AVX2 shares each weight vector between the two rows, each activation vector
/// between the four). Exact, so equal to [`dot_i8_ref`] of each pair at every ISA.
pub fn dot_i8_4x2(isa: Isa, w: [&[u8]; 4], q: [&[i8]; 2]) -> [[i32; 2]; 4] {
    assert!(w.iter().all(|r| r.len() == q[0].len()) && q[1].len() == q[0].len() && q[0].len() <= MAX_COLS);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => super::x86::dot_i8_4x2_avx2(w, q),
        _ => {
            let (a, b) = (dot_i8_x4(isa, w, q[0]), dot_i8_x4(isa, w, q[1]));
            std::array::from_fn(|r| [a[r], b[r]])
        }
    }
}

/// One output from its exact integer sum, the weight row's scale `d` (its f16 as f32) and the
/// activation row's step: `(isum as f32 · d) · step`, in that order (two f32 roundings after the
/// conversion, which rounds to nearest even above 2^24). Multiplying by `d` first keeps a zero
/// sum exactly 0 whatever the step.
#[inline(always)]
pub fn finish(isum: i32, d: f32, step: f32) -> f32 {
    (isum as f32 * d) * step
}

/// The signature of an integer dot kernel (see [`dot_i8`]).
pub type DotI8 = fn(&[u8], &[i8]) -> i32;

/// The integer dot variants of this CPU besides the scalar reference, by name (the tests
/// compare each with [`dot_i8_ref`]): `avx2`, `avx512`, `avx512-vnni`, `neon`, `neon-dotprod`.
pub fn dot_i8_variants() -> Vec<(&'static str, DotI8)> {
    let mut v: Vec<(&'static str, DotI8)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if Isa::Avx2.is_available() {
            v.push(("avx2", super::x86::dot_i8_avx2));
        }
        if Isa::Avx512.is_available() {
            v.push(("avx512", super::x86::dot_i8_avx512_bw));
        }
        if super::has_avx512_vnni() {
            v.push(("avx512-vnni", super::x86::dot_i8_avx512_vnni));
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        v.push(("neon", super::arm::dot_i8_neon_smull));
        if super::has_dotprod() {
            v.push(("neon-dotprod", super::arm::dot_i8_neon_sdot));
        }
    }
    v
}
