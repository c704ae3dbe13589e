//! `lowbit._core.matmul`: `y = x · Wᵀ` for a weight of any type (see `lowbit-core`'s
//! `matmul` module). Extract (C-contiguous arrays of the exact dtypes, the weight's parts as
//! little-endian bytes), release the GIL, call the core, wrap.

use lowbit_core::matmul::{self as core_mm, Outliers, QMatrix};
use lowbit_core::quant::{self, Layout, QuantOptions};
use numpy::{PyArray1, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::errors::PyLowbitError;
use crate::{parse_act, parse_isa, slice_of, ActArg};

/// Little-endian bytes of a slice of integers (the byte form `QMatrix` reads).
pub(crate) fn le_bytes<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    v.iter().flat_map(|&x| f(x)).collect()
}

/// `y = x · Wᵀ` for `x` (n, cols) float32 and the weight `data` (rows × row_bytes uint8) of
/// type `qtype`, with an optional permutation (uint32, cols) and outliers (row pointers uint64
/// (rows + 1), columns uint32 (nnz), float16 values as uint16 bits (nnz)). Returns float32
/// (n × rows), flat. `act` (`("static", step)` or `("dynamic", 0.0)`) makes it a W8A8 product
/// (int8 activations). `reference=True` runs the reference instead of the fast path.
#[pyfunction]
#[pyo3(signature = (x, data, qtype, rows, cols, group_size=None, symmetric=None, perm=None,
                    row_ptr=None, ocols=None, ovals=None, isa=None, reference=false, act=None, packed=false))]
#[allow(clippy::too_many_arguments)]
pub fn matmul<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
    data: PyReadonlyArray1<'py, u8>,
    qtype: &str,
    rows: usize,
    cols: usize,
    group_size: Option<usize>,
    symmetric: Option<bool>,
    perm: Option<PyReadonlyArray1<'py, u32>>,
    row_ptr: Option<PyReadonlyArray1<'py, u64>>,
    ocols: Option<PyReadonlyArray1<'py, u32>>,
    ovals: Option<PyReadonlyArray1<'py, u16>>,
    isa: Option<&str>,
    reference: bool,
    act: Option<ActArg>,
    packed: bool,
) -> Result<Bound<'py, PyArray1<f32>>, PyLowbitError> {
    let isa = parse_isa(isa)?;
    let act = parse_act(act.as_ref())?;
    let opts = QuantOptions { group_size, symmetric, ..Default::default() };
    let (q, spec) = quant::resolve(qtype, &opts)?;
    let layout = Layout::new(q, spec, rows, cols)?;
    let n = x.shape()[0];
    let xs = slice_of(&x, "x")?;
    let bytes = slice_of(&data, "data")?;
    let perm = perm.as_ref().map(|p| slice_of(p, "perm").map(|s| le_bytes(s, u32::to_le_bytes))).transpose()?;
    let outl = match (&row_ptr, &ocols, &ovals) {
        (Some(p), Some(c), Some(v)) => Some((
            le_bytes(slice_of(p, "outlier row pointers")?, u64::to_le_bytes),
            le_bytes(slice_of(c, "outlier columns")?, u32::to_le_bytes),
            le_bytes(slice_of(v, "outlier values")?, u16::to_le_bytes),
        )),
        (None, None, None) => None,
        _ => {
            return Err(PyLowbitError(lowbit_core::Error::InvalidParameter(
                "outliers need row pointers, columns and values together".into(),
            )))
        }
    };
    let mut y = vec![0f32; n * rows];
    py.detach(|| {
        let o = outl.as_ref().map(|(p, c, v)| Outliers { row_ptr: p, cols: c, vals: v });
        let w = if packed {
            if perm.is_some() || act.is_some() {
                return Err(lowbit_core::Error::InvalidParameter(
                    "a packed weight takes no permutation and no act mode".into(),
                ));
            }
            QMatrix::new_packed(layout, bytes, o)?
        } else {
            QMatrix::new(layout, bytes, perm.as_deref(), o)?.with_act(act)?
        };
        if reference {
            core_mm::matmul_reference(&w, xs, n, &mut y)
        } else {
            core_mm::matmul(&w, xs, n, &mut y, isa)
        }
    })?;
    Ok(PyArray1::from_vec(py, y))
}

/// The rows of a q4_0 or iq4_nl weight `data` (rows × row_bytes uint8) packed for the GEMV
/// (`lowbit-core`'s `matmul::pack_rows`): uint8, rows rounded up to a multiple of 4.
#[pyfunction]
pub fn pack_rows<'py>(
    py: Python<'py>,
    data: PyReadonlyArray1<'py, u8>,
    qtype: &str,
    rows: usize,
    cols: usize,
) -> Result<Bound<'py, PyArray1<u8>>, PyLowbitError> {
    let (q, spec) = quant::resolve(qtype, &QuantOptions::default())?;
    let layout = Layout::new(q, spec, rows, cols)?;
    let bytes = slice_of(&data, "data")?;
    let out = py.detach(|| core_mm::pack_rows(&layout, bytes))?;
    Ok(PyArray1::from_vec(py, out))
}
