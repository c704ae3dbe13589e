//! The type table: every storage type lowbit can quantize to, with its block geometry.
//!
//! * ggml-compatible block types (byte-identical to ggml, so GGUF export is a copy):
//!   f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k..q6_k, iq4_nl.
//! * ragged k-quants q2_kr..q6_kr (lowbit's own): ggml's q*_k super-blocks followed by one
//!   partial super-block, so rows of any length keep k-quant accuracy and size (see
//!   [`crate::blocks::kquants::ragged`]);
//! * group-affine integers `int2`, `int3`, `int4`, `int8` (GPTQ/AWQ/RTN), parameterised by an
//!   [`AffineSpec`] (group size, symmetric or not). Their row layout is described at
//!   [`AffineSpec::row_bytes`];
//! * small-group types with quantized statistics `int2-g16-dq`, `int3-g16-dq`, `int4-g16-dq`
//!   (SpQR-style, lowbit's own): asymmetric groups of 16 whose scales are 3-bit codes on a
//!   per-256 grid (see [`crate::blocks::dq`]).

use crate::error::{Error, Result};

/// A storage type. See [`QType::info`] for the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    IQ4NL,
    Int2,
    Int3,
    Int4,
    Int8,
    Q2KR,
    Q3KR,
    Q4KR,
    Q5KR,
    Q6KR,
    Int2G16DQ,
    Int3G16DQ,
    Int4G16DQ,
}

/// What a family of types has in common (which code quantizes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// f32 / f16 / bf16 element types.
    Float,
    /// ggml's 32-value blocks with one scale (and min): q8_0, q4_0, q4_1, q5_0, q5_1.
    Legacy,
    /// ggml's 256-value super-blocks: q2_k, q3_k, q4_k, q5_k, q6_k.
    KQuant,
    /// ggml's k-quant super-blocks plus a final partial super-block (lowbit's own): q2_kr ..
    /// q6_kr, for rows of any length (`crate::blocks::kquants::ragged`).
    RaggedKQuant,
    /// ggml's non-linear 4-bit grid, 32-value blocks: iq4_nl.
    NonLinear,
    /// Group-affine integers with per-group f16 scales (and zeros).
    Affine,
    /// Groups of 16 with 3-bit scale codes and packed zeros in 256-value super-blocks (the last
    /// one partial): int2-g16-dq, int3-g16-dq, int4-g16-dq (`crate::blocks::dq`).
    DoubleQuant,
}

/// One row of the type table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TypeInfo {
    /// The type.
    pub qtype: QType,
    /// Lower-case name (`"q4_k"`, `"int4"`).
    pub name: &'static str,
    /// The family of kernels that handles it.
    pub family: Family,
    /// Values per block. For the group-affine types: the packing unit (8 values), the group
    /// size being a parameter. For the ragged k-types and the `-dq` types: the full
    /// super-block (the last block of a row may be partial).
    pub block_size: usize,
    /// Bytes per block. For the group-affine types: the bytes of 8 packed codes (= bits).
    pub block_bytes: usize,
    /// ggml's `enum ggml_type` value (= GGUF's tensor type id), if byte-compatible.
    pub ggml_type: Option<u32>,
    /// Largest |x| the type can store without its f16 scale overflowing (larger inputs are
    /// rejected with [`Error::BadValue`]). `f32::MAX` where only finiteness is required.
    pub max_abs: f32,
}

const F16_MAX: f32 = 65504.0;

macro_rules! table {
    ($($q:ident $name:literal $fam:ident $bs:literal $bb:literal $ggml:expr, $max:expr;)*) => {
        /// The whole table, in a stable order.
        pub const TYPES: &[TypeInfo] = &[$(TypeInfo {
            qtype: QType::$q, name: $name, family: Family::$fam, block_size: $bs,
            block_bytes: $bb, ggml_type: $ggml, max_abs: $max,
        },)*];
    };
}

