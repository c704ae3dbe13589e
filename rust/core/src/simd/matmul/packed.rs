//! Weights repacked for the GEMV (ggml's CPU_REPACK idea, our own layout): q4_0 and iq4_nl
//! rows interleaved four at a time, so that one 64-byte load holds a block of codes of four
//! rows and one 16-byte load the scales of two blocks of four rows.
//!
//! **Layout.** Rows are taken in groups of [`PACK_ROWS`] (a last group of fewer rows repeats
//! its last row); a group holds the same bytes as its four stored rows (`4 · row_bytes`),
//! rearranged by pairs of blocks: for blocks `2p` and `2p + 1`, at `144 p`, the eight f16
//! scales (rows 0–3 of block `2p`, then of block `2p + 1`), then the 16 code bytes of rows 0–3
//! of block `2p`, then those of block `2p + 1`; an odd last block is the four scales and the
//! four rows' codes ([`slot`]). The code bytes are the stored ones (low nibble value `j`, high
//! nibble value `j + 16`).
//!
//! **Bits.** The packed kernel gives [`super::dot_b32_ref`]'s bits, as every b32 kernel does,
//! so a packed weight's outputs are those of the stored one at every ISA and batch size.

use super::ActRow;
use crate::qtype::QType;
use crate::simd::Isa;

/// Rows per group of the packed layout.
pub const PACK_ROWS: usize = 4;

/// Bytes per stored block of the packed types (an f16 scale and 16 code bytes).
const BLOCK: usize = 18;

/// Whether weights of `qtype` can be packed ([`pack`]): q4_0 and iq4_nl.
pub fn can_pack(qtype: QType) -> bool {
    matches!(qtype, QType::Q4_0 | QType::IQ4NL)
}

/// Whether the packed kernel ([`dot_packed`]) runs at `isa` (AVX-512 VNNI). Elsewhere a packed
/// weight is multiplied through its rows unpacked ([`unpack_row`]), the same bits, slower.
pub fn has_packed(isa: Isa) -> bool {
    super::has_outer(isa)
}

/// Bytes of a packed matrix of `rows` rows of `row_bytes` each: whole groups.
pub fn packed_len(rows: usize, row_bytes: usize) -> usize {
    rows.div_ceil(PACK_ROWS) * PACK_ROWS * row_bytes
}

/// Where row `r`'s block `b` (of `nb` per row) has its scale and its 16 code bytes in a group.
#[inline]
pub fn slot(nb: usize, b: usize, r: usize) -> (usize, usize) {
    let base = 2 * PACK_ROWS * BLOCK * (b / 2);
    if b % 2 == 1 || b + 1 < nb {
        // A whole pair: 8 scales, then block 2p's codes, then block 2p + 1's.
        (base + 2 * (PACK_ROWS * (b % 2) + r), base + 16 + 64 * (b % 2) + 16 * r)
    } else {
        // An odd last block: 4 scales, then the codes.
        (base + 2 * r, base + 8 + 16 * r)
    }
}

/// Pack the `rows` stored rows of `data` (`cols` values each, a type with [`can_pack`]) into
/// `out` ([`packed_len`] bytes).
pub fn pack(qtype: QType, rows: usize, cols: usize, data: &[u8], out: &mut [u8]) {
    assert!(can_pack(qtype) && cols.is_multiple_of(32), "{} rows of {cols} cannot be packed", qtype.name());
    let (nb, rb) = (cols / 32, cols / 32 * BLOCK);
    assert!(rows > 0 && data.len() == rows * rb && out.len() == packed_len(rows, rb));
    for (g, group) in out.chunks_exact_mut(PACK_ROWS * rb).enumerate() {
        for r in 0..PACK_ROWS {
            let row = &data[(PACK_ROWS * g + r).min(rows - 1) * rb..][..rb];
            for (b, blk) in row.chunks_exact(BLOCK).enumerate() {
                let (d, c) = slot(nb, b, r);
                group[d..d + 2].copy_from_slice(&blk[..2]);
                group[c..c + 16].copy_from_slice(&blk[2..]);
            }
        }
    }
}

/// Row `r` of a packed matrix (`cols` values per row) in the stored layout, into `out`
/// (`row_bytes` bytes).
pub fn unpack_row(cols: usize, packed: &[u8], r: usize, out: &mut [u8]) {
    let (nb, rb) = (cols / 32, cols / 32 * BLOCK);
    assert!(out.len() == rb);
    let group = &packed[r / PACK_ROWS * PACK_ROWS * rb..][..PACK_ROWS * rb];
    for (b, blk) in out.chunks_exact_mut(BLOCK).enumerate() {
        let (d, c) = slot(nb, b, r % PACK_ROWS);
        blk[..2].copy_from_slice(&group[d..d + 2]);
        blk[2..].copy_from_slice(&group[c..c + 16]);
    }
}

/// The b32 dots of one packed group (`4 · row_bytes` bytes of a matrix of `qtype` with rows of
/// `cols` values) with one activation row quantized in blocks of 32: the bits of
/// [`super::dot_b32_ref`] of its four rows. Only where [`has_packed`].
pub fn dot_packed(isa: Isa, qtype: QType, cols: usize, group: &[u8], act: ActRow<'_>, ahead: usize) -> [f32; 4] {
    assert!(has_packed(isa) && can_pack(qtype), "no packed kernel for {} at {isa:?}", qtype.name());
    assert!(cols.is_multiple_of(32) && group.len() == PACK_ROWS * cols / 32 * BLOCK);
    assert!(act.q.len() == cols && act.d16.len() == cols / 16 && act.b16.len() == cols / 16);
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: AVX-512 VNNI is available (asserted above) and every length was checked.
        unsafe {
            if qtype == QType::IQ4NL {
                super::fused::packed_vnni::<true>(group, act, cols / 32, ahead)
            } else {
                super::fused::packed_vnni::<false>(group, act, cols / 32, ahead)
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (act, ahead);
        unreachable!()
    }
}

#[cfg(test)]
mod tests {
    use super::{slot, BLOCK, PACK_ROWS};

    #[test]
    fn the_packed_kernels_offsets_are_the_layouts() {
        // `fused::packed_vnni` reads pair `p` at 144 p: its scales there (rows in order, the
        // second block's after the first's), the codes at + 16 (+ 8 for an odd last block),
        // row r's 16 bytes at + 16 r, the second block's codes 64 bytes on.
        assert_eq!(2 * PACK_ROWS * BLOCK, 144);
        for nb in 1usize..=6 {
            for p in 0..nb.div_ceil(2) {
                let whole = 2 * p + 1 < nb;
                for r in 0..PACK_ROWS {
                    let codes = if whole { 16 } else { 8 };
                    assert_eq!(slot(nb, 2 * p, r), (144 * p + 2 * r, 144 * p + codes + 16 * r), "nb={nb} p={p} r={r}");
                    if whole {
                        assert_eq!(slot(nb, 2 * p + 1, r), (144 * p + 8 + 2 * r, 144 * p + 80 + 16 * r));
                    }
                }
            }
        }
    }
}
