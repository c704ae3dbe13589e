//! LBF, lowbit's single-file model format: typed metadata, a tensor index and 64-byte-aligned
//! tensor data, read through a memory map. The byte-exact specification is `formats/LBF.md`;
//! section numbers below (§n) refer to it.
//!
//! * [`LbfFile`] opens and fully validates a file (§7), hands out zero-copy views of tensor parts
//!   and checks their CRC-32 lazily ([`LbfFile::verify`] checks all).
//! * [`LbfWriter`] streams tensors to an unnamed temporary file and renames it into place only
//!   when complete (§8).

mod read;
mod value;
mod write;

pub use read::{Header, LbfFile};
pub use value::{Array, Metadata, Value};
pub use write::{LbfWriter, TensorSpec};

use crate::error::{Error, Result};
use crate::qtype::{canonical_name, AffineSpec, QType, GROUP_SIZES};

/// `\x89LBF\r\n\x1a\n` (§3).
pub const MAGIC: [u8; 8] = *b"\x89LBF\r\n\x1a\n";
/// Major version written and understood (§9).
pub const VERSION_MAJOR: u16 = 1;
/// Newest minor version this library reads and writes (files of a newer minor are read with the
/// rules of §9); a writer writes the lowest minor its qtypes and parts need ([`qtype_minor`],
/// [`PartKind::minor`]).
pub const VERSION_MINOR: u16 = 3;
/// The byte-order mark, stored little-endian (§3).
pub const BYTE_ORDER: u32 = 0x0A0B_0C0D;
/// Size of the fixed header (§3).
pub const HEADER_LEN: u64 = 64;
/// Alignment of every part and of the index (§2).
pub const ALIGN: u64 = 64;
/// Longest metadata key, in bytes: keys are identifiers, not data (§4).
pub const MAX_KEY_LEN: usize = 256;
/// Longest tensor name, in bytes: generous for HF names (`model.layers.31.mlp.down_proj.weight`
/// is 34) (§5).
pub const MAX_NAME_LEN: usize = 512;
/// Most dimensions of a tensor: models use at most 4 (§5).
pub const MAX_DIMS: usize = 8;
/// Most parts of a tensor: one of each kind, with room for kinds a minor version may add (§5).
pub const MAX_PARTS: usize = 8;
/// Deepest array nesting in metadata: keeps recursion bounded on hostile input (§4).
pub const MAX_DEPTH: usize = 4;
/// Smallest encoding of a metadata entry: 1-byte key (8 + 1), type (4), value_len (8) (§7).
pub const MIN_METADATA_ENTRY: u64 = 21;
/// Smallest encoding of a tensor entry: 1-byte name (9), qtype, group, flags, n_dims (16), one
/// dim (8), n_parts (4), one part (24) (§7).
pub const MIN_TENSOR_ENTRY: u64 = 61;
/// Bytes of one part record in a tensor entry (§5).
pub const PART_RECORD_LEN: u64 = 24;

/// The LBF id of a storage type (§5): its position in the type table.
pub fn qtype_id(q: QType) -> u32 {
    crate::qtype::TYPES.iter().position(|t| t.qtype == q).expect("every QType is in the table") as u32
}

/// The minor version that introduced a storage type (§9): 1 for the ragged k-types, 3 for the
/// `-dq` types, 0 for the rest. A writer writes the largest of its tensors' (so files without
/// new types stay 1.0).
pub fn qtype_minor(q: QType) -> u16 {
    if q.dq_bits().is_some() {
        3
    } else {
        u16::from(q.ragged_base().is_some())
    }
}

/// The storage type of an LBF qtype id, if this version knows it.
pub fn qtype_from_id(id: u32) -> Option<QType> {
    crate::qtype::TYPES.get(id as usize).map(|t| t.qtype)
}

/// The kinds of part a composite tensor may have (§5), in their required order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum PartKind {
    /// The rows in the qtype's layout.
    Data = 0,
    /// u32 act-order permutation of the input columns.
    Perm = 1,
    /// u64 CSR row pointers of the outliers.
    OutlierRows = 2,
    /// u32 column of each outlier.
    OutlierCols = 3,
    /// f16 value of each outlier.
    OutlierVals = 4,
    /// u32 mode and f32 step of the int8 activations of a W8A8 weight (added in 1.2).
    ActQuant = 5,
}

