//! SIMD kernels of the group-affine family (int2/int3/int4/int8), written once over the
//! vocabulary [`Simd`] and bit-identical to the scalar reference in [`crate::blocks::affine`]
//! (which documents the algorithm).
//!
//! How identity is kept:
//! * per-group parameters (f16 scale, zero point, clip search winner) come from the same scalar
//!   helpers as the reference ([`group_params`], [`pick_best`]), fed with bit-identical inputs:
//!   the group's min/max are exact reductions whatever the lane order, −0.0 normalised;
//! * each value goes through the reference's operations in its order: `x / div` (a correctly
//!   rounded division), `round_even`, `+ zero`, clamp to `[0, maxq]`; dequantization
//!   `scale * (code − zero)`;
//! * the clip search runs **one candidate ratio per lane**: each lane sums its candidate's
//!   weighted squared error over the group's values in column order, exactly as the reference's
//!   sequential sum, with `x_j` and `w_j` broadcast to all lanes;
//! * codes are packed from a small byte buffer 8 at a time with [`pack::pack_unit`] (a few
//!   shifts on a `u64`), checked against the reference packer [`pack::pack_codes`] by the tests.

use half::f16;

use crate::blocks::affine::{
    clip_candidate, data_range, dequantize_row_ref, explicit_range, group_params, pick_best, quantize_row_ref,
    GroupParams, CLIP_CANDIDATES,
};
use crate::blocks::AffineRow;
use crate::pack;
use crate::qtype::AffineSpec;
use crate::simd::vocab::Simd;
use crate::simd::{run, Isa, Kernel};

/// Values per inner chunk: codes are buffered in bytes, then packed. A multiple of 8 (the
/// packing unit) and of every lane count the kernels are instantiated with (4, 8, 16).
const CHUNK: usize = 64;

/// Vectors of candidates in the clip search at the narrowest lane count (4): ceil(21 / 4).
const MAX_VECS: usize = CLIP_CANDIDATES.div_ceil(4);

/// The smallest and largest lane value of a group, including 0: `[min(min x, 0), max(max x, 0)]`
/// with −0.0 normalised to +0.0 (min/max are exact, so any reduction order gives the reference's
/// values).
#[inline(always)]
fn group_range<S: Simd>(s: S, xs: &[f32]) -> (f32, f32) {
    let w = S::W;
    let zero = s.splat(0.0);
    let (mut lo0, mut hi0, mut lo1, mut hi1) = (zero, zero, zero, zero);
    let mut i = 0;
    while i + 2 * w <= xs.len() {
        let a = s.load(&xs[i..]);
        let b = s.load(&xs[i + w..]);
        lo0 = s.min(lo0, a);
        hi0 = s.max(hi0, a);
        lo1 = s.min(lo1, b);
        hi1 = s.max(hi1, b);
        i += 2 * w;
    }
    let mut lo = s.hmin(s.min(lo0, lo1));
    let mut hi = s.hmax(s.max(hi0, hi1));
    let (tlo, thi) = data_range(&xs[i..]);
    if tlo < lo {
        lo = tlo;
    }
    if thi > hi {
        hi = thi;
    }
    (lo + 0.0, hi + 0.0)
}

/// The clip search of the reference (see [`crate::blocks::affine`]), one candidate per lane.
#[inline(always)]
fn search_params<S: Simd>(
    s: S,
    xs: &[f32],
    ws: &[f32],
    spec: &AffineSpec,
    ratios: &[f32; CLIP_CANDIDATES],
    lo: f32,
    hi: f32,
) -> GroupParams {
    let w = S::W;
    let maxq = spec.max_code() as f32;
    let mut cands = [group_params(spec.bits, spec.symmetric, lo, hi); CLIP_CANDIDATES];
    for (c, &r) in cands.iter_mut().zip(ratios) {
        *c = group_params(spec.bits, spec.symmetric, lo * r, hi * r);
    }
    // Candidate `k * W + l` runs in lane `l` of vector `k`; lanes past the last candidate repeat
    // it and their sums are discarded. All vectors advance together over the values (more
    // independent work per value than one pass per vector); each lane still sums its own terms
    // in column order, like the reference.
    let nvec = CLIP_CANDIDATES.div_ceil(w);
    let (zero, top) = (s.splat(0.0), s.splat(maxq));
    let mut d = [zero; MAX_VECS];
    let mut div = [zero; MAX_VECS];
    let mut zf = [zero; MAX_VECS];
    for k in 0..nvec {
        let (mut dl, mut divl, mut zfl) = ([0f32; 64], [0f32; 64], [0f32; 64]);
        for l in 0..w {
            let c = &cands[(k * w + l).min(CLIP_CANDIDATES - 1)];
            dl[l] = c.scale;
            divl[l] = c.div;
            zfl[l] = c.zero_f;
        }
        d[k] = s.load(&dl);
        div[k] = s.load(&divl);
        zf[k] = s.load(&zfl);
    }
    let mut acc = [zero; MAX_VECS];
    for (&x, &wt) in xs.iter().zip(ws) {
        let (xv, wv) = (s.splat(x), s.splat(wt));
        for k in 0..nvec {
            let q = s.add(s.round_even(s.div(xv, div[k])), zf[k]);
            let q = s.min(s.max(q, zero), top);
            let r = s.sub(s.mul(d[k], s.sub(q, zf[k])), xv);
            acc[k] = s.add(acc[k], s.mul(wv, s.mul(r, r)));
        }
    }
    let mut errors = [0f32; CLIP_CANDIDATES + 64];
    for (k, a) in acc.iter().take(nvec).enumerate() {
        s.store(&mut errors[k * w..], *a);
    }
    cands[pick_best(&errors[..CLIP_CANDIDATES])]
}