// max_abs: the largest |x| for which every stored f16 scale (and min) stays finite; each
// family's tests quantize inputs at the bound. Legacy: d = amax/|qmin|; q4_1/q5_1 also store
// their min as f16, so |x| <= F16_MAX. bf16: the largest f32 that rounds to a finite bf16 (bits
// 0x7f7f7fff). Affine: scale = range / (2^bits - 1) with the range including 0. K-quants:
// bounded so that no super-block scale saturates for any candidate of the search (derived and
// tested in blocks/kquants). `-dq` types: a group's ideal scale (hi − lo) / (2^bits − 1) is at
// most F16_MAX, so the grid's f16 min and step stay finite (tested in blocks/dq).
table! {
    F32   "f32"    Float     1   4   Some(0),  f32::MAX;
    F16   "f16"    Float     1   2   Some(1),  F16_MAX;
    BF16  "bf16"   Float     1   2   Some(30), 3.396_177_3e38;
    Q8_0  "q8_0"   Legacy    32  34  Some(8),  F16_MAX * 127.0;
    Q4_0  "q4_0"   Legacy    32  18  Some(2),  F16_MAX * 8.0;
    Q4_1  "q4_1"   Legacy    32  20  Some(3),  F16_MAX;
    Q5_0  "q5_0"   Legacy    32  22  Some(6),  F16_MAX * 16.0;
    Q5_1  "q5_1"   Legacy    32  24  Some(7),  F16_MAX;
    Q2K   "q2_k"   KQuant    256 84  Some(10), F16_MAX * 7.5;
    Q3K   "q3_k"   KQuant    256 110 Some(11), F16_MAX * 32.0;
    Q4K   "q4_k"   KQuant    256 144 Some(12), F16_MAX * 31.5;
    Q5K   "q5_k"   KQuant    256 176 Some(13), F16_MAX * 31.5;
    Q6K   "q6_k"   KQuant    256 210 Some(14), F16_MAX * 1024.0;
    IQ4NL "iq4_nl" NonLinear 32  18  Some(20), F16_MAX * 113.0;
    Int2  "int2"   Affine    8   2   None,     F16_MAX * 1.5;
    Int3  "int3"   Affine    8   3   None,     F16_MAX * 3.5;
    Int4  "int4"   Affine    8   4   None,     F16_MAX * 7.5;
    Int8  "int8"   Affine    8   8   None,     F16_MAX * 127.5;
    Q2KR  "q2_kr"  RaggedKQuant 256 84  None, F16_MAX * 7.5;
    Q3KR  "q3_kr"  RaggedKQuant 256 110 None, F16_MAX * 32.0;
    Q4KR  "q4_kr"  RaggedKQuant 256 144 None, F16_MAX * 31.5;
    Q5KR  "q5_kr"  RaggedKQuant 256 176 None, F16_MAX * 31.5;
    Q6KR  "q6_kr"  RaggedKQuant 256 210 None, F16_MAX * 1024.0;
    Int2G16DQ "int2-g16-dq" DoubleQuant 256 78  None, F16_MAX * 1.5;
    Int3G16DQ "int3-g16-dq" DoubleQuant 256 112 None, F16_MAX * 3.5;
    Int4G16DQ "int4-g16-dq" DoubleQuant 256 146 None, F16_MAX * 7.5;
}

impl QType {
    /// This type's row of the table.
    pub fn info(self) -> &'static TypeInfo {
        // The table lists the variants in declaration order.
        &TYPES[self as usize]
    }

    /// The lower-case name.
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// Look a type up by its base name (case-insensitive). Use [`parse_qtype`] for names with
    /// group-affine suffixes such as `int4-g128-sym`.
    pub fn from_name(name: &str) -> Result<QType> {
        let lower = name.trim().to_ascii_lowercase();
        TYPES
            .iter()
            .find(|t| t.name == lower)
            .map(|t| t.qtype)
            .ok_or_else(|| Error::UnknownQType { name: name.to_string(), valid: valid_names() })
    }

    /// Whether this type's bytes are ggml's.
    pub fn is_ggml(self) -> bool {
        self.info().ggml_type.is_some()
    }

    /// The ggml k-quant whose super-blocks a ragged k-type uses (`q4_kr` → `q4_k`).
    pub fn ragged_base(self) -> Option<QType> {
        match self {
            QType::Q2KR => Some(QType::Q2K),
            QType::Q3KR => Some(QType::Q3K),
            QType::Q4KR => Some(QType::Q4K),
            QType::Q5KR => Some(QType::Q5K),
            QType::Q6KR => Some(QType::Q6K),
            _ => None,
        }
    }

    /// The ragged k-type of a ggml k-quant (`q4_k` → `q4_kr`).
    pub fn ragged(self) -> Option<QType> {
        TYPES.iter().map(|t| t.qtype).find(|r| r.ragged_base() == Some(self))
    }

    /// Bits of one value code of a `-dq` type (`int3-g16-dq` → 3).
    pub fn dq_bits(self) -> Option<u32> {
        match self {
            QType::Int2G16DQ => Some(2),
            QType::Int3G16DQ => Some(3),
            QType::Int4G16DQ => Some(4),
            _ => None,
        }
    }

    /// Bits of one code of a group-affine type.
    pub fn affine_bits(self) -> Option<u32> {
        match self {
            QType::Int2 => Some(2),
            QType::Int3 => Some(3),
            QType::Int4 => Some(4),
            QType::Int8 => Some(8),
            _ => None,
        }
    }
}

