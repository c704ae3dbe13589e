//! The SIMD vocabulary: the few lane-wise operations our kernels are written in.
//!
//! A type implementing [`Simd`] is a *capability token*: a value of it exists only where its
//! instruction set is available, so the methods are safe. Kernels take `S: Simd` and are
//! `#[inline(always)]`; each ISA module instantiates them inside a `#[target_feature]`
//! function, where the methods (also `#[inline(always)]`) compile to single instructions.
//!
//! Semantics are exactly those of IEEE-754 single precision per lane, with no fused
//! multiply-add, so a kernel produces the same bits at every lane count and on every ISA, and
//! the same bits as scalar code doing the same operations in the same order. Callers never
//! pass NaN (inputs are validated first). The one ambiguity left is the sign of a zero
//! returned by `min`/`max`/`hmin`/`hmax` when +0.0 and −0.0 tie: kernels that store such a
//! result normalise it by adding +0.0 (which turns −0.0 into +0.0).

/// The lane-wise vocabulary. `W` lanes of `f32` ([`Simd::F`]), of `i32` ([`Simd::I`]) and a
/// lane mask ([`Simd::M`]).
pub trait Simd: Copy + Send + Sync + 'static {
    /// Number of lanes.
    const W: usize;
    /// `W` × f32.
    type F: Copy;
    /// `W` × i32.
    type I: Copy;
    /// `W` × bool.
    type M: Copy;

    /// All lanes `v`.
    fn splat(self, v: f32) -> Self::F;
    /// Lanes from `s[..W]` (panics if `s` is shorter).
    fn load(self, s: &[f32]) -> Self::F;
    /// Lanes into `s[..W]` (panics if `s` is shorter).
    fn store(self, s: &mut [f32], v: Self::F);
    /// a + b.
    fn add(self, a: Self::F, b: Self::F) -> Self::F;
    /// a − b.
    fn sub(self, a: Self::F, b: Self::F) -> Self::F;
    /// a × b.
    fn mul(self, a: Self::F, b: Self::F) -> Self::F;
    /// a ÷ b (correctly rounded).
    fn div(self, a: Self::F, b: Self::F) -> Self::F;
    /// Lane-wise minimum (no NaN inputs).
    fn min(self, a: Self::F, b: Self::F) -> Self::F;
    /// Lane-wise maximum (no NaN inputs).
    fn max(self, a: Self::F, b: Self::F) -> Self::F;
    /// |a| (clears the sign bit).
    fn abs(self, a: Self::F) -> Self::F;
    /// −a (flips the sign bit).
    fn neg(self, a: Self::F) -> Self::F;
    /// Round to nearest, ties to even (`f32::round_ties_even`, ggml's `nearest_int`).
    fn round_even(self, a: Self::F) -> Self::F;
    /// Round to nearest, ties away from zero (C `roundf`, `f32::round`).
    fn round_away(self, a: Self::F) -> Self::F;
    /// Round toward zero (`f32::trunc`, a C cast to int).
    fn trunc(self, a: Self::F) -> Self::F;
    /// a < b.
    fn lt(self, a: Self::F, b: Self::F) -> Self::M;
    /// a <= b.
    fn le(self, a: Self::F, b: Self::F) -> Self::M;
    /// a == b.
    fn eq(self, a: Self::F, b: Self::F) -> Self::M;
    /// `m ? a : b` per lane.
    fn select(self, m: Self::M, a: Self::F, b: Self::F) -> Self::F;
    /// m ∧ n.
    fn mand(self, m: Self::M, n: Self::M) -> Self::M;
    /// m ∨ n.
    fn mor(self, m: Self::M, n: Self::M) -> Self::M;
    /// ¬m.
    fn mnot(self, m: Self::M) -> Self::M;
    /// Lane i of `m` as bit i.
    fn bitmask(self, m: Self::M) -> u64;
    /// a × b + c with one rounding (fused multiply-add).
    fn fma(self, a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    /// Sum of the lanes (the order of the additions is the implementation's).
    fn hsum(self, a: Self::F) -> f32;
    /// [`Simd::hsum`] of each of four vectors, the same bits (a level may share the shuffles).
    #[inline(always)]
    fn hsum4(self, v: [Self::F; 4]) -> [f32; 4] {
        v.map(|a| self.hsum(a))
    }
    /// Largest lane (exact).
    fn hmax(self, a: Self::F) -> f32;
    /// Smallest lane (exact).
    fn hmin(self, a: Self::F) -> f32;

    /// f32 → i32 of a value that is already integral and in i32 range (exact).
    fn to_i32(self, a: Self::F) -> Self::I;
    /// i32 → f32 (exact for |v| < 2^24).
    fn to_f32(self, a: Self::I) -> Self::F;
    /// The bits of each f32 lane as i32 (a bit cast).
    fn to_bits(self, a: Self::F) -> Self::I;
    /// i32 lanes reinterpreted as f32 (a bit cast).
    #[allow(clippy::wrong_self_convention)]
    fn from_bits(self, a: Self::I) -> Self::F;
    /// All lanes `v`.
    fn isplat(self, v: i32) -> Self::I;
    /// a + b (wrapping).
    fn iadd(self, a: Self::I, b: Self::I) -> Self::I;
    /// a & b.
    fn iand(self, a: Self::I, b: Self::I) -> Self::I;
    /// a | b.
    fn ior(self, a: Self::I, b: Self::I) -> Self::I;
    /// Lane-wise signed minimum.
    fn imin(self, a: Self::I, b: Self::I) -> Self::I;
    /// Lane-wise signed maximum.
    fn imax(self, a: Self::I, b: Self::I) -> Self::I;
    /// a << n (n < 32).
    fn shl(self, a: Self::I, n: u32) -> Self::I;
    /// a >> n, logical (n < 32).
    fn shr(self, a: Self::I, n: u32) -> Self::I;
    /// a == b.
    fn ieq(self, a: Self::I, b: Self::I) -> Self::M;
    /// Lanes into `s[..W]`.
    fn store_i32(self, s: &mut [i32], v: Self::I);
    /// Lanes from `s[..W]`.
    fn load_i32(self, s: &[i32]) -> Self::I;
    /// The low byte of each lane into `s[..W]` (lanes hold 0..=255 or −128..=127).
    fn store_u8(self, s: &mut [u8], v: Self::I);
    /// `s[..W]` zero-extended.
    fn load_u8(self, s: &[u8]) -> Self::I;
    /// `s[..W]` as i8, sign-extended.
    fn load_i8(self, s: &[u8]) -> Self::I;
}