impl PartKind {
    /// Number of kinds this version knows.
    pub const COUNT: usize = 6;
    /// Every kind, in order.
    pub const ALL: [PartKind; PartKind::COUNT] = [
        PartKind::Data,
        PartKind::Perm,
        PartKind::OutlierRows,
        PartKind::OutlierCols,
        PartKind::OutlierVals,
        PartKind::ActQuant,
    ];

    /// The kind of a stored id, if this version knows it.
    pub fn from_id(id: u32) -> Option<PartKind> {
        PartKind::ALL.get(id as usize).copied()
    }

    /// The name used in messages and by `lowbit inspect`.
    pub fn name(self) -> &'static str {
        match self {
            PartKind::Data => "data",
            PartKind::Perm => "perm",
            PartKind::OutlierRows => "outlier_rows",
            PartKind::OutlierCols => "outlier_cols",
            PartKind::OutlierVals => "outlier_vals",
            PartKind::ActQuant => "act_quant",
        }
    }

    /// The minor version that introduced the kind (§9): 2 for `act_quant`, 0 for the rest.
    pub fn minor(self) -> u16 {
        match self {
            PartKind::ActQuant => 2,
            _ => 0,
        }
    }
}

/// One part of a tensor as recorded in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartInfo {
    /// Kind id (a [`PartKind`] unless the file is of a newer minor version).
    pub kind: u32,
    /// CRC-32 of the part's bytes.
    pub crc: u32,
    /// Absolute offset in the file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// A tensor as recorded in the index (§5).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Unique name.
    pub name: String,
    /// Stored qtype id.
    pub qtype_id: u32,
    /// The storage type; `None` for an id of a newer minor version.
    pub qtype: Option<QType>,
    /// Group-affine parameters.
    pub affine: Option<AffineSpec>,
    /// Dimensions, outermost first; the last is the row length.
    pub dims: Vec<u64>,
    /// Parts in kind order; the first is always `data`.
    pub parts: Vec<PartInfo>,
}

impl TensorInfo {
    /// Values per row (the last dimension).
    pub fn cols(&self) -> u64 {
        self.dims.last().copied().unwrap_or(0)
    }

    /// Rows: the product of all dimensions but the last (checked when the file was read).
    pub fn rows(&self) -> u64 {
        self.dims[..self.dims.len().saturating_sub(1)].iter().product()
    }

    /// Number of values.
    pub fn numel(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Bytes stored, all parts counted.
    pub fn nbytes(&self) -> u64 {
        self.parts.iter().map(|p| p.len).sum()
    }

    /// Bits per weight, all parts counted (0 for an empty tensor).
    pub fn bits_per_weight(&self) -> f64 {
        match self.numel() {
            0 => 0.0,
            n => self.nbytes() as f64 * 8.0 / n as f64,
        }
    }

    /// The part of a kind, if present.
    pub fn part(&self, kind: PartKind) -> Option<&PartInfo> {
        self.parts.iter().find(|p| p.kind == kind as u32)
    }

    /// The canonical type name (`"q4_k"`, `"int4-g128"`, `"int3-row-sym"`), or `"unknown(N)"`.
    pub fn qtype_name(&self) -> String {
        match self.qtype {
            Some(q) => canonical_name(q, self.affine),
            None => format!("unknown({})", self.qtype_id),
        }
    }
}

/// Decode and check the (group_size, flags) fields of a tensor entry against its type.
pub(crate) fn affine_from_fields(
    qtype: QType,
    group_size: u32,
    flags: u32,
) -> std::result::Result<Option<AffineSpec>, String> {
    let Some(bits) = qtype.affine_bits() else {
        if group_size != 0 || flags != 0 {
            return Err(format!(
                "{} takes no group size or flags, found group_size {group_size}, flags {flags:#x}",
                qtype.name()
            ));
        }
        return Ok(None);
    };
    if flags & !1 != 0 {
        return Err(format!("unknown tensor flags {flags:#x}"));
    }
    let group = match group_size {
        0 => None,
        g if GROUP_SIZES.contains(&(g as usize)) => Some(g as usize),
        g => return Err(format!("group size {g} is not 0, 32, 64, 128 or 256")),
    };
    AffineSpec::new(bits, group, flags & 1 == 1).map(Some).map_err(|e| e.to_string())
}

/// The (group_size, flags) fields of a tensor entry.
pub(crate) fn affine_fields(affine: Option<AffineSpec>) -> (u32, u32) {
    match affine {
        None => (0, 0),
        Some(s) => (s.group_size.unwrap_or(0) as u32, s.symmetric as u32),
    }
}

/// Rows of a tensor (the product of all dimensions but the last), if `rows × cols` fits in
/// u64 (§5, §7).
pub(crate) fn rows_of(dims: &[u64]) -> Option<u64> {
    let (cols, lead) = dims.split_last()?;
    lead.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).filter(|r| r.checked_mul(*cols).is_some())
}

