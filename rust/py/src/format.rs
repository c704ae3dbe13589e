//! Bindings of `lowbit_core::format`: `LbfReader` (tensor parts as read-only numpy views that
//! keep the memory map alive) and `LbfWriter`. Metadata crosses the boundary as tagged tuples:
//! `(tag, value)` for scalars and `("array", (elem_tag, payload))` for arrays, where the payload
//! is a 1-D numpy array for numeric elements, a list of bool/str, or a list of nested
//! `(elem_tag, payload)` pairs. `lowbit/lbf.py` builds and reads these.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use lowbit_core::format::{Array, LbfFile, LbfWriter, Metadata, PartKind, TensorSpec, Value};
use lowbit_core::quant::resolve;
use lowbit_core::{Error, QuantOptions};
use numpy::ndarray::ArrayView1;
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray1};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::errors::{ClosedError, PyLowbitError};
use crate::slice_of;

/// Keeps a mapped file alive for as long as a numpy view of it exists.
#[pyclass(frozen)]
pub struct MapOwner {
    _file: Arc<LbfFile>,
    /// The mapped file's path (so `save` can refuse to overwrite a file it reads from).
    #[pyo3(get)]
    path: PathBuf,
}

/// A read-only uint8 view of `bytes` (which must lie inside `file`'s map).
fn view<'py>(
    py: Python<'py>,
    file: &Arc<LbfFile>,
    path: &std::path::Path,
    bytes: &[u8],
) -> PyResult<Bound<'py, PyArray1<u8>>> {
    let owner = Bound::new(py, MapOwner { _file: Arc::clone(file), path: path.to_path_buf() })?;
    // SAFETY: `bytes` points into the file's map (or owned buffer), which is never modified and
    // lives as long as the `LbfFile`; `owner` holds an `Arc` of it and becomes the array's base,
    // so the memory outlives the array.
    let arr = unsafe { PyArray1::borrow_from_array(&ArrayView1::from(bytes), owner.into_any()) };
    // Read-only: the map is not writable. numpy refuses to set WRITEABLE again on an array whose
    // base is not writable.
    drop(arr.readwrite().make_nonwriteable());
    Ok(arr)
}

/// An open LBF file. `close()` drops this handle's reference; views handed out earlier keep
/// the map alive and stay valid.
#[pyclass(frozen)]
#[derive(Debug)]
pub struct LbfReader {
    file: Mutex<Option<Arc<LbfFile>>>,
    path: PathBuf,
}

impl LbfReader {
    fn get(&self) -> PyResult<Arc<LbfFile>> {
        self.file.lock().expect("not poisoned").clone().ok_or_else(|| ClosedError::new_err("the LBF file is closed"))
    }
}

fn array_to_py<'py>(py: Python<'py>, a: &Array) -> PyResult<Bound<'py, PyAny>> {
    let payload: Bound<'py, PyAny> = match a {
        Array::U8(v) => PyArray1::from_slice(py, v).into_any(),
        Array::I8(v) => PyArray1::from_slice(py, v).into_any(),
        Array::U16(v) => PyArray1::from_slice(py, v).into_any(),
        Array::I16(v) => PyArray1::from_slice(py, v).into_any(),
        Array::U32(v) => PyArray1::from_slice(py, v).into_any(),
        Array::I32(v) => PyArray1::from_slice(py, v).into_any(),
        Array::U64(v) => PyArray1::from_slice(py, v).into_any(),
        Array::I64(v) => PyArray1::from_slice(py, v).into_any(),
        Array::F32(v) => PyArray1::from_slice(py, v).into_any(),
        Array::F64(v) => PyArray1::from_slice(py, v).into_any(),
        Array::Bool(v) => PyList::new(py, v)?.into_any(),
        Array::String(v) => PyList::new(py, v)?.into_any(),
        Array::Array(v) => {
            PyList::new(py, v.iter().map(|x| array_to_py(py, x)).collect::<PyResult<Vec<_>>>()?)?.into_any()
        }
    };
    Ok(PyTuple::new(py, [a.elem_type_name().into_pyobject(py)?.into_any(), payload])?.into_any())
}

fn value_to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::U8(x) => x.into_pyobject(py)?.into_any(),
        Value::I8(x) => x.into_pyobject(py)?.into_any(),
        Value::U16(x) => x.into_pyobject(py)?.into_any(),
        Value::I16(x) => x.into_pyobject(py)?.into_any(),
        Value::U32(x) => x.into_pyobject(py)?.into_any(),
        Value::I32(x) => x.into_pyobject(py)?.into_any(),
        Value::U64(x) => x.into_pyobject(py)?.into_any(),
        Value::I64(x) => x.into_pyobject(py)?.into_any(),
        Value::F32(x) => x.into_pyobject(py)?.into_any(),
        Value::F64(x) => x.into_pyobject(py)?.into_any(),
        Value::Bool(x) => x.into_pyobject(py)?.to_owned().into_any(),
        Value::String(s) => s.into_pyobject(py)?.into_any(),
        Value::Array(a) => array_to_py(py, a)?,
        Value::Unknown { bytes, .. } => pyo3::types::PyBytes::new(py, bytes).into_any(),
    })
}

