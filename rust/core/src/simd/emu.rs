//! [`Emu<W>`]: the vocabulary on plain arrays of `W` lanes. It defines the semantics the
//! hardware implementations must match, and lets tests run every generic kernel at 4, 8 and 16
//! lanes on any host (so the 16-lane shape of the AVX-512 kernels is exercised even where the
//! CPU has no AVX-512).

use super::vocab::Simd;

/// Array-backed vocabulary with `W` lanes (any host).
#[derive(Debug, Clone, Copy, Default)]
pub struct Emu<const W: usize>;

#[inline(always)]
fn map<const W: usize, T: Copy, U: Copy + Default>(a: [T; W], f: impl Fn(T) -> U) -> [U; W] {
    let mut r = [U::default(); W];
    for i in 0..W {
        r[i] = f(a[i]);
    }
    r
}

#[inline(always)]
fn zip<const W: usize, T: Copy, U: Copy + Default>(a: [T; W], b: [T; W], f: impl Fn(T, T) -> U) -> [U; W] {
    let mut r = [U::default(); W];
    for i in 0..W {
        r[i] = f(a[i], b[i]);
    }
    r
}

impl<const W: usize> Simd for Emu<W> {
    const W: usize = W;
    type F = [f32; W];
    type I = [i32; W];
    type M = [bool; W];