/// Each known part's length against §5, with the outlier parts all present or all absent, a
/// perm part only on a group-affine type, and an act_quant part only where
/// [`crate::matmul::QMatrix::with_act`] accepts one. `parts` are (kind id, length); unknown kinds (a
/// newer minor version) are skipped. Shared by the reader and the writer.
pub(crate) fn check_part_lengths(
    qtype: QType,
    affine: Option<AffineSpec>,
    rows: u64,
    cols: u64,
    parts: &[(u32, u64)],
) -> std::result::Result<(), String> {
    let len_of = |k: PartKind| parts.iter().find(|p| p.0 == k as u32).map(|p| p.1);
    let outliers = [PartKind::OutlierRows, PartKind::OutlierCols, PartKind::OutlierVals].map(|k| len_of(k).is_some());
    if outliers.iter().any(|&o| o) && !outliers.iter().all(|&o| o) {
        return Err("outlier parts must come together (rows, cols, vals)".into());
    }
    if len_of(PartKind::Perm).is_some() && affine.is_none() {
        return Err(format!("a perm part needs a group-affine type, not {}", qtype.name()));
    }
    if len_of(PartKind::ActQuant).is_some() {
        let (perm, outl) = (len_of(PartKind::Perm).is_some(), outliers[0]);
        crate::matmul::check_act_target(qtype, affine, cols, perm, outl).map_err(|e| e.to_string())?;
    }
    let vals = len_of(PartKind::OutlierVals).unwrap_or(0);
    if vals % 2 != 0 {
        return Err("outlier_vals length is odd".into());
    }
    for &(id, len) in parts {
        let Some(kind) = PartKind::from_id(id) else { continue };
        let want = expected_part_len(kind, qtype, affine, rows, cols, vals / 2)?;
        if len != want {
            return Err(format!("part {} is {len} bytes, {want} expected", kind.name()));
        }
    }
    Ok(())
}

/// The length every part of a tensor must have (§5), given the outlier count `nnz` (taken from
/// the stored `outlier_vals` length). Errors are messages (the caller adds the offset).
pub(crate) fn expected_part_len(
    kind: PartKind,
    qtype: QType,
    affine: Option<AffineSpec>,
    rows: u64,
    cols: u64,
    nnz: u64,
) -> std::result::Result<u64, String> {
    let too_big = || format!("tensor of {rows} × {cols} values is too large");
    match kind {
        PartKind::Data => {
            let cols = usize::try_from(cols).map_err(|_| too_big())?;
            let row = crate::quant::row_bytes(qtype, affine, cols).map_err(|e| e.to_string())?;
            rows.checked_mul(row as u64).ok_or_else(too_big)
        }
        PartKind::Perm => cols.checked_mul(4).ok_or_else(too_big),
        PartKind::OutlierRows => rows.checked_add(1).and_then(|r| r.checked_mul(8)).ok_or_else(too_big),
        PartKind::OutlierCols => nnz.checked_mul(4).ok_or_else(too_big),
        PartKind::OutlierVals => nnz.checked_mul(2).ok_or_else(too_big),
        PartKind::ActQuant => Ok(crate::matmul::ActQuant::LEN as u64),
    }
}