/// All valid names, for error messages.
pub fn valid_names() -> String {
    let mut names: Vec<&str> = TYPES.iter().map(|t| t.name).collect();
    names.push("int{2,3,4,8}[-g{32,64,128,256}|-row][-sym]");
    names.join(", ")
}

/// Group size and symmetry of a group-affine tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AffineSpec {
    /// Bits per code: 2, 3, 4 or 8.
    pub bits: u32,
    /// Columns per group; `None` = one group per row. The last group of a row may be shorter
    /// when the row length is not a multiple of the group size.
    pub group_size: Option<usize>,
    /// Symmetric: no stored zeros; the zero point is 2^(bits-1) (GPTQ's convention).
    pub symmetric: bool,
}

/// Group sizes accepted besides "whole row".
pub const GROUP_SIZES: [usize; 4] = [32, 64, 128, 256];
/// Default group size of the group-affine types.
pub const DEFAULT_GROUP_SIZE: usize = 128;

impl AffineSpec {
    /// A checked spec.
    pub fn new(bits: u32, group_size: Option<usize>, symmetric: bool) -> Result<AffineSpec> {
        if ![2, 3, 4, 8].contains(&bits) {
            return Err(Error::InvalidParameter(format!("bits must be 2, 3, 4 or 8, got {bits}")));
        }
        if let Some(g) = group_size {
            if !GROUP_SIZES.contains(&g) {
                return Err(Error::InvalidParameter(format!(
                    "group_size must be one of 32, 64, 128, 256 or 0 (whole row), got {g}"
                )));
            }
        }
        Ok(AffineSpec { bits, group_size, symmetric })
    }

    /// Largest code, 2^bits − 1.
    pub fn max_code(&self) -> u32 {
        (1 << self.bits) - 1
    }

    /// Columns per group for a row of `cols` values.
    pub fn group_cols(&self, cols: usize) -> usize {
        self.group_size.unwrap_or(cols).min(cols).max(1)
    }

    /// Groups in a row of `cols` values (the last may be partial).
    pub fn groups(&self, cols: usize) -> usize {
        cols.div_ceil(self.group_cols(cols))
    }

    /// Bytes of one row of `cols` values. A row is stored as three consecutive parts:
    /// 1. codes: `cols` codes of `bits` bits, packed little-endian (int3: 8 codes in 3 bytes),
    ///    `cols * bits / 8` bytes;
    /// 2. scales: one f16 per group, little-endian, `2 * groups` bytes;
    /// 3. zeros (asymmetric only): one code of `bits` bits per group, packed like the codes,
    ///    `ceil(groups * bits / 8)` bytes.
    ///
    /// A value dequantizes as `scale * (code - zero)`. Panics if the size overflows; see
    /// [`AffineSpec::checked_row_bytes`].
    pub fn row_bytes(&self, cols: usize) -> usize {
        self.checked_row_bytes(cols).expect("row size overflows usize")
    }

    /// [`AffineSpec::row_bytes`], `None` if the size overflows.
    pub fn checked_row_bytes(&self, cols: usize) -> Option<usize> {
        let bits = self.bits as usize;
        let g = self.groups(cols);
        let codes = (cols / 8).checked_mul(bits)?.checked_add(cols % 8 * bits / 8)?;
        let zeros = if self.symmetric { 0 } else { g.checked_mul(bits)?.div_ceil(8) };
        codes.checked_add(g.checked_mul(2)?)?.checked_add(zeros)
    }
}

