//! The one place where core errors become Python exceptions. The exception classes are defined
//! in Python (`lowbit/errors.py`, so they can subclass both `LowbitError` and `ValueError`) and
//! imported here.

use lowbit_core::Error;
use pyo3::prelude::*;

pyo3::import_exception!(lowbit.errors, QTypeError);
pyo3::import_exception!(lowbit.errors, ShapeError);
pyo3::import_exception!(lowbit.errors, ParameterError);
pyo3::import_exception!(lowbit.errors, InvalidValueError);
pyo3::import_exception!(lowbit.errors, IsaError);
pyo3::import_exception!(lowbit.errors, FormatError);
pyo3::import_exception!(lowbit.errors, VersionError);
pyo3::import_exception!(lowbit.errors, ChecksumError);
pyo3::import_exception!(lowbit.errors, UnsupportedError);
pyo3::import_exception!(lowbit.errors, NotFoundError);
pyo3::import_exception!(lowbit.errors, MetadataTypeError);
pyo3::import_exception!(lowbit.errors, ClosedError);

/// Newtype so `?` converts core errors at the binding boundary.
#[derive(Debug)]
pub struct PyLowbitError(pub Error);

impl From<Error> for PyLowbitError {
    fn from(e: Error) -> Self {
        PyLowbitError(e)
    }
}

impl From<PyLowbitError> for PyErr {
    fn from(e: PyLowbitError) -> PyErr {
        let msg = e.0.to_string();
        match e.0 {
            Error::UnknownQType { .. } => QTypeError::new_err(msg),
            Error::Shape(_) => ShapeError::new_err(msg),
            Error::InvalidParameter(_) => ParameterError::new_err(msg),
            Error::BadValue { index, row, col, .. } => InvalidValueError::new_err((msg, index, row, col)),
            Error::Isa(_) => IsaError::new_err(msg),
            Error::Format { offset, .. } => FormatError::new_err((msg, offset)),
            Error::Version(_) => VersionError::new_err((msg, 0u64)),
            Error::Checksum { .. } => ChecksumError::new_err((msg, 0u64)),
            Error::Unsupported(_) => UnsupportedError::new_err(msg),
            Error::NotFound { .. } => NotFoundError::new_err(msg),
            Error::WrongType { .. } => MetadataTypeError::new_err(msg),
            Error::Io { errno: Some(errno), .. } => pyo3::exceptions::PyOSError::new_err((errno, msg)),
            Error::Io { errno: None, .. } => pyo3::exceptions::PyOSError::new_err(msg),
        }
    }
}