/// Codes of `W` values: `clamp(round_even(x / div) + zf, 0, maxq)` as i32 lanes.
#[inline(always)]
fn codes_of<S: Simd>(s: S, x: S::F, div: S::F, zf: S::F, zero: S::F, top: S::F) -> S::I {
    let q = s.add(s.round_even(s.div(x, div)), zf);
    s.to_i32(s.min(s.max(q, zero), top))
}

/// Quantize the values of one group into its packed codes `out` (`xs.len() * B / 8` bytes).
/// `B` (the code width) is a constant so the 8-code units are fixed-size loads and stores.
#[inline(always)]
fn encode_group<S: Simd, const B: u32>(s: S, xs: &[f32], p: &GroupParams, out: &mut [u8]) {
    let w = S::W;
    let bytes = B as usize;
    let (div, zf) = (s.splat(p.div), s.splat(p.zero_f));
    let (zero, top) = (s.splat(0.0), s.splat(((1u32 << B) - 1) as f32));
    let mut codes = [0u8; CHUNK];
    for (chunk, packed) in xs.chunks(CHUNK).zip(out.chunks_mut(CHUNK / 8 * bytes)) {
        let n = chunk.len();
        let mut i = 0;
        while i + w <= n {
            s.store_u8(&mut codes[i..], codes_of(s, s.load(&chunk[i..]), div, zf, zero, top));
            i += w;
        }
        if i < n {
            // Tail shorter than a vector (e.g. 8 values at 16 lanes): pad, compute, keep n − i.
            let mut pad = [0f32; CHUNK];
            pad[..n - i].copy_from_slice(&chunk[i..]);
            let mut tail = [0u8; CHUNK];
            s.store_u8(&mut tail, codes_of(s, s.load(&pad), div, zf, zero, top));
            codes[i..n].copy_from_slice(&tail[..n - i]);
        }
        if B == 8 {
            packed.copy_from_slice(&codes[..n]);
            continue;
        }
        for (unit, dst) in codes[..n].chunks_exact(8).zip(packed.chunks_exact_mut(bytes)) {
            let mut c = [0u8; 8];
            c.copy_from_slice(unit);
            let word = pack::pack_unit(B, u64::from_le_bytes(c));
            dst.copy_from_slice(&word.to_le_bytes()[..bytes]);
        }
    }
}

/// Dequantize one group: `packed` codes (`ys.len() * B / 8` bytes), scale `d`, zero point `z`.
#[inline(always)]
fn decode_group<S: Simd, const B: u32>(s: S, packed: &[u8], d: f32, z: i32, ys: &mut [f32]) {
    let w = S::W;
    let bytes = B as usize;
    let (d, nz) = (s.splat(d), s.isplat(-z));
    let mut buf = [0u8; CHUNK];
    for (chunk, packed) in ys.chunks_mut(CHUNK).zip(packed.chunks(CHUNK / 8 * bytes)) {
        let n = chunk.len();
        let codes: &[u8] = if B == 8 {
            packed
        } else {
            for (unit, dst) in packed.chunks_exact(bytes).zip(buf.chunks_exact_mut(8)) {
                let mut c = [0u8; 8];
                c[..bytes].copy_from_slice(unit);
                dst.copy_from_slice(&pack::unpack_unit(B, u64::from_le_bytes(c)).to_le_bytes());
            }
            &buf
        };
        let mut i = 0;
        while i + w <= n {
            s.store(&mut chunk[i..], s.mul(d, s.to_f32(s.iadd(s.load_u8(&codes[i..]), nz))));
            i += w;
        }
        if i < n {
            // Tail shorter than a vector: decode a padded vector, keep n − i values.
            let mut c = [0u8; CHUNK];
            c[..n - i].copy_from_slice(&codes[i..n]);
            let mut tail = [0f32; CHUNK];
            s.store(&mut tail, s.mul(d, s.to_f32(s.iadd(s.load_u8(&c), nz))));
            chunk[i..].copy_from_slice(&tail[..n - i]);
        }
    }
}

