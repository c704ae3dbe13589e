//! Bindings of `lowbit_core::model`: `Engine` (a loaded model), `Session` (its KV cache) and
//! `Sampler`. The config arrives as a dict of the keys [`REQUIRED_KEYS`] and, as the
//! `rope_type` needs them, [`ROPE_KEYS`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use lowbit_core::format::LbfFile;
use lowbit_core::matmul::{ActQuant, Outliers, QMatrix};
use lowbit_core::model::{self as core_model, Arch, Config, LayerView, Model, RopeScaling, Sampler, Session, Tap};
use lowbit_core::quant::{self, Layout, QuantOptions};
use lowbit_core::Error;
use numpy::{PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::PyLowbitError;
use crate::matmul::le_bytes;
use crate::{parse_act, parse_isa, slice_of, ActArg};

/// The keys every `Engine` config has.
const REQUIRED_KEYS: [&str; 14] = [
    "arch",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "rope_theta",
    "tie_word_embeddings",
    "attention_bias",
    "max_position_embeddings",
    "rope_type",
];
/// The rope scaling parameters: required by the `rope_type`s that use them, absent or None
/// otherwise.
const ROPE_KEYS: [&str; 4] =
    ["rope_factor", "rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_position_embeddings"];

/// Optional keys (absent or None when unused).
const OPTIONAL_KEYS: [&str; 1] = ["sliding_window"];

fn param_err(msg: String) -> PyErr {
    PyLowbitError(Error::InvalidParameter(msg)).into()
}

/// A [`Config`] from the dict of `Engine(path, config)`.
fn config_from_dict(d: &Bound<'_, PyDict>) -> PyResult<Config> {
    let known: Vec<&str> = REQUIRED_KEYS.iter().chain(&ROPE_KEYS).chain(&OPTIONAL_KEYS).copied().collect();
    let mut unknown = Vec::new();
    for k in d.keys() {
        let k: String = k.extract().map_err(|_| param_err("config keys must be strings".into()))?;
        if !known.contains(&k.as_str()) {
            unknown.push(k);
        }
    }
    if !unknown.is_empty() {
        return Err(param_err(format!(
            "unknown config keys: {}; valid keys: {}",
            unknown.join(", "),
            known.join(", ")
        )));
    }
    let get = |k: &str| -> PyResult<Option<Bound<'_, PyAny>>> { Ok(d.get_item(k)?.filter(|v| !v.is_none())) };
    let missing: Vec<&str> = REQUIRED_KEYS.into_iter().filter(|k| get(k).ok().flatten().is_none()).collect();
    if !missing.is_empty() {
        return Err(param_err(format!("missing config keys: {}", missing.join(", "))));
    }
    fn typed<'py, T: FromPyObjectOwned<'py>>(v: Bound<'py, PyAny>, k: &str, what: &str) -> PyResult<T> {
        v.extract::<T>().map_err(|_| param_err(format!("config key '{k}' must be {what}, got {v}")))
    }
    let int = |k: &str| typed::<usize>(get(k)?.expect("checked"), k, "a non-negative int");
    let float = |k: &str| typed::<f64>(get(k)?.expect("checked"), k, "a number");
    let flag = |k: &str| typed::<bool>(get(k)?.expect("checked"), k, "a bool");
    let string = |k: &str| typed::<String>(get(k)?.expect("checked"), k, "a str");
    let rope_type = string("rope_type")?;
    let uses: &[&str] = match rope_type.as_str() {
        "default" => &[],
        "linear" => &["rope_factor"],
        "llama3" => &ROPE_KEYS,
        t => return Err(param_err(format!("unknown rope_type '{t}'; valid: default, linear, llama3"))),
    };
    for k in &ROPE_KEYS {
        match (get(k)?.is_some(), uses.contains(k)) {
            (false, true) => return Err(param_err(format!("rope_type '{rope_type}' needs config key '{k}'"))),
            (true, false) => return Err(param_err(format!("config key '{k}' is not used by rope_type '{rope_type}'"))),
            _ => {}
        }
    }
    let rope_scaling = match rope_type.as_str() {
        "linear" => RopeScaling::Linear { factor: float("rope_factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: float("rope_factor")?,
            low_freq_factor: float("rope_low_freq_factor")?,
            high_freq_factor: float("rope_high_freq_factor")?,
            original_max_position_embeddings: int("rope_original_max_position_embeddings")?,
        },
        _ => RopeScaling::None,
    };
    Ok(Config {
        arch: Arch::parse(&string("arch")?).map_err(PyLowbitError)?,
        vocab_size: int("vocab_size")?,
        hidden_size: int("hidden_size")?,
        intermediate_size: int("intermediate_size")?,
        num_hidden_layers: int("num_hidden_layers")?,
        num_attention_heads: int("num_attention_heads")?,
        num_key_value_heads: int("num_key_value_heads")?,
        head_dim: int("head_dim")?,
        rms_norm_eps: float("rms_norm_eps")?,
        rope_theta: float("rope_theta")?,
        rope_scaling,
        tie_word_embeddings: flag("tie_word_embeddings")?,
        attention_bias: flag("attention_bias")?,
        max_position_embeddings: int("max_position_embeddings")?,
        sliding_window: match get("sliding_window")? {
            Some(_) => Some(int("sliding_window")?),
            None => None,
        },
    })
}

/// A model loaded from an LBF file: weights stay in the file's memory map.
#[pyclass(frozen, name = "Engine")]
#[derive(Debug)]
pub struct PyEngine {
    model: Arc<Model>,
}

#[pymethods]
impl PyEngine {
    #[new]
    #[pyo3(signature = (path, config, isa=None))]
    fn new(py: Python<'_>, path: PathBuf, config: &Bound<'_, PyDict>, isa: Option<&str>) -> PyResult<Self> {
        let cfg = config_from_dict(config)?;
        let isa = parse_isa(isa)?;
        let model = py.detach(|| Model::load(Arc::new(LbfFile::open(&path)?), cfg, isa)).map_err(PyLowbitError)?;
        Ok(PyEngine { model: Arc::new(model) })
    }

    /// A new session (KV cache) of `max_context` tokens.
    fn session(&self, py: Python<'_>, max_context: usize) -> Result<PySession, PyLowbitError> {
        let s = py.detach(|| Session::new(&self.model, max_context))?;
        Ok(PySession { model: Arc::clone(&self.model), session: Mutex::new(s) })
    }

    /// The instruction set the kernels run at.
    #[getter]
    fn isa(&self) -> &'static str {
        self.model.isa().name()
    }
}

/// The KV cache of one sequence on an `Engine`.
#[pyclass(frozen, name = "Session")]
#[derive(Debug)]
pub struct PySession {
    model: Arc<Model>,
    session: Mutex<Session>,
}

impl PySession {
    fn lock(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl PySession {
    /// Logits of `tokens` (1-D uint32): `(n, vocab)` float32 with `all_logits`, else `(vocab,)`.
    fn forward<'py>(
        &self,
        py: Python<'py>,
        tokens: &Bound<'py, PyAny>,
        all_logits: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let arr = tokens
            .extract::<PyReadonlyArray1<'py, u32>>()
            .map_err(|_| PyLowbitError(Error::Shape("tokens must be a 1-D uint32 array".into())))?;
        let toks = slice_of(&arr, "tokens")?;
        let logits = py.detach(|| self.lock().forward(&self.model, toks, all_logits)).map_err(PyLowbitError)?;
        let out = PyArray1::from_vec(py, logits);
        if all_logits {
            Ok(out.reshape([toks.len(), self.model.config().vocab_size])?.into_any())
        } else {
            Ok(out.into_any())
        }
    }

    /// Tokens in the cache.
    #[getter]
    fn position(&self) -> usize {
        self.lock().position()
    }

    /// Capacity of the cache, in tokens.
    #[getter]
    fn max_context(&self) -> usize {
        self.lock().max_context()
    }

    /// Forget every token.
    fn reset(&self) {
        self.lock().reset();
    }

    /// Keep the first `n` tokens.
    fn truncate(&self, n: usize) -> Result<(), PyLowbitError> {
        Ok(self.lock().truncate(n)?)
    }
}

/// Greedy / temperature / top-k / top-p sampling with a seeded PRNG.
#[pyclass(frozen, name = "Sampler")]
#[derive(Debug)]
pub struct PySampler {
    inner: Mutex<Sampler>,
}

#[pymethods]
impl PySampler {
    #[new]
    #[pyo3(signature = (temperature=0.0, top_k=0, top_p=1.0, seed=0))]
    fn new(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> Result<Self, PyLowbitError> {
        Ok(PySampler { inner: Mutex::new(Sampler::new(temperature, top_k, top_p, seed)?) })
    }

    /// The next token id for `logits` (1-D float32).
    fn sample<'py>(&self, py: Python<'py>, logits: &Bound<'py, PyAny>) -> PyResult<u32> {
        let arr = logits
            .extract::<PyReadonlyArray1<'py, f32>>()
            .map_err(|_| PyLowbitError(Error::Shape("logits must be a 1-D float32 array".into())))?;
        let l = slice_of(&arr, "logits")?;
        let inner = &self.inner;
        Ok(py.detach(|| inner.lock().unwrap_or_else(|e| e.into_inner()).sample(l)).map_err(PyLowbitError)?)
    }
}

/// The weight matrices of a decoder layer, by their names under `model.layers.{i}.`.
const LAYER_MATRICES: [&str; 7] = [
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
];

/// A weight as `layer_forward` receives it: `(data uint8, qtype, rows, cols, group_size,
/// symmetric, perm uint32 | None, act)`, `act` = None or `("static", step)` / `("dynamic", 0.0)`
/// for a W8A8 weight.
type MatrixArg<'py> = (
    PyReadonlyArray1<'py, u8>,
    String,
    usize,
    usize,
    Option<usize>,
    Option<bool>,
    Option<PyReadonlyArray1<'py, u32>>,
    Option<ActArg>,
    Option<OutlierArg<'py>>,
);

/// Outliers as (row_ptr u64, cols u32, vals as u16 bits).
type OutlierArg<'py> = (PyReadonlyArray1<'py, u64>, PyReadonlyArray1<'py, u32>, PyReadonlyArray1<'py, u16>);
/// Outlier parts as little-endian bytes: row pointers, columns, values.
type OutlierBytes = Option<[Vec<u8>; 3]>;