/// The canonical name of a type with its group-affine parameters: `"q4_k"`, `"int4-g128"`,
/// `"int3-row-sym"` (what [`parse_qtype`] reads back).
pub fn canonical_name(qtype: QType, affine: Option<AffineSpec>) -> String {
    match affine {
        None => qtype.name().to_string(),
        Some(s) => {
            let g = s.group_size.map_or("row".to_string(), |g| format!("g{g}"));
            format!("{}-{g}{}", qtype.name(), if s.symmetric { "-sym" } else { "" })
        }
    }
}

/// Parse a type name, including the group-affine forms `int4`, `int4-g128`, `int4-row`,
/// `int3-g64-sym`. Returns the type and, for group-affine names, the group size (`Some(None)`
/// for `-row`) and symmetry given by the name.
pub fn parse_qtype(name: &str) -> Result<(QType, Option<Option<usize>>, Option<bool>)> {
    let lower = name.trim().to_ascii_lowercase();
    // Whole names first: the `-dq` types carry dashes but no parameters.
    if let Ok(q) = QType::from_name(&lower) {
        return Ok((q, None, None));
    }
    let mut parts = lower.split('-');
    let base = parts.next().unwrap_or("");
    let qtype =
        QType::from_name(base).map_err(|_| Error::UnknownQType { name: name.to_string(), valid: valid_names() })?;
    let (mut group, mut sym) = (None, None);
    for part in parts {
        let bad = || Error::UnknownQType { name: name.to_string(), valid: valid_names() };
        if qtype.affine_bits().is_none() {
            return Err(bad());
        }
        match part {
            "row" if group.is_none() => group = Some(None),
            "sym" if sym.is_none() => sym = Some(true),
            "asym" if sym.is_none() => sym = Some(false),
            p if p.starts_with('g') && group.is_none() => {
                group = Some(Some(p[1..].parse::<usize>().map_err(|_| bad())?));
            }
            _ => return Err(bad()),
        }
    }
    Ok((qtype, group, sym))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_order_matches_enum() {
        for (i, t) in TYPES.iter().enumerate() {
            assert_eq!(t.qtype as usize, i, "{}", t.name);
            assert_eq!(QType::from_name(t.name).unwrap(), t.qtype);
        }
    }

    #[test]
    fn ggml_block_bytes() {
        // ggml's block sizes (ggml-common.h): independent of our table.
        let expect = [
            ("q8_0", 34),
            ("q4_0", 18),
            ("q4_1", 20),
            ("q5_0", 22),
            ("q5_1", 24),
            ("q2_k", 84),
            ("q3_k", 110),
            ("q4_k", 144),
            ("q5_k", 176),
            ("q6_k", 210),
            ("iq4_nl", 18),
        ];
        for (n, b) in expect {
            assert_eq!(QType::from_name(n).unwrap().info().block_bytes, b, "{n}");
        }
    }

    #[test]
    fn parse_names() {
        assert_eq!(parse_qtype("int4-g128").unwrap(), (QType::Int4, Some(Some(128)), None));
        assert_eq!(parse_qtype("INT3-row-sym").unwrap(), (QType::Int3, Some(None), Some(true)));
        assert_eq!(parse_qtype("q4_k").unwrap(), (QType::Q4K, None, None));
        assert!(matches!(parse_qtype("q4_k-g32"), Err(Error::UnknownQType { .. })));
        assert!(matches!(parse_qtype("q9_0"), Err(Error::UnknownQType { .. })));
        assert!(matches!(parse_qtype("int4-gx"), Err(Error::UnknownQType { .. })));
        assert_eq!(parse_qtype("Int3-G16-DQ").unwrap(), (QType::Int3G16DQ, None, None));
        assert!(matches!(parse_qtype("int3-g16-dq-sym"), Err(Error::UnknownQType { .. })));
    }

    #[test]
    fn affine_row_bytes() {
        let s = AffineSpec::new(3, Some(128), false).unwrap();
        // 576 cols: 5 groups (last of 64), codes 216 B, scales 10 B, zeros ceil(15/8) = 2 B.
        assert_eq!(s.groups(576), 5);
        assert_eq!(s.row_bytes(576), 216 + 10 + 2);
        let s = AffineSpec::new(4, None, true).unwrap();
        assert_eq!(s.row_bytes(64), 32 + 2);
    }
}
