//! Write the seed corpus of the `lbf_reader` fuzz target: a few small, valid LBF files made with
//! lowbit-core's own writer. Usage: `make_seeds <folder>` (created if missing).

use std::path::Path;

use lowbit_core::format::{Array, LbfWriter, Metadata, PartKind, TensorSpec, Value};
use lowbit_core::matmul::ActQuant;
use lowbit_core::quant::{quantize, QuantOptions, Source};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    let dir = std::env::args().nth(1).ok_or("usage: make_seeds <folder>")?;
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir)?;

    write(&dir.join("empty.lbf"), &Metadata::new(), &[])?;
    write(&dir.join("metadata.lbf"), &rich_metadata()?, &[])?;

    let mut small = Metadata::new();
    small.insert("general.name", Value::String("seed".into()))?;
    small.insert("general.n_layers", Value::U32(2))?;
    let types = [
        ("f32", 2, 8),
        ("f16", 2, 16),
        ("bf16", 1, 16),
        ("q8_0", 2, 32),
        ("q4_0", 1, 32),
        ("q4_1", 1, 32),
        ("q5_0", 1, 32),
        ("q5_1", 1, 32),
        ("q2_k", 1, 256),
        ("q3_k", 1, 256),
        ("q4_k", 1, 256),
        ("q5_k", 1, 256),
        ("q6_k", 1, 256),
        ("iq4_nl", 1, 32),
        ("int4-g32", 2, 64),
        ("int4-g64-sym", 1, 64),
        ("int3-row", 2, 24),
        ("int2-g32", 1, 64),
        ("int8-g128-sym", 1, 128),
    ];
    let mut tensors = Vec::new();
    for (name, rows, cols) in types {
        tensors.push(Tensor::quantized(&format!("t.{name}"), name, &[rows, cols])?);
    }
    write(&dir.join("types.lbf"), &small, &tensors)?;

    // Composite tensors: perm and outliers, a 3-D one, an empty one.
    let mut comp = Tensor::quantized("layers.0.mlp.down_proj.weight", "int4-g32", &[4, 64])?;
    comp.perm(7);
    comp.outliers(&[&[3, 17], &[], &[0], &[5, 6, 63]]);
    let mut perm_only = Tensor::quantized("layers.0.attn.q.weight", "int3-g32-sym", &[2, 32])?;
    perm_only.perm(5);
    let mut outl_only = Tensor::quantized("layers.0.attn.k.weight", "int8-row", &[3, 16])?;
    outl_only.outliers(&[&[1], &[], &[0, 15]]);
    let cube = Tensor::quantized("embed.3d", "q4_0", &[2, 2, 32])?;
    let empty =
        Tensor { name: "empty".into(), qtype: "f32".into(), dims: vec![0, 8], parts: vec![(PartKind::Data, vec![])] };
    let mut w8a8 = Tensor::quantized("layers.0.mlp.up_proj.weight", "int8-row-sym", &[3, 16])?;
    w8a8.parts.push((PartKind::ActQuant, ActQuant::Static(0.05).to_le_bytes().to_vec()));
    let mut w8a8_dyn = Tensor::quantized("layers.0.mlp.gate_proj.weight", "int8-row-sym", &[2, 24])?;
    w8a8_dyn.parts.push((PartKind::ActQuant, ActQuant::PerToken.to_le_bytes().to_vec()));
    let composite = [comp, perm_only, outl_only, cube, empty, w8a8, w8a8_dyn];
    write(&dir.join("composite.lbf"), &small, &composite)?;

    // The same file claiming a newer minor version: unknown type ids and part kinds are then
    // legal, so mutations reach the reader's forward-compatibility paths.
    let mut bytes = std::fs::read(dir.join("composite.lbf"))?;
    bytes[10..12].copy_from_slice(&(lowbit_core::format::VERSION_MINOR + 1).to_le_bytes());
    let io = u64::from_le_bytes(bytes[16..24].try_into()?) as usize;
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes[..60]);
    h.update(&bytes[io..]);
    let crc = h.finalize();
    bytes[60..64].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(dir.join("composite_newer_minor.lbf"), &bytes)?;
    lowbit_core::format::LbfFile::from_bytes(bytes)?;

    for e in std::fs::read_dir(dir)? {
        let e = e?;
        lowbit_core::format::LbfFile::open(e.path())?.verify()?;
    }
    Ok(())
}