    #[inline(always)]
    fn splat(self, v: f32) -> [f32; W] {
        [v; W]
    }
    #[inline(always)]
    fn load(self, s: &[f32]) -> [f32; W] {
        s[..W].try_into().unwrap()
    }
    #[inline(always)]
    fn store(self, s: &mut [f32], v: [f32; W]) {
        s[..W].copy_from_slice(&v)
    }
    #[inline(always)]
    fn add(self, a: [f32; W], b: [f32; W]) -> [f32; W] {
        zip(a, b, |x, y| x + y)
    }
    #[inline(always)]
    fn sub(self, a: [f32; W], b: [f32; W]) -> [f32; W] {
        zip(a, b, |x, y| x - y)
    }
    #[inline(always)]
    fn mul(self, a: [f32; W], b: [f32; W]) -> [f32; W] {
        zip(a, b, |x, y| x * y)
    }
    #[inline(always)]
    fn div(self, a: [f32; W], b: [f32; W]) -> [f32; W] {
        zip(a, b, |x, y| x / y)
    }
    #[inline(always)]
    fn min(self, a: [f32; W], b: [f32; W]) -> [f32; W] {
        zip(a, b, |x, y| if x < y { x } else { y })
    }
    #[inline(always)]
    fn max(self, a: [f32; W], b: [f32; W]) -> [f32; W] {
        zip(a, b, |x, y| if x > y { x } else { y })
    }
    #[inline(always)]
    fn abs(self, a: [f32; W]) -> [f32; W] {
        map(a, f32::abs)
    }
    #[inline(always)]
    fn neg(self, a: [f32; W]) -> [f32; W] {
        map(a, |x| -x)
    }
    #[inline(always)]
    fn round_even(self, a: [f32; W]) -> [f32; W] {
        map(a, f32::round_ties_even)
    }
    #[inline(always)]
    fn round_away(self, a: [f32; W]) -> [f32; W] {
        map(a, f32::round)
    }
    #[inline(always)]
    fn trunc(self, a: [f32; W]) -> [f32; W] {
        map(a, f32::trunc)
    }
    #[inline(always)]
    fn lt(self, a: [f32; W], b: [f32; W]) -> [bool; W] {
        zip(a, b, |x, y| x < y)
    }
    #[inline(always)]
    fn le(self, a: [f32; W], b: [f32; W]) -> [bool; W] {
        zip(a, b, |x, y| x <= y)
    }
    #[inline(always)]
    fn eq(self, a: [f32; W], b: [f32; W]) -> [bool; W] {
        zip(a, b, |x, y| x == y)
    }
    #[inline(always)]
    fn select(self, m: [bool; W], a: [f32; W], b: [f32; W]) -> [f32; W] {
        let mut r = b;
        for i in 0..W {
            if m[i] {
                r[i] = a[i];
            }
        }
        r
    }
    #[inline(always)]
    fn mand(self, m: [bool; W], n: [bool; W]) -> [bool; W] {
        zip(m, n, |x, y| x & y)
    }
    #[inline(always)]
    fn mor(self, m: [bool; W], n: [bool; W]) -> [bool; W] {
        zip(m, n, |x, y| x | y)
    }
    #[inline(always)]
    fn mnot(self, m: [bool; W]) -> [bool; W] {
        map(m, |x| !x)
    }
    #[inline(always)]
    fn bitmask(self, m: [bool; W]) -> u64 {
        m.iter().enumerate().fold(0u64, |acc, (i, &b)| acc | (u64::from(b) << i))
    }
    #[inline(always)]
    fn fma(self, a: [f32; W], b: [f32; W], c: [f32; W]) -> [f32; W] {
        std::array::from_fn(|i| a[i].mul_add(b[i], c[i]))
    }
    #[inline(always)]
    fn hsum(self, a: [f32; W]) -> f32 {
        a.iter().sum()
    }
    #[inline(always)]
    fn hmax(self, a: [f32; W]) -> f32 {
        a.iter().copied().fold(f32::NEG_INFINITY, |m, x| if x > m { x } else { m })
    }
    #[inline(always)]
    fn hmin(self, a: [f32; W]) -> f32 {
        a.iter().copied().fold(f32::INFINITY, |m, x| if x < m { x } else { m })
    }
    #[inline(always)]
    fn to_i32(self, a: [f32; W]) -> [i32; W] {
        map(a, |x| x as i32)
    }
    #[inline(always)]
    fn to_f32(self, a: [i32; W]) -> [f32; W] {
        map(a, |x| x as f32)
    }
    #[inline(always)]
    fn to_bits(self, a: [f32; W]) -> [i32; W] {
        map(a, |x| x.to_bits() as i32)
    }
    #[inline(always)]
    fn from_bits(self, a: [i32; W]) -> [f32; W] {
        map(a, |x| f32::from_bits(x as u32))
    }
    #[inline(always)]
    fn isplat(self, v: i32) -> [i32; W] {
        [v; W]
    }
    #[inline(always)]
    fn iadd(self, a: [i32; W], b: [i32; W]) -> [i32; W] {
        zip(a, b, i32::wrapping_add)
    }
    #[inline(always)]
    fn iand(self, a: [i32; W], b: [i32; W]) -> [i32; W] {
        zip(a, b, |x, y| x & y)
    }
    #[inline(always)]
    fn ior(self, a: [i32; W], b: [i32; W]) -> [i32; W] {
        zip(a, b, |x, y| x | y)
    }
    #[inline(always)]
    fn imin(self, a: [i32; W], b: [i32; W]) -> [i32; W] {
        zip(a, b, i32::min)
    }
    #[inline(always)]
    fn imax(self, a: [i32; W], b: [i32; W]) -> [i32; W] {
        zip(a, b, i32::max)
    }
    #[inline(always)]
    fn shl(self, a: [i32; W], n: u32) -> [i32; W] {
        map(a, |x| ((x as u32) << n) as i32)
    }
    #[inline(always)]
    fn shr(self, a: [i32; W], n: u32) -> [i32; W] {
        map(a, |x| ((x as u32) >> n) as i32)
    }
    #[inline(always)]
    fn ieq(self, a: [i32; W], b: [i32; W]) -> [bool; W] {
        zip(a, b, |x, y| x == y)
    }
    #[inline(always)]
    fn store_i32(self, s: &mut [i32], v: [i32; W]) {
        s[..W].copy_from_slice(&v)
    }
    #[inline(always)]
    fn load_i32(self, s: &[i32]) -> [i32; W] {
        s[..W].try_into().unwrap()
    }
    #[inline(always)]
    fn store_u8(self, s: &mut [u8], v: [i32; W]) {
        for i in 0..W {
            s[i] = v[i] as u8;
        }
    }
    #[inline(always)]
    fn load_u8(self, s: &[u8]) -> [i32; W] {
        let mut r = [0; W];
        for i in 0..W {
            r[i] = i32::from(s[i]);
        }
        r
    }
    #[inline(always)]
    fn load_i8(self, s: &[u8]) -> [i32; W] {
        let mut r = [0; W];
        for i in 0..W {
            r[i] = i32::from(s[i] as i8);
        }
        r
    }
}
