//! SIMD kernels of the `-dq` types (int2/3/4-g16-dq), written once over the vocabulary
//! [`Simd`] and bit-identical to the scalar reference in [`crate::blocks::dq`] (which documents
//! the layout and the algorithm).
//!
//! How identity is kept: the grid `(d, m)` and each group's candidates come from the
//! reference's own scalar helpers (`grid`, [`candidates`]); the search runs **one candidate
//! per lane**, each lane summing its candidate's weighted squared error over the group's 16
//! values in column order with the reference's operations (`x / div`, `round_even`, `+ z`,
//! clamp, `s · (q − z) − x`, `w · r²`), `x_j` and `w_j` broadcast to all lanes; the first
//! smallest error wins ([`pick`]). Codes are packed 8 at a time with [`pack::pack_unit`] and
//! unpacked with [`pack::unpack_unit`] (checked against the reference packer by `pack`'s tests).

use half::f16;

use crate::blocks::dq::{
    block_grid, candidates, dequantize_row_ref, offsets, pick, quantize_row_ref, scale_of, super_blocks, write_header,
    CANDIDATES, GROUP, GROUPS, SCALE_BITS, SUPER, ZERO_TRIES,
};
use crate::pack;
use crate::simd::vocab::Simd;
use crate::simd::{run, Isa, Kernel};

/// Largest lane count the kernels handle (AVX-512's 16): a group is one vector or more.
const MAX_W: usize = 16;
/// Vectors of candidates at the narrowest lane count (4).
const MAX_VECS: usize = CANDIDATES.div_ceil(4);

/// Pack `codes` (`n` of them, a multiple of 8) of `B` bits into `out`, 8 at a time.
#[inline(always)]
fn pack_all<const B: u32>(codes: &[u8], out: &mut [u8]) {
    let nb = B as usize;
    for (unit, dst) in codes.chunks_exact(8).zip(out.chunks_exact_mut(nb)) {
        let mut c = [0u8; 8];
        c.copy_from_slice(unit);
        dst.copy_from_slice(&pack::pack_unit(B, u64::from_le_bytes(c)).to_le_bytes()[..nb]);
    }
}

/// Unpack `codes.len()` (a multiple of 8) codes of `B` bits from `packed`, 8 at a time.
#[inline(always)]
fn unpack_all<const B: u32>(packed: &[u8], codes: &mut [u8]) {
    let nb = B as usize;
    for (unit, dst) in packed.chunks_exact(nb).zip(codes.chunks_exact_mut(8)) {
        let mut c = [0u8; 8];
        c[..nb].copy_from_slice(unit);
        dst.copy_from_slice(&pack::unpack_unit(B, u64::from_le_bytes(c)).to_le_bytes());
    }
}

/// One super-block of the reference's quantizer (`xs`: 16 n_g values, `ws` their weights).
#[inline(always)]
fn quantize_block<S: Simd, const B: u32>(s: S, xs: &[f32], ws: Option<&[f32]>, dst: &mut [u8]) {
    let w = S::W;
    let ng = xs.len() / GROUP;
    let maxq = ((1u32 << B) - 1) as f32;
    let grid = block_grid(xs, maxq);
    let (zero, top, one) = (s.splat(0.0), s.splat(maxq), s.splat(1.0));
    let nvec = CANDIDATES.div_ceil(w);
    let mut ks = [0u8; GROUPS];
    let mut zs = [0u8; GROUPS];
    let mut codes = [0u8; SUPER];
    for (g, gx) in xs.chunks_exact(GROUP).enumerate() {
        let c = candidates(grid.d, grid.m, grid.lows[g], maxq);
        // Candidate `v W + l` in lane `l` of vector `v`; lanes past the last repeat it.
        let lane = |a: &[f32; CANDIDATES], v: usize| {
            let mut l = [0f32; MAX_W];
            for (i, o) in l.iter_mut().enumerate().take(w) {
                *o = a[(v * w + i).min(CANDIDATES - 1)];
            }
            s.load(&l)
        };
        let (mut sc, mut dv, mut zf, mut acc) =
            ([zero; MAX_VECS], [zero; MAX_VECS], [zero; MAX_VECS], [zero; MAX_VECS]);
        for v in 0..nvec {
            (sc[v], dv[v], zf[v]) = (lane(&c.scale, v), lane(&c.div, v), lane(&c.zero, v));
        }
        for (j, &x) in gx.iter().enumerate() {
            let xv = s.splat(x);
            let wv = ws.map_or(one, |ws| s.splat(ws[g * GROUP + j]));
            for v in 0..nvec {
                let q = s.add(s.round_even(s.div(xv, dv[v])), zf[v]);
                let q = s.min(s.max(q, zero), top);
                let r = s.sub(s.mul(sc[v], s.sub(q, zf[v])), xv);
                acc[v] = s.add(acc[v], s.mul(wv, s.mul(r, r)));
            }
        }
        let mut errors = [0f32; MAX_VECS * MAX_W];
        for (v, a) in acc.iter().take(nvec).enumerate() {
            s.store(&mut errors[v * w..], *a);
        }
        let best = pick(&errors[..CANDIDATES]);
        ks[g] = (best / ZERO_TRIES) as u8;
        zs[g] = c.zero[best] as u8;
        let (dvb, zb) = (s.splat(c.div[best]), s.splat(c.zero[best]));
        for (i, out) in (0..GROUP).step_by(w).zip(codes[g * GROUP..(g + 1) * GROUP].chunks_exact_mut(w)) {
            let q = s.add(s.round_even(s.div(s.load(&gx[i..]), dvb)), zb);
            s.store_u8(out, s.to_i32(s.min(s.max(q, zero), top)));
        }
    }
    // Scale codes and zeros (n_g of them, not always a multiple of 8) by the reference packer.
    let co = write_header(B, &grid, &ks[..ng], &zs[..ng], dst);
    pack_all::<B>(&codes[..GROUP * ng], &mut dst[co..]);
}