fn array_from_py(obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<Array> {
    if depth > lowbit_core::format::MAX_DEPTH {
        return Err(PyLowbitError(Error::InvalidParameter(format!(
            "metadata arrays nest at most {} deep",
            lowbit_core::format::MAX_DEPTH
        )))
        .into());
    }
    let (elem, payload): (String, Bound<'_, PyAny>) = obj.extract()?;
    macro_rules! num {
        ($v:ident, $t:ty) => {
            Array::$v(payload.extract::<PyReadonlyArray1<'_, $t>>()?.as_array().to_vec())
        };
    }
    Ok(match elem.as_str() {
        "u8" => num!(U8, u8),
        "i8" => num!(I8, i8),
        "u16" => num!(U16, u16),
        "i16" => num!(I16, i16),
        "u32" => num!(U32, u32),
        "i32" => num!(I32, i32),
        "u64" => num!(U64, u64),
        "i64" => num!(I64, i64),
        "f32" => num!(F32, f32),
        "f64" => num!(F64, f64),
        "bool" => Array::Bool(payload.extract()?),
        "string" => Array::String(payload.extract()?),
        "array" => {
            Array::Array(payload.try_iter()?.map(|x| array_from_py(&x?, depth + 1)).collect::<PyResult<Vec<_>>>()?)
        }
        t => return Err(PyTypeError::new_err(format!("unknown metadata array element type {t:?}"))),
    })
}

fn value_from_py(tag: &str, v: &Bound<'_, PyAny>) -> PyResult<Value> {
    Ok(match tag {
        "u8" => Value::U8(v.extract()?),
        "i8" => Value::I8(v.extract()?),
        "u16" => Value::U16(v.extract()?),
        "i16" => Value::I16(v.extract()?),
        "u32" => Value::U32(v.extract()?),
        "i32" => Value::I32(v.extract()?),
        "u64" => Value::U64(v.extract()?),
        "i64" => Value::I64(v.extract()?),
        "f32" => Value::F32(v.extract()?),
        "f64" => Value::F64(v.extract()?),
        "bool" => Value::Bool(v.extract()?),
        "string" => Value::String(v.extract()?),
        "array" => Value::Array(array_from_py(v, 1)?),
        t => return Err(PyTypeError::new_err(format!("unknown metadata type {t:?}"))),
    })
}

#[pymethods]
impl LbfReader {
    /// Map and validate `path` (the GIL is released meanwhile).
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> Result<Self, PyLowbitError> {
        let file = py.detach(|| LbfFile::open(&path))?;
        Ok(LbfReader { file: Mutex::new(Some(Arc::new(file))), path })
    }

    /// Drop this handle's reference to the map (views keep it alive).
    fn close(&self) {
        self.file.lock().expect("not poisoned").take();
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.file.lock().expect("not poisoned").is_none()
    }

    /// The fixed header as a dict.
    fn header<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let f = self.get()?;
        let h = f.header();
        let d = PyDict::new(py);
        d.set_item("version", format!("{}.{}", h.major, h.minor))?;
        d.set_item("major", h.major)?;
        d.set_item("minor", h.minor)?;
        d.set_item("index_offset", h.index_offset)?;
        d.set_item("index_len", h.index_len)?;
        d.set_item("n_metadata", h.n_metadata)?;
        d.set_item("n_tensors", h.n_tensors)?;
        d.set_item("file_len", h.file_len)?;
        d.set_item("flags", h.flags)?;
        d.set_item("header_crc", h.header_crc)?;
        Ok(d)
    }

    /// Metadata as a list of (key, type name, tagged value).
    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Vec<(String, String, Bound<'py, PyAny>)>> {
        let f = self.get()?;
        f.metadata().entries().iter().map(|(k, v)| Ok((k.clone(), v.type_name(), value_to_py(py, v)?))).collect()
    }

    /// The index: (name, qtype name, group_size or None, symmetric or None, dims,
    /// [(part kind name, offset, length, crc32)]).
    #[allow(clippy::type_complexity)]
    fn tensors(
        &self,
    ) -> PyResult<Vec<(String, String, Option<usize>, Option<bool>, Vec<u64>, Vec<(String, u64, u64, u32)>)>> {
        let f = self.get()?;
        Ok(f.tensors()
            .iter()
            .map(|t| {
                let parts = t
                    .parts
                    .iter()
                    .map(|p| {
                        let kind =
                            PartKind::from_id(p.kind).map_or(format!("kind{}", p.kind), |k| k.name().to_string());
                        (kind, p.offset, p.len, p.crc)
                    })
                    .collect();
                let (g, s) = t.affine.map_or((None, None), |a| (Some(a.group_size.unwrap_or(0)), Some(a.symmetric)));
                (t.name.clone(), t.qtype_name(), g, s, t.dims.clone(), parts)
            })
            .collect())
    }

    /// The parts of tensor `name` as {kind name: read-only uint8 view}, after checking its
    /// checksums (first access only) and the content of perm/outlier parts.
    fn parts<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyDict>> {
        let f = self.get()?;
        let i = f.find(name).map_err(PyLowbitError)?;
        let parts = py.detach(|| f.tensor_parts(i)).map_err(PyLowbitError)?;
        let d = PyDict::new(py);
        for p in &f.tensors()[i].parts {
            let kind = PartKind::from_id(p.kind).expect("tensor_parts rejects unknown kinds");
            d.set_item(kind.name(), view(py, &f, &self.path, parts[kind as usize])?)?;
        }
        Ok(d)
    }

    /// Check every checksum with the GIL released; the failures as (tensor name, message).
    fn verify(&self, py: Python<'_>) -> PyResult<Vec<(String, String)>> {
        let f = self.get()?;
        let bad = py.detach(|| f.verify_all());
        Ok(bad.into_iter().map(|(i, e)| (f.tensors()[i].name.clone(), e.to_string())).collect())
    }
}

/// A file being written (see `lowbit_core::format::LbfWriter`).
#[pyclass(frozen, name = "LbfWriter")]
#[derive(Debug)]
pub struct PyLbfWriter {
    inner: Mutex<Option<LbfWriter>>,
}

impl PyLbfWriter {
    fn with<T>(&self, f: impl FnOnce(&mut LbfWriter) -> Result<T, Error>) -> PyResult<T> {
        let mut g = self.inner.lock().expect("not poisoned");
        let w = g.as_mut().ok_or_else(|| ClosedError::new_err("the writer is finished or aborted"))?;
        Ok(f(w).map_err(PyLowbitError)?)
    }
}

#[pymethods]
impl PyLbfWriter {
    /// Start writing `path`; `inputs` are files the destination must not be.
    #[new]
    fn new(path: PathBuf, inputs: Vec<PathBuf>) -> Result<Self, PyLowbitError> {
        let inputs: Vec<&std::path::Path> = inputs.iter().map(PathBuf::as_path).collect();
        let w = LbfWriter::create(&path, &inputs)?;
        Ok(PyLbfWriter { inner: Mutex::new(Some(w)) })
    }

    /// Append a tensor. `parts` maps kind names to 1-D uint8 arrays; `data` is required.
    #[pyo3(signature = (name, qtype, dims, parts, group_size=None, symmetric=None))]
    #[allow(clippy::too_many_arguments)]
    fn add_tensor(
        &self,
        py: Python<'_>,
        name: &str,
        qtype: &str,
        dims: Vec<u64>,
        parts: Vec<(String, PyReadonlyArray1<'_, u8>)>,
        group_size: Option<usize>,
        symmetric: Option<bool>,
    ) -> PyResult<()> {
        let opts = QuantOptions { group_size, symmetric, ..Default::default() };
        let (q, affine) = resolve(qtype, &opts).map_err(PyLowbitError)?;
        let mut slices = Vec::with_capacity(parts.len());
        for (kind, arr) in &parts {
            let k = PartKind::ALL
                .into_iter()
                .find(|k| k.name() == kind)
                .ok_or_else(|| PyLowbitError(Error::InvalidParameter(format!("unknown part kind {kind:?}"))))?;
            slices.push((k, slice_of(arr, kind)?));
        }
        let spec = TensorSpec { name, qtype: q, affine, dims: &dims };
        py.detach(|| self.with(|w| w.add_tensor(&spec, &slices)))
    }

    /// Write the index and header, fsync and rename into place.
    fn finish(&self, py: Python<'_>, metadata: Vec<(String, String, Bound<'_, PyAny>)>) -> PyResult<()> {
        let mut m = Metadata::new();
        for (k, tag, v) in &metadata {
            m.insert(k.clone(), value_from_py(tag, v)?).map_err(PyLowbitError)?;
        }
        let w = self.inner.lock().expect("not poisoned").take();
        let w = w.ok_or_else(|| ClosedError::new_err("the writer is finished or aborted"))?;
        py.detach(|| w.finish(&m)).map_err(PyLowbitError)?;
        Ok(())
    }

    /// Discard the file being written.
    fn abort(&self) {
        self.inner.lock().expect("not poisoned").take();
    }
}