/// Metadata of every value type, nested arrays included.
fn rich_metadata() -> Res<Metadata> {
    let mut m = Metadata::new();
    m.insert("u8", Value::U8(200))?;
    m.insert("i8", Value::I8(-5))?;
    m.insert("u16", Value::U16(65535))?;
    m.insert("i16", Value::I16(-300))?;
    m.insert("u32", Value::U32(4_000_000_000))?;
    m.insert("i32", Value::I32(-70_000))?;
    m.insert("u64", Value::U64(u64::MAX))?;
    m.insert("i64", Value::I64(i64::MIN))?;
    m.insert("f32", Value::F32(1.5))?;
    m.insert("f64", Value::F64(-2.25e-300))?;
    m.insert("bool", Value::Bool(true))?;
    m.insert("string", Value::String("héllo, wörld".into()))?;
    m.insert("tokenizer.json", Value::String(r#"{"model":{"type":"BPE"}}"#.into()))?;
    m.insert("a.u8", Value::Array(Array::U8(vec![1, 2, 3])))?;
    m.insert("a.i16", Value::Array(Array::I16(vec![-1, 2])))?;
    m.insert("a.u64", Value::Array(Array::U64(vec![7])))?;
    m.insert("a.f32", Value::Array(Array::F32(vec![0.5, -1.0, f32::INFINITY])))?;
    m.insert("a.f64", Value::Array(Array::F64(vec![3.0])))?;
    m.insert("a.bool", Value::Array(Array::Bool(vec![true, false])))?;
    m.insert("a.string", Value::Array(Array::String(vec!["a".into(), "".into(), "ccc".into()])))?;
    m.insert("a.empty", Value::Array(Array::I32(vec![])))?;
    m.insert(
        "a.nested",
        Value::Array(Array::Array(vec![Array::I32(vec![1, 2]), Array::I32(vec![]), Array::I32(vec![-3])])),
    )?;
    m.insert(
        "a.deep",
        Value::Array(Array::Array(vec![Array::Array(vec![Array::Array(vec![Array::String(vec!["x".into()])])])])),
    )?;
    Ok(m)
}

struct Tensor {
    name: String,
    qtype: String,
    dims: Vec<u64>,
    parts: Vec<(PartKind, Vec<u8>)>,
}

impl Tensor {
    /// A tensor of deterministic pseudo-random values quantized to `qtype`.
    fn quantized(name: &str, qtype: &str, dims: &[u64]) -> Res<Tensor> {
        let cols = *dims.last().unwrap() as usize;
        let rows = dims[..dims.len() - 1].iter().product::<u64>() as usize;
        let mut s = 0x9E37_79B9_u32 ^ name.len() as u32;
        let vals: Vec<f32> = (0..rows * cols)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32 - 0.5) * 4.0
            })
            .collect();
        let (_, data) = quantize(qtype, Source::F32(&vals), rows, cols, &QuantOptions::default())?;
        Ok(Tensor { name: name.into(), qtype: qtype.into(), dims: dims.to_vec(), parts: vec![(PartKind::Data, data)] })
    }

    fn cols(&self) -> usize {
        *self.dims.last().unwrap() as usize
    }

    /// Add a perm part: the columns rotated by `k`.
    fn perm(&mut self, k: usize) {
        let n = self.cols();
        let p: Vec<u8> = (0..n).flat_map(|j| (((j + k) % n) as u32).to_le_bytes()).collect();
        self.parts.push((PartKind::Perm, p));
    }

    /// Add outlier parts: `cols[r]` are the (ascending) outlier columns of row `r`.
    fn outliers(&mut self, cols: &[&[u32]]) {
        let mut ptr = vec![0u64];
        let (mut idx, mut vals) = (Vec::new(), Vec::new());
        for row in cols {
            for &c in *row {
                idx.extend_from_slice(&c.to_le_bytes());
                vals.extend_from_slice(&(0x4800u16 + c as u16).to_le_bytes()); // f16 8.0 and up
            }
            ptr.push(ptr.last().unwrap() + row.len() as u64);
        }
        self.parts.push((PartKind::OutlierRows, ptr.iter().flat_map(|p| p.to_le_bytes()).collect()));
        self.parts.push((PartKind::OutlierCols, idx));
        self.parts.push((PartKind::OutlierVals, vals));
    }
}

fn write(path: &Path, meta: &Metadata, tensors: &[Tensor]) -> Res<()> {
    let mut w = LbfWriter::create(path, &[])?;
    for t in tensors {
        let (qtype, affine) = lowbit_core::quant::resolve(&t.qtype, &QuantOptions::default())?;
        let parts: Vec<(PartKind, &[u8])> = t.parts.iter().map(|(k, b)| (*k, b.as_slice())).collect();
        w.add_tensor(&TensorSpec { name: &t.name, qtype, affine, dims: &t.dims }, &parts)?;
    }
    w.finish(meta)?;
    Ok(())
}