/// Quantize one row with the generic kernel: same contract and bytes as [`quantize_row_ref`].
#[inline(always)]
pub fn quantize_row_simd<S: Simd>(s: S, bits: u32, x: &[f32], dst: &mut [u8], importance: Option<&[f32]>) {
    assert!(S::W >= 4 && S::W <= MAX_W && GROUP.is_multiple_of(S::W), "lane count {} not in 4..=16", S::W);
    for (vals, bytes) in super_blocks(bits, x.len()) {
        let ws = importance.map(|w| &w[vals.clone()]);
        let (xs, dst) = (&x[vals], &mut dst[bytes]);
        match bits {
            2 => quantize_block::<S, 2>(s, xs, ws, dst),
            3 => quantize_block::<S, 3>(s, xs, ws, dst),
            _ => quantize_block::<S, 4>(s, xs, ws, dst),
        }
    }
}

/// One super-block of the reference's dequantizer.
#[inline(always)]
fn dequantize_block<S: Simd, const B: u32>(s: S, b: &[u8], ys: &mut [f32]) {
    let w = S::W;
    let ng = ys.len() / GROUP;
    let (so, zo, co) = offsets(B, ng);
    let d = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
    let m = f16::from_bits(u16::from_le_bytes([b[2], b[3]])).to_f32();
    let mut codes = [0u8; SUPER];
    unpack_all::<B>(&b[co..co + 2 * B as usize * ng], &mut codes[..GROUP * ng]);
    for (g, yg) in ys.chunks_exact_mut(GROUP).enumerate() {
        let sv = s.splat(scale_of(d, m, u32::from(pack::get_code(SCALE_BITS, &b[so..zo], g))));
        let nz = s.isplat(-i32::from(pack::get_code(B, &b[zo..co], g)));
        for (i, out) in (0..GROUP).step_by(w).zip(yg.chunks_exact_mut(w)) {
            let c = s.iadd(s.load_u8(&codes[g * GROUP + i..]), nz);
            s.store(out, s.mul(sv, s.to_f32(c)));
        }
    }
}

/// Dequantize one row with the generic kernel: same contract and bits as
/// [`dequantize_row_ref`].
#[inline(always)]
pub fn dequantize_row_simd<S: Simd>(s: S, bits: u32, src: &[u8], y: &mut [f32]) {
    assert!(S::W <= MAX_W && GROUP.is_multiple_of(S::W), "lane count {} does not divide 16", S::W);
    for (vals, bytes) in super_blocks(bits, y.len()) {
        let (b, ys) = (&src[bytes], &mut y[vals]);
        match bits {
            2 => dequantize_block::<S, 2>(s, b, ys),
            3 => dequantize_block::<S, 3>(s, b, ys),
            _ => dequantize_block::<S, 4>(s, b, ys),
        }
    }
}

/// Front of [`quantize_row`].
struct Quantize<'a> {
    bits: u32,
    x: &'a [f32],
    dst: &'a mut [u8],
    importance: Option<&'a [f32]>,
}

impl Kernel for Quantize<'_> {
    type Output = ();
    fn scalar(self) {
        quantize_row_ref(self.bits, self.x, self.dst, self.importance)
    }
    #[inline(always)]
    fn simd<S: Simd>(self, s: S) {
        quantize_row_simd(s, self.bits, self.x, self.dst, self.importance)
    }
}

/// Front of [`dequantize_row`].
struct Dequantize<'a> {
    bits: u32,
    src: &'a [u8],
    y: &'a mut [f32],
}

impl Kernel for Dequantize<'_> {
    type Output = ();
    fn scalar(self) {
        dequantize_row_ref(self.bits, self.src, self.y)
    }
    #[inline(always)]
    fn simd<S: Simd>(self, s: S) {
        dequantize_row_simd(s, self.bits, self.src, self.y)
    }
}

/// Quantize one row of a `bits`-bit `-dq` type (see `blocks` for the contract).
pub fn quantize_row(isa: Isa, bits: u32, x: &[f32], dst: &mut [u8], importance: Option<&[f32]>) {
    run(isa, Quantize { bits, x, dst, importance })
}

/// Dequantize one row of a `bits`-bit `-dq` type.
pub fn dequantize_row(isa: Isa, bits: u32, src: &[u8], y: &mut [f32]) {
    run(isa, Dequantize { bits, src, y })
}