/// Check the content of a perm, outlier or act_quant part (§5), which the index alone cannot
/// vouch for. `parts[k]` is the bytes of kind `k` (empty if absent); errors name the part's
/// offset.
pub(crate) fn check_part_contents(t: &TensorInfo, parts: &[&[u8]; PartKind::COUNT]) -> Result<()> {
    let (rows, cols) = (t.rows() as usize, t.cols() as usize);
    let [_, perm, row_ptr, ocols, _, act] = *parts;
    let err = |k: PartKind, what: String| Error::Format {
        offset: t.part(k).map_or(0, |p| p.offset),
        msg: format!("tensor {:?}: {what}", t.name),
    };
    check_perm_outliers(rows, cols, perm, row_ptr, ocols).map_err(|(k, what)| err(k, what))?;
    // Its length (8) was checked with the index: empty means absent.
    if !act.is_empty() {
        crate::matmul::ActQuant::from_le_bytes(act).map_err(|e| err(PartKind::ActQuant, e.to_string()))?;
    }
    Ok(())
}

/// The content rules of §5 for a perm part and the outlier parts, shared by the LBF reader and
/// [`crate::matmul::QMatrix::new`]; their lengths are already checked. `perm` (empty if absent)
/// must be a permutation of `0..cols`; the outliers (`row_ptr` empty if absent) need row
/// pointers running from 0 to nnz without decreasing, and columns `< cols`, increasing within a
/// row. The error names the part at fault.
pub(crate) fn check_perm_outliers(
    rows: usize,
    cols: usize,
    perm: &[u8],
    row_ptr: &[u8],
    ocols: &[u8],
) -> std::result::Result<(), (PartKind, String)> {
    if !perm.is_empty() {
        let mut seen = vec![false; cols];
        for (j, c) in perm.chunks_exact(4).enumerate() {
            let v = u32::from_le_bytes(c.try_into().expect("4 bytes")) as usize;
            if v >= cols || std::mem::replace(&mut seen[v], true) {
                return Err((PartKind::Perm, format!("perm is not a permutation of 0..{cols} (entry {j} = {v})")));
            }
        }
    }
    if !row_ptr.is_empty() {
        let ptr = |i: usize| u64::from_le_bytes(row_ptr[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        let nnz = ocols.len() as u64 / 4;
        if ptr(0) != 0 || ptr(rows) != nnz {
            return Err((PartKind::OutlierRows, format!("outlier row pointers must run from 0 to {nnz}")));
        }
        let col = |k: u64| u32::from_le_bytes(ocols[k as usize * 4..k as usize * 4 + 4].try_into().expect("4 bytes"));
        for r in 0..rows {
            let (a, b) = (ptr(r), ptr(r + 1));
            if a > b || b > nnz {
                return Err((PartKind::OutlierRows, format!("outlier row pointers decrease at row {r}")));
            }
            for k in a..b {
                if col(k) as usize >= cols || (k > a && col(k) <= col(k - 1)) {
                    let msg = format!("outlier {k} of row {r}: column {} out of range or order", col(k));
                    return Err((PartKind::OutlierCols, msg));
                }
            }
        }
    }
    Ok(())
}

/// `align64(x)`, `None` on overflow.
pub(crate) fn align_up(x: u64) -> Option<u64> {
    x.checked_add(ALIGN - 1).map(|v| v & !(ALIGN - 1))
}

/// Check a metadata key or tensor name (§4, §5).
pub(crate) fn check_name(what: &str, s: &str, max: usize) -> std::result::Result<(), String> {
    if s.is_empty() {
        Err(format!("empty {what}"))
    } else if s.len() > max {
        Err(format!("{what} of {} bytes is longer than {max}", s.len()))
    } else if s.contains('\0') {
        Err(format!("{what} {s:?} contains NUL"))
    } else {
        Ok(())
    }
}