/// Largest |x| of a slice (exact; +0.0 when empty): `W` lanes at a time, the tail lane by lane.
/// Every lane is +0.0 or more (`abs` clears the sign), so no −0.0 tie arises.
#[inline(always)]
pub fn abs_max<S: Simd>(s: S, x: &[f32]) -> f32 {
    let full = x.len() / S::W * S::W;
    let mut m = s.splat(0.0);
    for c in x[..full].chunks_exact(S::W) {
        m = s.max(m, s.abs(s.load(c)));
    }
    x[full..].iter().fold(s.hmax(m), |m, v| m.max(v.abs()))
}

/// e^x per lane, for finite `x` (Cephes' single-precision method: `x = n ln 2 + r`, a degree-7
/// polynomial in `r`, times 2^n built in the exponent bits). Within 2 ulp of `f32::exp` for x in
/// [−87.3, 88.37]; 0 below −87.34 (where `f32::exp` still gives subnormals), e^88.37 from there to
/// 88.72 (at most 1.4× short), +∞ above. Exact at 0 (e^0 = 1).
#[inline(always)]
pub fn exp<S: Simd>(s: S, x: S::F) -> S::F {
    const LO: f32 = -87.336_54;
    const HI: f32 = 88.37;
    let xc = s.min(s.max(x, s.splat(LO)), s.splat(HI));
    let n = s.round_even(s.mul(xc, s.splat(std::f32::consts::LOG2_E)));
    // r = x − n ln 2, ln 2 in two parts (the first, 0.693359375, has 9 significant bits, so
    // n times it is exact).
    let r = s.fma(n, s.splat(-0.693_359_4), xc);
    let r = s.fma(n, s.splat(2.121_944_4e-4), r);
    let mut p = s.splat(1.987_569_1e-4);
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = s.fma(p, r, s.splat(c));
    }
    let y = s.add(s.fma(p, s.mul(r, r), r), s.splat(1.0));
    let two_n = s.from_bits(s.shl(s.iadd(s.to_i32(n), s.isplat(127)), 23));
    let e = s.mul(y, two_n);
    let e = s.select(s.lt(x, s.splat(LO)), s.splat(0.0), e);
    s.select(s.lt(s.splat(88.722_84), x), s.splat(f32::INFINITY), e)
}