/// Quantize one row with the generic SIMD kernel: same contract and bytes as
/// [`quantize_row_ref`]. `x.len()` is a multiple of 8, `dst` is `p.spec.row_bytes(x.len())`
/// bytes, `importance` (if any) has `x.len()` finite non-negative weights.
#[inline(always)]
pub fn quantize_row_simd<S: Simd>(s: S, x: &[f32], dst: &mut [u8], p: &AffineRow<'_>, importance: Option<&[f32]>) {
    assert!(
        S::W >= 4 && S::W <= CHUNK && CHUNK.is_multiple_of(S::W),
        "lane count {} not in 4..={CHUNK} or not dividing it",
        S::W
    );
    let spec = p.spec;
    let cols = x.len();
    let g = spec.group_cols(cols);
    let groups = spec.groups(cols);
    let group_bytes = g * spec.bits as usize / 8;
    let (codes, rest) = dst.split_at_mut(cols * spec.bits as usize / 8);
    let (scales, zeros) = rest.split_at_mut(2 * groups);
    zeros.fill(0);
    let mut ratios = [0f32; CLIP_CANDIDATES];
    for (i, r) in ratios.iter_mut().enumerate() {
        *r = clip_candidate(p.clip_ratio, i);
    }
    for (gi, ((xs, out), sc)) in
        x.chunks(g).zip(codes.chunks_mut(group_bytes)).zip(scales.chunks_exact_mut(2)).enumerate()
    {
        let params = if let Some((mins, maxs)) = p.range {
            let (lo, hi) = explicit_range(mins[gi], maxs[gi]);
            group_params(spec.bits, spec.symmetric, lo, hi)
        } else {
            let (lo, hi) = group_range(s, xs);
            match importance {
                None => group_params(spec.bits, spec.symmetric, lo * p.clip_ratio, hi * p.clip_ratio),
                Some(imp) => {
                    let ws = &imp[gi * g..gi * g + xs.len()];
                    search_params(s, xs, ws, &spec, &ratios, lo, hi)
                }
            }
        };
        sc.copy_from_slice(&params.scale_bits.to_le_bytes());
        if !spec.symmetric {
            pack::set_code(spec.bits, zeros, gi, params.zero);
        }
        match spec.bits {
            2 => encode_group::<S, 2>(s, xs, &params, out),
            3 => encode_group::<S, 3>(s, xs, &params, out),
            4 => encode_group::<S, 4>(s, xs, &params, out),
            _ => encode_group::<S, 8>(s, xs, &params, out),
        }
    }
}

/// Dequantize one row with the generic SIMD kernel: same contract and bits as
/// [`dequantize_row_ref`]. `src` is `spec.row_bytes(y.len())` bytes.
#[inline(always)]
pub fn dequantize_row_simd<S: Simd>(s: S, spec: &AffineSpec, src: &[u8], y: &mut [f32]) {
    assert!(S::W <= CHUNK && CHUNK.is_multiple_of(S::W), "lane count {} does not divide {CHUNK}", S::W);
    let bits = spec.bits;
    let cols = y.len();
    let g = spec.group_cols(cols);
    let groups = spec.groups(cols);
    let (codes, rest) = src.split_at(cols * bits as usize / 8);
    let (scales, zeros) = rest.split_at(2 * groups);
    let group_bytes = g * bits as usize / 8;
    for (gi, ((ys, packed), sc)) in
        y.chunks_mut(g).zip(codes.chunks(group_bytes)).zip(scales.chunks_exact(2)).enumerate()
    {
        let d = f16::from_bits(u16::from_le_bytes([sc[0], sc[1]])).to_f32();
        let z = if spec.symmetric { 1 << (bits - 1) } else { i32::from(pack::get_code(bits, zeros, gi)) };
        match bits {
            2 => decode_group::<S, 2>(s, packed, d, z, ys),
            3 => decode_group::<S, 3>(s, packed, d, z, ys),
            4 => decode_group::<S, 4>(s, packed, d, z, ys),
            _ => decode_group::<S, 8>(s, packed, d, z, ys),
        }
    }
}

/// Front of [`quantize_row`]: scalar reference or the generic kernel.
struct Quantize<'a, 'b> {
    x: &'a [f32],
    dst: &'a mut [u8],
    p: &'a AffineRow<'b>,
    importance: Option<&'a [f32]>,
}

impl Kernel for Quantize<'_, '_> {
    type Output = ();
    fn scalar(self) {
        quantize_row_ref(self.x, self.dst, self.p, self.importance)
    }
    #[inline(always)]
    fn simd<S: Simd>(self, s: S) {
        quantize_row_simd(s, self.x, self.dst, self.p, self.importance)
    }
}

/// Front of [`dequantize_row`].
struct Dequantize<'a> {
    spec: &'a AffineSpec,
    src: &'a [u8],
    y: &'a mut [f32],
}

impl Kernel for Dequantize<'_> {
    type Output = ();
    fn scalar(self) {
        dequantize_row_ref(self.spec, self.src, self.y)
    }
    #[inline(always)]
    fn simd<S: Simd>(self, s: S) {
        dequantize_row_simd(s, self.spec, self.src, self.y)
    }
}

/// Quantize one row (see `blocks` for the contract).
pub fn quantize_row(isa: Isa, x: &[f32], dst: &mut [u8], p: &AffineRow<'_>, importance: Option<&[f32]>) {
    run(isa, Quantize { x, dst, p, importance })
}
/// Dequantize one row.
pub fn dequantize_row(isa: Isa, spec: &AffineSpec, src: &[u8], y: &mut [f32]) {
    run(isa, Dequantize { spec, src, y })
}