/// One decoder layer over `x` (`tokens × hidden` float32: `tokens / seq_len` independent
/// sequences, each from position 0), returning the new hidden states and, for each tap name
/// in `taps` ("attn_in", "o_in", "mlp_in", "down_in"), the input of that linear group
/// (`tokens × width` float32). `tensors` maps the layer's HF names (without the
/// `model.layers.{i}.` prefix) to a [`MatrixArg`] tuple for the seven weights and to 1-D float32
/// arrays for the norms and biases.
#[pyfunction]
#[pyo3(signature = (config, tensors, x, seq_len, taps, isa=None))]
#[allow(clippy::type_complexity)]
pub fn layer_forward<'py>(
    py: Python<'py>,
    config: &Bound<'py, PyDict>,
    tensors: &Bound<'py, PyDict>,
    x: PyReadonlyArray2<'py, f32>,
    seq_len: usize,
    taps: Vec<String>,
    isa: Option<&str>,
) -> PyResult<(Bound<'py, PyArray2<f32>>, Bound<'py, PyDict>)> {
    let cfg = config_from_dict(config)?;
    let isa = parse_isa(isa)?;
    let taps = taps.iter().map(|t| Tap::parse(t)).collect::<Result<Vec<_>, _>>().map_err(PyLowbitError)?;
    let get = |k: &str| -> PyResult<Bound<'py, PyAny>> {
        tensors.get_item(k)?.ok_or_else(|| param_err(format!("layer tensor {k:?} is missing")))
    };
    #[allow(clippy::type_complexity)]
    let (mut args, mut mats): (
        Vec<MatrixArg<'py>>,
        Vec<(Layout, Option<Vec<u8>>, Option<ActQuant>, OutlierBytes)>,
    ) = (Vec::new(), Vec::new());
    for name in LAYER_MATRICES {
        let arg: MatrixArg<'py> = get(name)?.extract().map_err(|_| {
            param_err(format!(
                "layer tensor {name:?} must be (data uint8, qtype, rows, cols, group_size, symmetric, perm, act, outliers)"
            ))
        })?;
        let opts = QuantOptions { group_size: arg.4, symmetric: arg.5, ..Default::default() };
        let (q, spec) = quant::resolve(&arg.1, &opts).map_err(PyLowbitError)?;
        let layout = Layout::new(q, spec, arg.2, arg.3).map_err(PyLowbitError)?;
        let perm = match &arg.6 {
            Some(p) => Some(slice_of(p, "perm")?.iter().flat_map(|v| v.to_le_bytes()).collect()),
            None => None,
        };
        let act = parse_act(arg.7.as_ref())?;
        let outl = match &arg.8 {
            Some((p, c, v)) => Some([
                le_bytes(slice_of(p, "outlier row pointers")?, u64::to_le_bytes),
                le_bytes(slice_of(c, "outlier columns")?, u32::to_le_bytes),
                le_bytes(slice_of(v, "outlier values")?, u16::to_le_bytes),
            ]),
            None => None,
        };
        args.push(arg);
        mats.push((layout, perm, act, outl));
    }
    let vec_names = [
        "input_layernorm.weight",
        "post_attention_layernorm.weight",
        "self_attn.q_proj.bias",
        "self_attn.k_proj.bias",
        "self_attn.v_proj.bias",
        "self_attn.o_proj.bias",
    ];
    let mut vecs: Vec<Option<PyReadonlyArray1<'py, f32>>> = Vec::with_capacity(vec_names.len());
    for (i, name) in vec_names.iter().enumerate() {
        let v = tensors.get_item(name)?;
        if v.is_none() && i < 2 {
            return Err(param_err(format!("layer tensor {name:?} is missing")));
        }
        vecs.push(
            v.map(|a| a.extract().map_err(|_| param_err(format!("layer tensor {name:?} must be a 1-D float32 array"))))
                .transpose()?,
        );
    }
    let data = args.iter().map(|a| slice_of(&a.0, "weight data")).collect::<Result<Vec<_>, _>>()?;
    let vs =
        vecs.iter().map(|v| v.as_ref().map(|a| slice_of(a, "vector")).transpose()).collect::<Result<Vec<_>, _>>()?;
    let h = cfg.hidden_size;
    if x.shape()[1] != h {
        return Err(PyLowbitError(Error::Shape(format!("x must have {h} columns, got {}", x.shape()[1]))).into());
    }
    let mut xs = slice_of(&x, "x")?.to_vec();
    let tokens = x.shape()[0];
    let mut outs: Vec<(Tap, Vec<f32>)> = Vec::new();
    py.detach(|| -> lowbit_core::Result<()> {
        for &t in &taps {
            outs.push((t, core_model::layer_buffer(&[tokens, t.width(&cfg)], "tap output")?));
        }
        let m = |i: usize| {
            let (layout, perm, act, outl) = &mats[i];
            let o = outl.as_ref().map(|[p, c, v]| Outliers { row_ptr: p, cols: c, vals: v });
            QMatrix::new(*layout, data[i], perm.as_deref(), o)?.with_act(*act)
        };
        let view = LayerView {
            attn_norm: vs[0].expect("checked"),
            q: m(0)?,
            k: m(1)?,
            v: m(2)?,
            o: m(3)?,
            qkv_bias: match (vs[2], vs[3], vs[4]) {
                (Some(q), Some(k), Some(v)) => Some([q, k, v]),
                (None, None, None) => None,
                _ => return Err(Error::InvalidParameter("give all of the q/k/v biases or none".into())),
            },
            o_bias: vs[5],
            ffn_norm: vs[1].expect("checked"),
            gate: m(4)?,
            up: m(5)?,
            down: m(6)?,
        };
        core_model::layer_forward(&cfg, isa, &view, &mut xs, seq_len, &mut |tap, row, acts| {
            if let Some((_, buf)) = outs.iter_mut().find(|(t, _)| *t == tap) {
                buf[row * tap.width(&cfg)..][..acts.len()].copy_from_slice(acts);
            }
        })
    })
    .map_err(PyLowbitError)?;
    let d = PyDict::new(py);
    for (t, buf) in outs {
        let w = t.width(&cfg);
        d.set_item(t.name(), PyArray1::from_vec(py, buf).reshape([tokens, w])?)?;
    }
    Ok((PyArray1::from_vec(py, xs).reshape([tokens, h])?, d))
}
