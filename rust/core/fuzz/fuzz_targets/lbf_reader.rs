//! Fuzz the LBF reader: parse arbitrary bytes with `LbfFile::from_bytes` and, when they parse,
//! use the file the way a user would (metadata getters, tensor infos, part views, checksums,
//! dequantization). Any panic is a bug in lowbit-core.
//!
//! A CRC-32 guards the header and index, and one guards every part, so almost every mutation of
//! a valid file dies at the first checksum. Besides the input as given, the target therefore also
//! reads two repaired variants: the header CRC recomputed (reaches the index parser), and then
//! every part CRC recomputed as well (reaches the perm/outlier content checks and the
//! dequantizers with mutated tensor bytes).

#![no_main]

use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use lowbit_core::format::{LbfFile, PartKind, Value};
use lowbit_core::quant::{dequantize, Layout};

/// Largest tensor (values) the target dequantizes.
const MAX_DEQUANT: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let parsed = exercise(data, true);
    if data.len() < 64 || data[..8] != lowbit_core::format::MAGIC {
        return;
    }
    let mut fixed = data.to_vec();
    if !fix_header_crc(&mut fixed) {
        return;
    }
    let fixed_ok = if fixed != data { exercise(&fixed, !parsed) } else { parsed };
    if fixed_ok && fix_part_crcs(&mut fixed) {
        exercise(&fixed, true);
    }
});

/// Parse `bytes` and use everything; `dequant`: also dequantize the tensors. Returns whether the
/// bytes parsed.
fn exercise(bytes: &[u8], dequant: bool) -> bool {
    let Ok(f) = LbfFile::from_bytes(bytes.to_vec()) else { return false };
    look(&f);
    // Tensor parts first (checks each tensor's CRCs and contents), then the whole-file check.
    for i in 0..f.tensors().len() {
        black_box(f.tensor_parts(i).map(|p| p.map(<[u8]>::len)).ok());
    }
    black_box(f.verify_all().len());
    black_box(f.verify().is_ok());
    if dequant {
        dequantize_all(&f);
    }
    // The other order on a fresh parse: verify_all first, then the parts.
    let g = LbfFile::from_bytes(bytes.to_vec()).expect("the same bytes parse twice");
    black_box(g.verify_all().len());
    for i in 0..g.tensors().len() {
        black_box(g.tensor_parts(i).map(|p| p.map(<[u8]>::len)).ok());
    }
    true
}

/// Header, metadata and tensor index: every accessor and typed getter.
fn look(f: &LbfFile) {
    black_box(f.header());
    black_box(f.bytes().len());
    let m = f.metadata();
    black_box((m.len(), m.is_empty()));
    for (key, v) in m.entries() {
        black_box((v.type_id(), v.type_name()));
        if let Value::Array(a) = v {
            black_box((a.len(), a.is_empty(), a.depth(), a.elem_type(), a.type_name()));
        }
        assert!(m.get(key).is_some(), "key {key:?} listed but not found");
        black_box(m.get_str(key).ok());
        black_box(m.get_int(key).ok());
        black_box(m.get_float(key).ok());
        black_box(m.get_bool(key).ok());
        black_box(m.get_array(key).map(|a| a.len()).ok());
    }
    black_box(m.get_str("").is_err());
    for (i, t) in f.tensors().iter().enumerate() {
        black_box((t.qtype_name(), t.rows(), t.cols(), t.numel(), t.nbytes(), t.bits_per_weight()));
        for k in PartKind::ALL {
            black_box(t.part(k).map(|p| (p.kind, p.offset, p.len)));
        }
        for p in &t.parts {
            assert!(p.offset.checked_add(p.len).is_some_and(|e| e <= f.bytes().len() as u64), "part out of the file");
        }
        assert_eq!(f.find(&t.name).ok(), Some(i), "find({:?})", t.name);
    }
}

/// Dequantize every tensor whose data checks out and that is small enough.
fn dequantize_all(f: &LbfFile) {
    for (i, t) in f.tensors().iter().enumerate() {
        let Some(q) = t.qtype else { continue };
        let numel = t.numel();
        if numel == 0 || numel > MAX_DEQUANT {
            continue;
        }
        let Ok(bytes) = f.tensor_data(i) else { continue };
        let Ok(layout) = Layout::new(q, t.affine, t.rows() as usize, t.cols() as usize) else { continue };
        // The reader checked the data length against the format's row size; the driver must agree.
        assert_eq!(bytes.len(), layout.nbytes(), "tensor {:?} ({}): data length", t.name, t.qtype_name());
        if let Ok(out) = dequantize(&layout, bytes, None) {
            assert_eq!(out.len() as u64, numel);
            black_box(out.iter().fold(0u32, |a, x| a ^ x.to_bits()));
        }
    }
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// Recompute the header CRC (bytes 0..60, then the index from `index_offset`) when
/// `index_offset` lies in the file; false if it does not.
fn fix_header_crc(b: &mut [u8]) -> bool {
    let io = u64_at(b, 16);
    if io < 60 || io > b.len() as u64 {
        return false;
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..60]);
    h.update(&b[io as usize..]);
    let crc = h.finalize();
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    true
}

/// Recompute every part CRC of a file that parses (so the index walk below stays in bounds), then
/// the header CRC. Returns whether anything changed.
fn fix_part_crcs(b: &mut [u8]) -> bool {
    let before = b.to_vec();
    let io = u64_at(b, 16) as usize;
    let (n_meta, n_tensors) = (u64_at(b, 32), u64_at(b, 40));
    let mut pos = io;
    for _ in 0..n_meta {
        pos += 8 + u64_at(b, pos) as usize; // key
        pos += 4; // type
        pos += 8 + u64_at(b, pos) as usize; // value
    }
    for _ in 0..n_tensors {
        pos += 8 + u64_at(b, pos) as usize; // name
        pos += 12; // qtype, group size, flags
        let n_dims = u32_at(b, pos) as usize;
        pos += 4 + 8 * n_dims;
        let n_parts = u32_at(b, pos) as usize;
        pos += 4;
        for _ in 0..n_parts {
            let (offset, len) = (u64_at(b, pos + 8) as usize, u64_at(b, pos + 16) as usize);
            let crc = crc32fast::hash(&b[offset..offset + len]);
            b[pos + 4..pos + 8].copy_from_slice(&crc.to_le_bytes());
            pos += 24;
        }
    }
    fix_header_crc(b);
    *b != before[..]
}
