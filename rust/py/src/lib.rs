//! `lowbit._core`: thin PyO3 bindings over `lowbit-core`. Each function extracts its
//! arguments, releases the GIL, calls the core, and wraps the result; no algorithm lives here.
//! Python-side argument normalisation (dtype, contiguity, alignment) is in `lowbit/__init__.py`;
//! this layer re-checks what memory safety depends on.

mod errors;
mod format;
mod matmul;
mod model;

use lowbit_core::matmul::ActQuant;
use lowbit_core::quant::{self, Layout, QuantOptions, Source};
use lowbit_core::simd::{self, Isa};
use lowbit_core::{qtype, Error};
use numpy::{PyArray1, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use errors::PyLowbitError;

fn shape_err(msg: String) -> PyLowbitError {
    PyLowbitError(Error::Shape(msg))
}

/// A C-contiguous, aligned slice of a numpy array, or a ShapeError (never a raw read of an
/// arbitrary array).
pub(crate) fn slice_of<'a, T: numpy::Element, D: numpy::ndarray::Dimension>(
    a: &'a numpy::PyReadonlyArray<'_, T, D>,
    what: &str,
) -> Result<&'a [T], PyLowbitError> {
    if !a.is_c_contiguous() {
        return Err(shape_err(format!("{what} must be C-contiguous")));
    }
    let s = a.as_slice().map_err(|_| shape_err(format!("{what} must be C-contiguous")))?;
    if !(s.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return Err(shape_err(format!("{what} is not aligned")));
    }
    Ok(s)
}

pub(crate) fn parse_isa(isa: Option<&str>) -> Result<Option<Isa>, PyLowbitError> {
    Ok(isa.map(Isa::parse).transpose()?)
}

/// An activation mode as Python passes it: `("static", step)` or `("dynamic", 0.0)`.
pub(crate) type ActArg = (String, f32);

/// The core's [`ActQuant`] of an [`ActArg`] (checked).
pub(crate) fn parse_act(act: Option<&ActArg>) -> Result<Option<ActQuant>, PyLowbitError> {
    let Some((mode, step)) = act else { return Ok(None) };
    let act = match mode.as_str() {
        "static" => ActQuant::Static(*step).validate()?,
        "dynamic" if *step == 0.0 => ActQuant::PerToken,
        "dynamic" => {
            return Err(PyLowbitError(lowbit_core::Error::InvalidParameter(format!(
                "dynamic activation quantization takes no step (0.0), got {step}"
            ))))
        }
        m => {
            return Err(PyLowbitError(lowbit_core::Error::InvalidParameter(format!(
                "unknown activation mode {m:?}; valid: \"static\", \"dynamic\""
            ))))
        }
    };
    Ok(Some(act))
}

/// The type table: a list of dicts (name, block_size, block_bytes, bits_per_weight, ggml,
/// gguf_type, max_abs).
#[pyfunction]
fn qtypes(py: Python<'_>) -> PyResult<Vec<Bound<'_, PyDict>>> {
    qtype::TYPES
        .iter()
        .map(|t| {
            let d = PyDict::new(py);
            d.set_item("name", t.name)?;
            d.set_item("block_size", t.block_size)?;
            d.set_item("block_bytes", t.block_bytes)?;
            d.set_item("ggml", t.ggml_type.is_some())?;
            d.set_item("gguf_type", t.ggml_type)?;
            d.set_item("max_abs", t.max_abs)?;
            d.set_item("group_affine", t.qtype.affine_bits().is_some())?;
            d.set_item("ragged_base", t.qtype.ragged_base().map(|b| b.name()))?;
            Ok(d)
        })
        .collect()
}

/// The ISA in use (`LOWBIT_ISA` or the detected one).
#[pyfunction]
fn isa() -> Result<&'static str, PyLowbitError> {
    Ok(simd::active()?.name())
}

/// The ISAs this CPU can run.
#[pyfunction]
fn available_isas() -> Vec<&'static str> {
    simd::available().into_iter().map(Isa::name).collect()
}

/// (canonical name, group_size or None, symmetric or None, row_bytes) of a type for a row length.
#[pyfunction]
#[pyo3(signature = (qtype, rows, cols, group_size=None, symmetric=None))]
fn layout(
    qtype: &str,
    rows: usize,
    cols: usize,
    group_size: Option<usize>,
    symmetric: Option<bool>,
) -> Result<(String, Option<usize>, Option<bool>, usize), PyLowbitError> {
    let opts = QuantOptions { group_size, symmetric, ..Default::default() };
    let (q, spec) = quant::resolve(qtype, &opts)?;
    let l = Layout::new(q, spec, rows, cols)?;
    Ok(describe(&l))
}

fn describe(l: &Layout) -> (String, Option<usize>, Option<bool>, usize) {
    let (g, s) = l.affine.map_or((None, None), |a| (Some(a.group_size.unwrap_or(0)), Some(a.symmetric)));
    (qtype::canonical_name(l.qtype, l.affine), g, s, l.row_bytes)
}

