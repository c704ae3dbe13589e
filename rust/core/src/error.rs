//! The one error type of the core. Each variant is a documented failure; the Python binding maps
//! every variant to a typed exception in one place (`rust/py/src/errors.rs`).

use std::fmt;

/// Everything that can go wrong in `lowbit-core`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A quantization type name that is not in the type table.
    #[error("unknown qtype {name:?}; valid qtypes: {valid}")]
    UnknownQType { name: String, valid: String },

    /// An argument has the wrong shape: row length not a multiple of the block size, a
    /// buffer of the wrong length, an empty input, parameters that do not fit the type.
    #[error("{0}")]
    Shape(String),

    /// A parameter value that the type does not accept (group size, bits, clip ratio...).
    #[error("{0}")]
    InvalidParameter(String),

    /// An input value that cannot be quantized: NaN, ±Inf, or a magnitude beyond what the
    /// type's f16 scales can represent. `index` is the flat (row-major) index of the first one.
    #[error("{what} at flat index {index} (row {row}, column {col}): {value}{limit}")]
    BadValue { what: &'static str, index: usize, row: usize, col: usize, value: f32, limit: Limit },

    /// `LOWBIT_ISA` (or an explicit request) names an instruction set this CPU lacks or
    /// a name that is not an ISA.
    #[error("{0}")]
    Isa(String),

    /// A file that is not valid LBF (`formats/LBF.md`): `offset` is the byte where the problem
    /// was found.
    #[error("invalid LBF file: {msg} (at byte {offset})")]
    Format { offset: u64, msg: String },

    /// An LBF file of a major version this reader does not know.
    #[error("{0}")]
    Version(String),

    /// Stored and computed CRC-32 of a part of an LBF file differ.
    #[error("checksum mismatch in {what}: stored {stored:08x}, computed {computed:08x}")]
    Checksum { what: String, stored: u32, computed: u32 },

    /// Something a newer minor version of the format added (a qtype or part kind) that this
    /// reader cannot interpret.
    #[error("{0}")]
    Unsupported(String),

    /// A metadata key or tensor name that is not in the file.
    #[error("no {what} named {name:?}")]
    NotFound { what: &'static str, name: String },

    /// A typed metadata getter asked for a type the value does not have.
    #[error("metadata {key:?} is {found}, not {expected}")]
    WrongType { key: String, expected: &'static str, found: String },

    /// An operating-system error (file not found, permission, disk full...). `errno` is the raw
    /// OS error code where there is one.
    #[error("{msg}")]
    Io { errno: Option<i32>, msg: String },
}

impl Error {
    /// An [`Error::Io`] from an `std::io::Error`, with `context` (typically the path) in front.
    pub fn io(context: impl fmt::Display, e: &std::io::Error) -> Error {
        Error::Io { errno: e.raw_os_error(), msg: format!("{context}: {e}") }
    }
}

/// The magnitude limit quoted in [`Error::BadValue`], if one applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit(pub Option<f32>);

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(l) => write!(f, " (this qtype accepts |x| <= {l:e})"),
            None => Ok(()),
        }
    }
}

/// Result alias of the core.
pub type Result<T> = std::result::Result<T, Error>;