/// Quantize a 2-D array. `x` is float32, float16, or uint16 holding bfloat16 bits
/// (`source_dtype="bf16"`). Returns (canonical qtype name, group_size, symmetric, row_bytes,
/// bytes as a 1-D uint8 array of rows × row_bytes).
#[pyfunction]
#[pyo3(signature = (x, qtype, source_dtype, group_size=None, symmetric=None, importance=None,
                    clip_ratio=None, group_min=None, group_max=None, isa=None))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn quantize<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    qtype: &str,
    source_dtype: &str,
    group_size: Option<usize>,
    symmetric: Option<bool>,
    importance: Option<PyReadonlyArray1<'py, f32>>,
    clip_ratio: Option<f32>,
    group_min: Option<PyReadonlyArray1<'py, f32>>,
    group_max: Option<PyReadonlyArray1<'py, f32>>,
    isa: Option<&str>,
) -> Result<(String, Option<usize>, Option<bool>, usize, Bound<'py, PyArray1<u8>>), PyLowbitError> {
    let isa = parse_isa(isa)?;
    let (f32_arr, u16_arr);
    let (src, rows, cols) = match source_dtype {
        "f32" => {
            f32_arr = x
                .extract::<PyReadonlyArray2<'py, f32>>()
                .map_err(|_| shape_err("x must be a 2-D float32 array".into()))?;
            let [r, c] = [f32_arr.shape()[0], f32_arr.shape()[1]];
            (Source::F32(slice_of(&f32_arr, "x")?), r, c)
        }
        "f16" | "bf16" => {
            u16_arr = x
                .extract::<PyReadonlyArray2<'py, u16>>()
                .map_err(|_| shape_err("x must be a 2-D 16-bit array".into()))?;
            let [r, c] = [u16_arr.shape()[0], u16_arr.shape()[1]];
            let s = slice_of(&u16_arr, "x")?;
            (if source_dtype == "f16" { Source::F16(s) } else { Source::BF16(s) }, r, c)
        }
        other => return Err(PyLowbitError(Error::InvalidParameter(format!("unknown source_dtype {other:?}")))),
    };
    let importance = importance.as_ref().map(|a| slice_of(a, "importance")).transpose()?;
    let group_min = group_min.as_ref().map(|a| slice_of(a, "group_min")).transpose()?;
    let group_max = group_max.as_ref().map(|a| slice_of(a, "group_max")).transpose()?;
    let opts = QuantOptions { group_size, symmetric, importance, clip_ratio, group_min, group_max, isa };
    let (layout, bytes) = py.detach(|| quant::quantize(qtype, src, rows, cols, &opts))?;
    let (name, g, s, row_bytes) = describe(&layout);
    Ok((name, g, s, row_bytes, PyArray1::from_vec(py, bytes)))
}

/// Dequantize `data` (1-D uint8, rows × row_bytes) to a 1-D float32 array of rows × cols.
#[pyfunction]
#[pyo3(signature = (data, qtype, rows, cols, group_size=None, symmetric=None, isa=None))]
#[allow(clippy::too_many_arguments)]
fn dequantize<'py>(
    py: Python<'py>,
    data: PyReadonlyArray1<'py, u8>,
    qtype: &str,
    rows: usize,
    cols: usize,
    group_size: Option<usize>,
    symmetric: Option<bool>,
    isa: Option<&str>,
) -> Result<Bound<'py, PyArray1<f32>>, PyLowbitError> {
    let isa = parse_isa(isa)?;
    let opts = QuantOptions { group_size, symmetric, ..Default::default() };
    let (q, spec) = quant::resolve(qtype, &opts)?;
    let l = Layout::new(q, spec, rows, cols)?;
    let bytes = slice_of(&data, "data")?;
    let out = py.detach(|| quant::dequantize(&l, bytes, isa))?;
    Ok(PyArray1::from_vec(py, out))
}

/// The compiled extension module.
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(qtypes, m)?)?;
    m.add_function(wrap_pyfunction!(isa, m)?)?;
    m.add_function(wrap_pyfunction!(available_isas, m)?)?;
    m.add_function(wrap_pyfunction!(layout, m)?)?;
    m.add_function(wrap_pyfunction!(quantize, m)?)?;
    m.add_function(wrap_pyfunction!(dequantize, m)?)?;
    m.add_function(wrap_pyfunction!(matmul::matmul, m)?)?;
    m.add_function(wrap_pyfunction!(matmul::pack_rows, m)?)?;
    m.add_class::<format::LbfReader>()?;
    m.add_class::<format::PyLbfWriter>()?;
    m.add_class::<format::MapOwner>()?;
    m.add_function(wrap_pyfunction!(model::layer_forward, m)?)?;
    m.add_class::<model::PyEngine>()?;
    m.add_class::<model::PySession>()?;
    m.add_class::<model::PySampler>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
