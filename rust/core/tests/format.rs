//! LBF (formats/LBF.md): round trips, golden files, and a table of hand-crafted bad files.
//! Every bad file must give a clean error (never a panic) naming what is wrong.

mod common;

use std::path::{Path, PathBuf};

use common::Rng;
use lowbit_core::format::{
    qtype_id, Array, LbfFile, LbfWriter, Metadata, PartKind, TensorSpec, Value, MAGIC, MAX_DEPTH,
};
use lowbit_core::qtype::{AffineSpec, QType, TYPES};
use lowbit_core::quant::{quantize, resolve, Source};
use lowbit_core::{Error, QuantOptions};
use proptest::prelude::*;

/// A fresh folder, unique per call (tests run in parallel threads of one process).
fn tmpdir(tag: &str) -> PathBuf {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("lowbit-format-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn crc(b: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(b);
    h.finalize()
}

/// Metadata as text with floats as their bits (NaN payloads included), for comparisons.
fn canon(m: &Metadata) -> String {
    fn arr(a: &Array) -> String {
        match a {
            Array::F32(v) => format!("f32{:?}", v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()),
            Array::F64(v) => format!("f64{:?}", v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()),
            Array::Array(v) => format!("[{}]", v.iter().map(arr).collect::<Vec<_>>().join(",")),
            a => format!("{a:?}"),
        }
    }
    let val = |v: &Value| match v {
        Value::F32(x) => format!("f32:{:#x}", x.to_bits()),
        Value::F64(x) => format!("f64:{:#x}", x.to_bits()),
        Value::Array(a) => arr(a),
        v => format!("{v:?}"),
    };
    m.entries().iter().map(|(k, v)| format!("{k}={}\n", val(v))).collect()
}

fn all_metadata() -> Metadata {
    let mut m = Metadata::new();
    let entries = vec![
        ("u8", Value::U8(255)),
        ("i8", Value::I8(-128)),
        ("u16", Value::U16(65535)),
        ("i16", Value::I16(-32768)),
        ("u32", Value::U32(u32::MAX)),
        ("i32", Value::I32(i32::MIN)),
        ("u64", Value::U64(u64::MAX)),
        ("i64", Value::I64(i64::MIN)),
        ("f32", Value::F32(f32::from_bits(0x7f80_0001))),
        ("f64", Value::F64(-0.0)),
        ("bool", Value::Bool(true)),
        ("string.empty", Value::String(String::new())),
        ("string.nul", Value::String("a\0b é 日本".into())),
        ("array.u8", Value::Array(Array::U8(vec![0, 1, 255]))),
        ("array.f32", Value::Array(Array::F32(vec![1.5, f32::INFINITY]))),
        ("array.bool", Value::Array(Array::Bool(vec![true, false]))),
        ("array.string", Value::Array(Array::String(vec!["x".into(), String::new()]))),
        ("array.empty", Value::Array(Array::I64(vec![]))),
        (
            "array.nested4",
            Value::Array(Array::Array(vec![Array::Array(vec![Array::Array(vec![Array::U16(vec![7])])])])),
        ),
        ("array.mixed", Value::Array(Array::Array(vec![Array::I32(vec![1, 2]), Array::String(vec!["a".into()])]))),
    ];
    for (k, v) in entries {
        m.insert(k, v).unwrap();
    }
    m
}

/// One tensor of every qtype, quantized from random data, plus zero-size, n-D and composite
/// tensors.
type Sample = (String, QType, Option<AffineSpec>, Vec<u64>, Vec<(PartKind, Vec<u8>)>);

fn sample_tensors() -> Vec<Sample> {
    let mut r = Rng::new(7);
    let mut out = Vec::new();
    for t in TYPES {
        let name = if t.qtype.affine_bits().is_some() { format!("{}-g64", t.name) } else { t.name.to_string() };
        let opts = QuantOptions::default();
        let (q, affine) = resolve(&name, &opts).unwrap();
        let (rows, cols) = (3usize, 512usize);
        let x: Vec<f32> = (0..rows * cols).map(|_| r.normal()).collect();
        let (_, bytes) = quantize(&name, Source::F32(&x), rows, cols, &opts).unwrap();
        out.push((format!("t.{name}"), q, affine, vec![rows as u64, cols as u64], vec![(PartKind::Data, bytes)]));
    }
    out.push(("empty.rows".into(), QType::Q4K, None, vec![0, 256], vec![(PartKind::Data, vec![])]));
    out.push(("empty.cols".into(), QType::F32, None, vec![5, 0], vec![(PartKind::Data, vec![])]));
    out.push(("nd".into(), QType::F16, None, vec![2, 3, 4], vec![(PartKind::Data, vec![1; 48])]));
    // A composite group-affine tensor: perm + outliers (2 rows × 16 cols, int4-g32 asymmetric).
    let spec = AffineSpec::new(4, Some(32), false).unwrap();
    let row_bytes = 16 * 4 / 8 + 2 + 1;
    let perm: Vec<u8> = (0..16u32).rev().flat_map(|v| v.to_le_bytes()).collect();
    let rows_ptr: Vec<u8> = [0u64, 2, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
    let cols: Vec<u8> = [1u32, 5, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let vals: Vec<u8> = [0x3c00u16, 0xbc00, 0x4000].iter().flat_map(|v| v.to_le_bytes()).collect();
    out.push((
        "composite".into(),
        QType::Int4,
        Some(spec),
        vec![2, 16],
        vec![
            (PartKind::Data, vec![0x11; 2 * row_bytes]),
            (PartKind::Perm, perm),
            (PartKind::OutlierRows, rows_ptr),
            (PartKind::OutlierCols, cols),
            (PartKind::OutlierVals, vals),
        ],
    ));
    out
}

fn write_sample(path: &Path) {
    let mut w = LbfWriter::create(path, &[]).unwrap();
    for (name, q, affine, dims, parts) in sample_tensors() {
        let parts: Vec<(PartKind, &[u8])> = parts.iter().map(|(k, b)| (*k, b.as_slice())).collect();
        w.add_tensor(&TensorSpec { name: &name, qtype: q, affine, dims: &dims }, &parts).unwrap();
    }
    w.finish(&all_metadata()).unwrap();
}

fn sample_bytes() -> Vec<u8> {
    let d = tmpdir("sample");
    let p = d.join("s.lbf");
    write_sample(&p);
    let b = std::fs::read(&p).unwrap();
    std::fs::remove_dir_all(&d).unwrap();
    b
}

#[test]
fn round_trip_every_qtype_and_metadata_type() {
    let d = tmpdir("rt");
    let p = d.join("m.lbf");
    write_sample(&p);
    let f = LbfFile::open(&p).unwrap();
    assert_eq!(canon(f.metadata()), canon(&all_metadata()));
    let want = sample_tensors();
    assert_eq!(f.tensors().len(), want.len());
    for (i, (name, q, affine, dims, parts)) in want.iter().enumerate() {
        let t = &f.tensors()[i];
        assert_eq!((&t.name, t.qtype, t.affine, &t.dims), (name, Some(*q), *affine, dims));
        let got = f.tensor_parts(i).unwrap();
        for (k, b) in parts {
            assert_eq!(got[*k as usize], b.as_slice(), "{name} {}", k.name());
            assert_eq!(got[*k as usize].as_ptr() as usize % 64, 0, "{name}: part not 64-byte aligned in memory");
        }
    }
    f.verify().unwrap();
    // Same content, same bytes.
    let p2 = d.join("m2.lbf");
    write_sample(&p2);
    assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&p2).unwrap());
    // Nothing but the two files.
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 2);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn released_pages_read_back_the_same_bytes() {
    // `release` drops a mapped range's pages from the resident set; later reads fault the same
    // bytes back in from the file. Ranges past the end, empty ones and owned bytes are ignored.
    let d = tmpdir("release");
    let p = d.join("m.lbf");
    write_sample(&p);
    let f = LbfFile::open(&p).unwrap();
    let before: Vec<Vec<u8>> = (0..f.tensors().len()).map(|i| f.tensor_data(i).unwrap().to_vec()).collect();
    let len = f.bytes().len();
    f.release(0, len);
    f.release(len, 4096);
    f.release(usize::MAX, 2);
    f.release(64, 0);
    for (i, b) in before.iter().enumerate() {
        assert_eq!(f.tensor_data(i).unwrap(), b.as_slice(), "tensor {i} after release");
    }
    f.verify().unwrap();
    let owned = LbfFile::from_bytes(sample_bytes()).unwrap();
    owned.release(0, owned.bytes().len());
    owned.verify().unwrap();
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn typed_getters() {
    let f = LbfFile::from_bytes(sample_bytes()).unwrap();
    let m = f.metadata();
    assert_eq!(m.get_int("u64").unwrap(), u64::MAX as i128);
    assert_eq!(m.get_int("i8").unwrap(), -128);
    assert_eq!(m.get_str("string.nul").unwrap(), "a\0b é 日本");
    assert!(m.get_bool("bool").unwrap());
    assert_eq!(m.get_float("f64").unwrap().to_bits(), (-0.0f64).to_bits());
    assert_eq!(m.get_array("array.u8").unwrap(), &Array::U8(vec![0, 1, 255]));
    assert!(matches!(m.get_str("u8"), Err(Error::WrongType { ref found, .. }) if found == "u8"));
    assert!(matches!(m.get_int("string.empty"), Err(Error::WrongType { .. })));
    assert!(matches!(m.get_float("u32"), Err(Error::WrongType { .. })));
    assert!(matches!(m.get_bool("missing"), Err(Error::NotFound { .. })));
    assert!(matches!(f.find("nope"), Err(Error::NotFound { .. })));
}

/// Golden files written by the independent Python reference (formats/lbf_reference.py): our
/// reader accepts them, and our writer, given what our reader read, writes the same bytes.
#[test]
fn golden_files_read_and_rewrite_identically() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../formats/vectors");
    let out = tmpdir("golden");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "lbf") {
            continue;
        }
        let f = LbfFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        f.verify().unwrap();
        let dest = out.join(path.file_name().unwrap());
        let mut w = LbfWriter::create(&dest, &[&path]).unwrap();
        for (i, t) in f.tensors().iter().enumerate() {
            let parts = f.tensor_parts(i).unwrap();
            let parts: Vec<(PartKind, &[u8])> =
                t.parts.iter().map(|p| PartKind::from_id(p.kind).unwrap()).map(|k| (k, parts[k as usize])).collect();
            let spec = TensorSpec { name: &t.name, qtype: t.qtype.unwrap(), affine: t.affine, dims: &t.dims };
            w.add_tensor(&spec, &parts).unwrap();
        }
        w.finish(f.metadata()).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&path).unwrap(), "{}", path.display());
        n += 1;
    }
    assert!(n >= 3, "golden files missing from {}", dir.display());
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn checksum_mismatch_is_lazy() {
    let mut b = sample_bytes();
    let f = LbfFile::from_bytes(b.clone()).unwrap();
    let bad = f.find("t.q4_k").unwrap();
    let off = f.tensors()[bad].parts[0].offset as usize + 5;
    b[off] ^= 0x40;
    let f = LbfFile::from_bytes(b).unwrap(); // the index is intact: opening succeeds
    assert!(matches!(f.tensor_parts(bad), Err(Error::Checksum { .. })));
    assert!(matches!(f.tensor_parts(bad), Err(Error::Checksum { .. })), "a failure is not cached as success");
    assert!(f.tensor_parts(f.find("t.q8_0").unwrap()).is_ok());
    let failures = f.verify_all();
    assert_eq!(failures.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![bad]);
    assert!(f.verify().is_err());
}

#[test]
fn nonzero_padding_fails_verify() {
    let mut b = sample_bytes();
    let f = LbfFile::from_bytes(b.clone()).unwrap();
    let (i, p) = f
        .tensors()
        .iter()
        .enumerate()
        .find_map(|(i, t)| (!(t.parts[0].offset + t.parts[0].len).is_multiple_of(64)).then_some((i, t.parts[0])))
        .expect("a part followed by padding");
    b[(p.offset + p.len) as usize] = 1;
    let f = LbfFile::from_bytes(b).unwrap();
    assert!(matches!(f.tensor_parts(i), Err(Error::Format { ref msg, .. }) if msg.contains("padding")));
}

#[test]
fn truncation_at_every_offset_is_an_error() {
    let b = small_valid();
    for n in 0..b.len() {
        let r = LbfFile::from_bytes(b[..n].to_vec());
        assert!(r.is_err(), "truncated to {n} bytes was accepted");
    }
    LbfFile::from_bytes(b).unwrap();
}

/// Flip bytes of the header and index, with and without fixing the header CRC: each outcome is
/// an error, or a file whose tensors all read (or fail cleanly) and verify.
#[test]
fn single_byte_mutations_of_header_and_index() {
    let b = small_valid();
    let f = LbfFile::from_bytes(b.clone()).unwrap();
    let index_offset = f.header().index_offset as usize;
    let positions: Vec<usize> = (0..64).chain(index_offset..b.len()).collect();
    let (mut errors, mut loads) = (0, 0);
    for &pos in &positions {
        for mask in [0x01u8, 0x80, 0xff] {
            for fix_crc in [false, true] {
                let mut m = b.clone();
                m[pos] ^= mask;
                if fix_crc && !(60..64).contains(&pos) {
                    let mut h = crc32fast::Hasher::new();
                    h.update(&m[..60]);
                    h.update(&m[index_offset.min(m.len())..]);
                    let c = h.finalize().to_le_bytes();
                    m[60..64].copy_from_slice(&c);
                }
                match LbfFile::from_bytes(m) {
                    Err(_) => errors += 1,
                    Ok(f) => {
                        loads += 1;
                        for i in 0..f.tensors().len() {
                            let _ = f.tensor_parts(i);
                        }
                        let _ = f.verify_all();
                    }
                }
            }
        }
    }
    assert!(errors > 0 && errors + loads == positions.len() * 6);
    // Without the CRC fixed, every mutation of the header or index is caught.
    for &pos in &positions {
        let mut m = b.clone();
        m[pos] ^= 0x01;
        assert!(LbfFile::from_bytes(m).is_err(), "unprotected byte {pos}");
    }
}

// ---------------------------------------------------------------------------------------------
// Hand-crafted files. `Raw` encodes exactly what it is told, then (optionally) fixes the CRC so
// the error under test is the one reported.

#[derive(Clone)]
struct Raw {
    major: u16,
    minor: u16,
    bom: u32,
    flags: u32,
    n_meta: u64,
    n_tensors: u64,
    meta: Vec<u8>,
    tensors: Vec<u8>,
    data: Vec<u8>,
    index_offset: Option<u64>,
    index_len: Option<u64>,
    file_len: Option<u64>,
    trailing: Vec<u8>,
    fix_crc: bool,
}

fn s(b: &[u8]) -> Vec<u8> {
    let mut v = (b.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(b);
    v
}

fn meta(key: &[u8], ty: u32, value: &[u8]) -> Vec<u8> {
    meta_len(key, ty, value.len() as u64, value)
}

fn meta_len(key: &[u8], ty: u32, len: u64, value: &[u8]) -> Vec<u8> {
    let mut v = s(key);
    v.extend_from_slice(&ty.to_le_bytes());
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(value);
    v
}

struct T<'a> {
    name: &'a [u8],
    qtype: u32,
    group: u32,
    flags: u32,
    n_dims: Option<u32>,
    dims: Vec<u64>,
    n_parts: Option<u32>,
    parts: Vec<(u32, u32, u64, u64)>,
}

fn f32_tensor<'a>(name: &'a [u8], offset: u64, data: &[u8]) -> T<'a> {
    T {
        name,
        qtype: 0,
        group: 0,
        flags: 0,
        n_dims: None,
        dims: vec![2, 8],
        n_parts: None,
        parts: vec![(0, crc(data), offset, data.len() as u64)],
    }
}

fn tensor(t: &T<'_>) -> Vec<u8> {
    let mut v = s(t.name);
    for x in [t.qtype, t.group, t.flags, t.n_dims.unwrap_or(t.dims.len() as u32)] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    t.dims.iter().for_each(|d| v.extend_from_slice(&d.to_le_bytes()));
    v.extend_from_slice(&t.n_parts.unwrap_or(t.parts.len() as u32).to_le_bytes());
    for (k, c, o, l) in &t.parts {
        v.extend_from_slice(&k.to_le_bytes());
        v.extend_from_slice(&c.to_le_bytes());
        v.extend_from_slice(&o.to_le_bytes());
        v.extend_from_slice(&l.to_le_bytes());
    }
    v
}

const DATA: [u8; 64] = [7; 64];

impl Raw {
    /// One f32 tensor "w" of 2 × 8 at offset 64 and one metadata entry.
    fn base() -> Raw {
        Raw {
            major: 1,
            minor: 0,
            bom: 0x0A0B_0C0D,
            flags: 0,
            n_meta: 1,
            n_tensors: 1,
            meta: meta(b"k", 4, &5u32.to_le_bytes()),
            tensors: tensor(&f32_tensor(b"w", 64, &DATA)),
            data: DATA.to_vec(),
            index_offset: None,
            index_len: None,
            file_len: None,
            trailing: vec![],
            fix_crc: true,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut data = self.data.clone();
        data.resize(data.len().div_ceil(64) * 64, 0);
        let index: Vec<u8> = [self.meta.as_slice(), &self.tensors].concat();
        let index_offset = self.index_offset.unwrap_or(64 + data.len() as u64);
        let file_len = 64 + data.len() + index.len() + self.trailing.len();
        let mut h = MAGIC.to_vec();
        h.extend_from_slice(&self.major.to_le_bytes());
        h.extend_from_slice(&self.minor.to_le_bytes());
        h.extend_from_slice(&self.bom.to_le_bytes());
        for v in [
            index_offset,
            self.index_len.unwrap_or(index.len() as u64 + self.trailing.len() as u64),
            self.n_meta,
            self.n_tensors,
            self.file_len.unwrap_or(file_len as u64),
        ] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        h.extend_from_slice(&self.flags.to_le_bytes());
        let mut c = crc32fast::Hasher::new();
        c.update(&h);
        c.update(&index);
        c.update(&self.trailing);
        h.extend_from_slice(&if self.fix_crc { c.finalize() } else { 0xdead_beef }.to_le_bytes());
        [h, data, index, self.trailing.clone()].concat()
    }
}

fn small_valid() -> Vec<u8> {
    Raw::base().bytes()
}

#[derive(Debug)]
enum Want {
    Format(&'static str),
    Version,
    Checksum,
}

fn check(name: &str, bytes: Vec<u8>, want: Want) {
    let r = LbfFile::from_bytes(bytes);
    match (&r, &want) {
        (Err(Error::Format { msg, .. }), Want::Format(sub)) if msg.contains(sub) => {}
        (Err(Error::Version(_)), Want::Version) | (Err(Error::Checksum { .. }), Want::Checksum) => {}
        _ => panic!("{name}: expected {want:?}, got {r:?}"),
    }
}

fn with(f: impl FnOnce(&mut Raw)) -> Vec<u8> {
    let mut r = Raw::base();
    f(&mut r);
    r.bytes()
}

fn with_tensor(f: impl FnOnce(&mut T<'_>)) -> Vec<u8> {
    let mut t = f32_tensor(b"w", 64, &DATA);
    f(&mut t);
    with(|r| r.tensors = tensor(&t))
}

/// The base file with a second part of `kind` and `len` zero bytes after the data.
fn extra_part(kind: u32, len: u64) -> Vec<u8> {
    with(|r| {
        let mut t = f32_tensor(b"w", 64, &DATA);
        t.parts.push((kind, crc(&vec![0; len as usize]), 128, len));
        r.tensors = tensor(&t);
        r.data.resize(64 + len as usize, 0);
    })
}

#[test]
fn bad_files_table() {
    let long_key = vec![b'k'; 257];
    let long_name = vec![b'n'; 513];
    let mut deep = Vec::new(); // MAX_DEPTH + 1 nested arrays around one u8
    for _ in 0..MAX_DEPTH {
        deep.extend_from_slice(&12u32.to_le_bytes());
        deep.extend_from_slice(&1u64.to_le_bytes());
    }
    deep.extend_from_slice(&0u32.to_le_bytes());
    deep.extend_from_slice(&1u64.to_le_bytes());
    deep.push(9);
    let deep_value = [12u32.to_le_bytes().to_vec(), 1u64.to_le_bytes().to_vec(), deep].concat();
    let two = |second_offset: u64, second_len: u64| {
        with(|r| {
            r.n_tensors = 2;
            r.data = [DATA.to_vec(), DATA.to_vec()].concat();
            let mut b = f32_tensor(b"b", second_offset, &DATA);
            b.parts[0].3 = second_len;
            r.tensors = [tensor(&f32_tensor(b"a", 64, &DATA)), tensor(&b)].concat();
        })
    };
    let cases: Vec<(&str, Vec<u8>, Want)> = vec![
        ("empty file", vec![], Want::Format("empty")),
        ("63 bytes", small_valid()[..63].to_vec(), Want::Format("shorter")),
        (
            "bad magic",
            {
                let mut b = small_valid();
                b[1] = b'X';
                b
            },
            Want::Format("magic"),
        ),
        ("version 0", with(|r| r.major = 0), Want::Version),
        ("future major", with(|r| r.major = 2), Want::Version),
        ("byte-swapped", with(|r| r.bom = 0x0D0C_0B0A), Want::Format("swapped")),
        ("garbage bom", with(|r| r.bom = 1), Want::Format("byte-order")),
        ("flags", with(|r| r.flags = 1), Want::Format("flags")),
        (
            "appended byte",
            {
                let mut b = small_valid();
                b.push(0);
                b
            },
            Want::Format("truncated or appended"),
        ),
        ("file_len lies", with(|r| r.file_len = Some(1 << 40)), Want::Format("truncated or appended")),
        ("index unaligned", with(|r| r.index_offset = Some(129)), Want::Format("multiple of 64")),
        ("index at 0", with(|r| r.index_offset = Some(0)), Want::Format("multiple of 64")),
        ("index_len u64::MAX", with(|r| r.index_len = Some(u64::MAX)), Want::Format("does not end")),
        ("header crc", with(|r| r.fix_crc = false), Want::Checksum),
        ("n_metadata u64::MAX", with(|r| r.n_meta = u64::MAX), Want::Format("metadata count")),
        ("n_tensors u64::MAX", with(|r| r.n_tensors = u64::MAX), Want::Format("tensor count")),
        ("n_tensors > entries", with(|r| r.n_tensors = 2), Want::Format("tensor count")),
        ("n_metadata > entries", with(|r| r.n_meta = 2), Want::Format("")),
        (
            "key length u64::MAX",
            with(|r| r.meta = [u64::MAX.to_le_bytes().to_vec(), vec![0; 20]].concat()),
            Want::Format("runs past"),
        ),
        (
            "key length wraps",
            with(|r| r.meta = [(u64::MAX - 7).to_le_bytes().to_vec(), vec![0; 20]].concat()),
            Want::Format("runs past"),
        ),
        ("empty key", with(|r| r.meta = meta(b"", 0, &[1])), Want::Format("empty metadata key")),
        (
            "duplicate key",
            with(|r| {
                r.n_meta = 2;
                r.meta = [meta(b"k", 0, &[1]), meta(b"k", 0, &[2])].concat()
            }),
            Want::Format("duplicate"),
        ),
        ("non-UTF-8 key", with(|r| r.meta = meta(b"\xff\xfe", 0, &[1])), Want::Format("UTF-8")),
        ("NUL in key", with(|r| r.meta = meta(b"a\0b", 0, &[1])), Want::Format("NUL")),
        ("over-long key", with(|r| r.meta = meta(&long_key, 0, &[1])), Want::Format("longer than")),
        ("unknown value type", with(|r| r.meta = meta(b"k", 13, &[1])), Want::Format("unknown metadata value type")),
        ("bool byte 2", with(|r| r.meta = meta(b"k", 10, &[2])), Want::Format("bool byte")),
        ("value_len too long", with(|r| r.meta = meta_len(b"k", 0, 1 << 40, &[1])), Want::Format("runs past")),
        ("value_len too short", with(|r| r.meta = meta_len(b"k", 4, 2, &[1, 0, 0, 0])), Want::Format("runs past")),
        ("value leaves bytes", with(|r| r.meta = meta(b"k", 0, &[1, 2])), Want::Format("unread")),
        (
            "string length past end",
            with(|r| r.meta = meta(b"k", 11, &[&500u64.to_le_bytes()[..], b"ab"].concat())),
            Want::Format("runs past"),
        ),
        (
            "string non-UTF-8",
            with(|r| r.meta = meta(b"k", 11, &[&2u64.to_le_bytes()[..], b"\xc3\x28"].concat())),
            Want::Format("UTF-8"),
        ),
        (
            "array count u64::MAX",
            with(|r| r.meta = meta(b"k", 12, &[&0u32.to_le_bytes()[..], &u64::MAX.to_le_bytes()].concat())),
            Want::Format("array count"),
        ),
        (
            "array of strings count",
            with(|r| r.meta = meta(b"k", 12, &[&11u32.to_le_bytes()[..], &3u64.to_le_bytes(), &[0; 16]].concat())),
            Want::Format("array count"),
        ),
        ("array nested too deep", with(|r| r.meta = meta(b"k", 12, &deep_value)), Want::Format("nested deeper")),
        (
            "unknown element type",
            with(|r| r.meta = meta(b"k", 12, &[&99u32.to_le_bytes()[..], &0u64.to_le_bytes()].concat())),
            Want::Format("element type"),
        ),
        (
            "bool array byte 7",
            with(|r| r.meta = meta(b"k", 12, &[&10u32.to_le_bytes()[..], &1u64.to_le_bytes(), &[7]].concat())),
            Want::Format("bool byte"),
        ),
        ("empty tensor name", with_tensor(|t| t.name = b""), Want::Format("empty tensor name")),
        ("non-UTF-8 name", with_tensor(|t| t.name = b"\x80"), Want::Format("UTF-8")),
        ("NUL in name", with_tensor(|t| t.name = b"w\0"), Want::Format("NUL")),
        (
            "over-long name",
            with(|r| r.tensors = tensor(&f32_tensor(&long_name, 64, &DATA))),
            Want::Format("longer than"),
        ),
        (
            "duplicate name",
            with(|r| {
                r.n_tensors = 2;
                r.data = [DATA.to_vec(), DATA.to_vec()].concat();
                r.tensors = [tensor(&f32_tensor(b"w", 64, &DATA)), tensor(&f32_tensor(b"w", 128, &DATA))].concat();
            }),
            Want::Format("duplicate tensor name"),
        ),
        ("unknown qtype", with_tensor(|t| t.qtype = 99), Want::Format("unknown qtype")),
        ("n_dims 0", with_tensor(|t| t.n_dims = Some(0)), Want::Format("dimensions (1 to")),
        (
            "n_dims 9",
            with_tensor(|t| {
                t.n_dims = Some(9);
                t.dims = vec![1; 9]
            }),
            Want::Format("dimensions (1 to"),
        ),
        ("n_dims u32::MAX", with_tensor(|t| t.n_dims = Some(u32::MAX)), Want::Format("dimensions (1 to")),
        ("dims (2^63-1, 2)", with_tensor(|t| t.dims = vec![(1 << 63) - 1, 2]), Want::Format("too large")),
        ("dims (2^32, 2^32, 2)", with_tensor(|t| t.dims = vec![1 << 32, 1 << 32, 2]), Want::Format("overflow")),
        ("byte size overflows", with_tensor(|t| t.dims = vec![1 << 60, 8]), Want::Format("too large")),
        (
            "row not a block multiple",
            with_tensor(|t| {
                t.qtype = qtype_id(QType::Q4_0);
                t.dims = vec![1, 48]
            }),
            Want::Format("block size"),
        ),
        (
            "int row not multiple of 8",
            with_tensor(|t| {
                t.qtype = qtype_id(QType::Int4);
                t.group = 32;
                t.dims = vec![1, 12]
            }),
            Want::Format("multiple of 8"),
        ),
        (
            "group size 100",
            with_tensor(|t| {
                t.qtype = qtype_id(QType::Int4);
                t.group = 100
            }),
            Want::Format("group size"),
        ),
        (
            "group size on q4_0",
            with_tensor(|t| {
                t.qtype = qtype_id(QType::Q4_0);
                t.group = 32
            }),
            Want::Format("takes no group size"),
        ),
        (
            "unknown tensor flags",
            with_tensor(|t| {
                t.qtype = qtype_id(QType::Int4);
                t.flags = 2
            }),
            Want::Format("flags"),
        ),
        ("n_parts 0", with_tensor(|t| t.n_parts = Some(0)), Want::Format("parts (1 to")),
        ("n_parts 9", with_tensor(|t| t.n_parts = Some(9)), Want::Format("parts (1 to")),
        ("first part not data", with_tensor(|t| t.parts[0].0 = 1), Want::Format("first part must be data")),
        ("repeated part kind", with_tensor(|t| t.parts.push((0, 0, 128, 0))), Want::Format("out of order or repeated")),
        ("unknown part kind", with_tensor(|t| t.parts.push((7, 0, 128, 0))), Want::Format("unknown part kind")),
        ("offset unaligned", with_tensor(|t| t.parts[0].2 = 65), Want::Format("layout puts it at")),
        ("offset past the end", with_tensor(|t| t.parts[0].2 = 1 << 40), Want::Format("layout puts it at")),
        ("length past the end", with_tensor(|t| t.parts[0].3 = 1 << 40), Want::Format("runs past the data section")),
        (
            "offset + length wraps",
            with_tensor(|t| t.parts[0].3 = u64::MAX - 10),
            Want::Format("runs past the data section"),
        ),
        ("length does not match shape", with_tensor(|t| t.parts[0].3 = 60), Want::Format("64 expected")),
        ("parts overlap", two(64, 64), Want::Format("layout puts it at")),
        ("parts out of order", two(0, 64), Want::Format("layout puts it at")),
        ("hole between parts", two(192, 64), Want::Format("layout puts it at")),
        ("perm on a float type", extra_part(1, 32), Want::Format("perm part needs a group-affine")),
        ("outliers incomplete", extra_part(2, 24), Want::Format("come together")),
        (
            "index bytes after entries",
            with(|r| r.tensors.extend_from_slice(&[0; 5])),
            Want::Format("after the last tensor entry"),
        ),
        (
            "index_offset after the parts' end",
            with(|r| {
                r.data.extend_from_slice(&[0; 64]);
            }),
            Want::Format("parts end at"),
        ),
    ];
    assert!(cases.len() >= 30);
    for (name, bytes, want) in cases {
        check(name, bytes, want);
    }
}

#[test]
fn zero_dimension_is_valid() {
    let b = with(|r| {
        r.data = vec![];
        r.tensors = tensor(&T { dims: vec![0, 8], parts: vec![(0, 0, 64, 0)], ..f32_tensor(b"w", 64, &DATA) });
    });
    let f = LbfFile::from_bytes(b).unwrap();
    assert_eq!(f.tensor_data(0).unwrap(), &[] as &[u8]);
    assert_eq!(f.tensors()[0].bits_per_weight(), 0.0);
}

#[test]
fn part_contents_are_checked_on_read() {
    // int4-g32 asym 1 × 8: row = 4 code bytes + 2 scale bytes + 1 zero byte.
    let data = [0u8; 7];
    let make = |perm: &[u32], rows_ptr: &[u64], cols: &[u32]| {
        let perm: Vec<u8> = perm.iter().flat_map(|v| v.to_le_bytes()).collect();
        let rp: Vec<u8> = rows_ptr.iter().flat_map(|v| v.to_le_bytes()).collect();
        let cl: Vec<u8> = cols.iter().flat_map(|v| v.to_le_bytes()).collect();
        let vals = vec![0u8; cols.len() * 2];
        let mut all = data.to_vec();
        let mut parts = vec![(0u32, crc(&data), 64u64, 7u64)];
        let mut pos = 64 + 7u64;
        for (k, b) in [(1u32, &perm), (2, &rp), (3, &cl), (4, &vals)] {
            let off = pos.div_ceil(64) * 64;
            all.resize((off - 64) as usize, 0);
            all.extend_from_slice(b);
            parts.push((k, crc(b), off, b.len() as u64));
            pos = off + b.len() as u64;
        }
        with(|r| {
            r.data = all;
            r.tensors = tensor(&T {
                name: b"q",
                qtype: qtype_id(QType::Int4),
                group: 32,
                flags: 0,
                n_dims: None,
                dims: vec![1, 8],
                n_parts: None,
                parts,
            });
        })
    };
    let ok = LbfFile::from_bytes(make(&[7, 6, 5, 4, 3, 2, 1, 0], &[0, 2], &[1, 6])).unwrap();
    ok.tensor_parts(0).unwrap();
    for (what, b) in [
        ("repeated perm entry", make(&[0, 0, 2, 3, 4, 5, 6, 7], &[0, 2], &[1, 6])),
        ("perm entry out of range", make(&[0, 1, 2, 3, 4, 5, 6, 8], &[0, 2], &[1, 6])),
        ("row pointers not ending at nnz", make(&[0, 1, 2, 3, 4, 5, 6, 7], &[0, 1], &[1, 6])),
        ("outlier column out of range", make(&[0, 1, 2, 3, 4, 5, 6, 7], &[0, 2], &[1, 8])),
        ("outlier columns not increasing", make(&[0, 1, 2, 3, 4, 5, 6, 7], &[0, 2], &[6, 1])),
    ] {
        let f = LbfFile::from_bytes(b.clone()).unwrap_or_else(|e| panic!("{what}: the index is valid, got {e}"));
        assert!(matches!(f.tensor_parts(0), Err(Error::Format { offset, .. }) if offset > 64), "{what}");
        // verify() checks the same, and does not let a later read skip it (found by the fuzzer).
        let f = LbfFile::from_bytes(b).unwrap();
        assert_eq!(f.verify_all().len(), 1, "{what}");
        assert!(f.tensor_parts(0).is_err(), "{what}: read after verify");
    }
}

#[test]
fn newer_minor_version_is_read_with_unknowns_reported() {
    let b = with(|r| {
        r.minor = 7;
        r.flags = 0x10;
        r.n_meta = 2;
        r.meta = [
            meta(b"future", 42, &[1, 2, 3]),
            meta(b"k", 12, &[&99u32.to_le_bytes()[..], &0u64.to_le_bytes()].concat()),
        ]
        .concat();
        r.tensors = tensor(&T { qtype: 200, ..f32_tensor(b"w", 64, &DATA) });
    });
    let f = LbfFile::from_bytes(b).unwrap();
    assert!(matches!(f.metadata().get("future"), Some(Value::Unknown { type_id: 42, bytes }) if bytes == &[1, 2, 3]));
    assert!(matches!(f.metadata().get("k"), Some(Value::Unknown { type_id: 12, .. })));
    assert_eq!(f.tensors()[0].qtype, None);
    assert!(matches!(f.tensor_parts(0), Err(Error::Unsupported(_))));
    f.verify().unwrap(); // checksums still cover it
                         // The same file as minor 0: unknown ids are corruption.
    check("unknown qtype, same minor", with_tensor(|t| t.qtype = 200), Want::Format("unknown qtype"));
}

#[test]
fn writer_refuses_bad_input_and_leaves_nothing() {
    let d = tmpdir("writer");
    let dest = d.join("out.lbf");
    std::fs::write(&dest, b"old").unwrap();
    let spec = |name| TensorSpec { name, qtype: QType::F32, affine: None, dims: &[2, 8] };
    {
        let mut w = LbfWriter::create(&dest, &[]).unwrap();
        w.add_tensor(&spec("a"), &[(PartKind::Data, &[0u8; 64])]).unwrap();
        let e = w.add_tensor(&spec("a"), &[(PartKind::Data, &[0u8; 64])]).unwrap_err();
        assert!(e.to_string().contains("duplicate"), "{e}");
        let e = w.add_tensor(&spec("b"), &[(PartKind::Data, &[0u8; 60])]).unwrap_err();
        assert!(matches!(e, Error::Shape(_)), "{e}");
        let e = w.add_tensor(&spec(""), &[(PartKind::Data, &[0u8; 64])]).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        let e = w.add_tensor(&spec("c"), &[(PartKind::Perm, &[0u8; 32])]).unwrap_err();
        assert!(e.to_string().contains("data part is required"), "{e}");
        // dropped without finish
    }
    assert_eq!(std::fs::read(&dest).unwrap(), b"old");
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1, "a temporary file was left behind");
    let mut m = Metadata::new();
    assert!(m.insert("", Value::U8(1)).is_err());
    assert!(m.insert("a\0", Value::U8(1)).is_err());
    m.insert("a", Value::U8(1)).unwrap();
    assert!(m.insert("a", Value::U8(1)).is_err());
    let deep = (0..MAX_DEPTH).fold(Array::U8(vec![1]), |a, _| Array::Array(vec![a]));
    assert!(m.insert("deep", Value::Array(deep)).is_err());
    // Refuses to overwrite one of its inputs, even through another path.
    let alias = d.join(".").join("out.lbf");
    let e = LbfWriter::create(&dest, &[&alias]).unwrap_err();
    assert!(e.to_string().contains("also an input"), "{e}");
    assert!(LbfWriter::create(&d, &[]).is_err(), "a folder as destination");
    assert!(matches!(LbfWriter::create(d.join("missing/x.lbf"), &[]), Err(Error::Io { .. })));
    // A finished writer replaces the old file atomically.
    let mut w = LbfWriter::create(&dest, &[]).unwrap();
    w.add_tensor(&spec("a"), &[(PartKind::Data, &[0u8; 64])]).unwrap();
    w.finish(&m).unwrap();
    assert_eq!(LbfFile::open(&dest).unwrap().tensors().len(), 1);
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn open_reports_io_errors() {
    assert!(matches!(LbfFile::open("/nonexistent/x.lbf"), Err(Error::Io { errno: Some(2), .. })));
}

fn arb_array(depth: u32) -> BoxedStrategy<Array> {
    let leaf = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..20).prop_map(Array::U8),
        proptest::collection::vec(any::<i64>(), 0..8).prop_map(Array::I64),
        proptest::collection::vec(any::<u32>().prop_map(f32::from_bits), 0..8).prop_map(Array::F32),
        proptest::collection::vec(any::<bool>(), 0..8).prop_map(Array::Bool),
        proptest::collection::vec(".{0,12}", 0..5).prop_map(Array::String),
    ];
    if depth == 0 {
        leaf.boxed()
    } else {
        prop_oneof![leaf, proptest::collection::vec(arb_array(depth - 1), 0..3).prop_map(Array::Array)].boxed()
    }
}

fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u8>().prop_map(Value::U8),
        any::<i16>().prop_map(Value::I16),
        any::<u64>().prop_map(Value::U64),
        any::<u64>().prop_map(|b| Value::F64(f64::from_bits(b))),
        any::<bool>().prop_map(Value::Bool),
        ".{0,40}".prop_map(Value::String),
        arb_array(3).prop_map(Value::Array),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random metadata and f32/q8_0 tensors with random (possibly zero) dimensions round-trip,
    /// and the bytes are canonical (reading and rewriting gives the same file).
    #[test]
    fn round_trip_random(
        meta in proptest::collection::vec(("[a-z.]{1,12}", arb_value()), 0..12),
        shapes in proptest::collection::vec((proptest::collection::vec(0u64..5, 0..3), 0u64..3, any::<bool>()), 0..10),
    ) {
        let mut m = Metadata::new();
        for (k, v) in meta {
            let _ = m.insert(k, v); // duplicates are refused; keep the first
        }
        let d = tmpdir("prop");
        let p = d.join("p.lbf");
        let mut w = LbfWriter::create(&p, &[]).unwrap();
        let mut want = Vec::new();
        for (i, (lead, blocks, quant)) in shapes.iter().enumerate() {
            let (q, cols) = if *quant { (QType::Q8_0, blocks * 32) } else { (QType::F32, *blocks) };
            let dims: Vec<u64> = lead.iter().copied().chain([cols]).collect();
            let n = dims.iter().product::<u64>() as usize;
            let bytes: Vec<u8> = (0..n * if *quant { 34 } else { 128 } / 32).map(|j| (i * 31 + j) as u8).collect();
            let name = format!("t{i}");
            w.add_tensor(&TensorSpec { name: &name, qtype: q, affine: None, dims: &dims }, &[(PartKind::Data, &bytes)]).unwrap();
            want.push((name, dims, bytes));
        }
        w.finish(&m).unwrap();
        let f = LbfFile::open(&p).unwrap();
        // NaN payloads compare by bits: compare the encodings.
        prop_assert_eq!(canon(f.metadata()), canon(&m));
        for (i, (name, dims, bytes)) in want.iter().enumerate() {
            prop_assert_eq!(&f.tensors()[i].name, name);
            prop_assert_eq!(&f.tensors()[i].dims, dims);
            prop_assert_eq!(f.tensor_data(i).unwrap(), bytes.as_slice());
        }
        f.verify().unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }
}

/// A file with one int8-row-sym tensor "a" of 1 × 8 (10 data bytes) and the parts `extra`
/// ((kind, bytes), after data), written by hand so the writer's checks are bypassed.
fn int8_with_parts(qtype: QType, group: u32, flags: u32, extra: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let data = [128u8; 10];
    let mut all = data.to_vec();
    let mut parts = vec![(0u32, crc(&data), 64u64, 10u64)];
    let mut pos = 64 + 10u64;
    for (k, b) in extra {
        let off = pos.div_ceil(64) * 64;
        all.resize((off - 64) as usize, 0);
        all.extend_from_slice(b);
        parts.push((*k, crc(b), off, b.len() as u64));
        pos = off + b.len() as u64;
    }
    with(|r| {
        r.minor = 2;
        r.data = all;
        r.tensors = tensor(&T {
            name: b"a",
            qtype: qtype_id(qtype),
            group,
            flags,
            n_dims: None,
            dims: vec![1, 8],
            n_parts: None,
            parts,
        });
    })
}

#[test]
fn act_quant_part_round_trips_and_is_checked() {
    use lowbit_core::matmul::ActQuant;
    let d = tmpdir("act");
    let dest = d.join("w8a8.lbf");
    let x: Vec<f32> = (0..4 * 16).map(|i| (i as f32 * 0.37).sin()).collect();
    let (l, bytes) = quantize("int8-row-sym", Source::F32(&x), 4, 16, &QuantOptions::default()).unwrap();
    let spec = |name| TensorSpec { name, qtype: l.qtype, affine: l.affine, dims: &[4, 16] };
    let act = ActQuant::Static(0.125).to_le_bytes();
    let mut w = LbfWriter::create(&dest, &[]).unwrap();
    w.add_tensor(&spec("plain"), &[(PartKind::Data, &bytes)]).unwrap();
    w.add_tensor(&spec("w8a8"), &[(PartKind::Data, &bytes), (PartKind::ActQuant, &act)]).unwrap();
    w.finish(&Metadata::new()).unwrap();
    let f = LbfFile::open(&dest).unwrap();
    assert_eq!((f.header().major, f.header().minor), (1, 2), "act_quant makes a 1.2 file");
    assert_eq!(f.tensor_parts(1).unwrap()[PartKind::ActQuant as usize], &act);
    assert!(f.tensor_parts(0).unwrap()[PartKind::ActQuant as usize].is_empty());
    f.verify().unwrap();

    // The writer refuses act_quant where it is undefined, and bad contents; nothing is written.
    let mut w = LbfWriter::create(d.join("bad.lbf"), &[]).unwrap();
    let (lq, q4) = quantize("q4_0", Source::F32(&x[..32]), 1, 32, &QuantOptions::default()).unwrap();
    let s4 = TensorSpec { name: "q4", qtype: lq.qtype, affine: None, dims: &[1, 32] };
    let e = w.add_tensor(&s4, &[(PartKind::Data, &q4), (PartKind::ActQuant, &act)]).unwrap_err();
    assert!(matches!(&e, Error::InvalidParameter(m) if m.contains("int8-row-sym")), "{e}");
    let perm: Vec<u8> = (0..16u32).flat_map(|v| v.to_le_bytes()).collect();
    let e = w
        .add_tensor(&spec("p"), &[(PartKind::Data, &bytes), (PartKind::Perm, &perm), (PartKind::ActQuant, &act)])
        .unwrap_err();
    assert!(matches!(&e, Error::InvalidParameter(m) if m.contains("permutation")), "{e}");
    let bad = [3u8, 0, 0, 0, 0, 0, 0, 0];
    let e = w.add_tensor(&spec("m"), &[(PartKind::Data, &bytes), (PartKind::ActQuant, &bad)]).unwrap_err();
    assert!(matches!(&e, Error::InvalidParameter(m) if m.contains("unknown mode 3")), "{e}");
    let e = w.add_tensor(&spec("l"), &[(PartKind::Data, &bytes), (PartKind::ActQuant, &act[..4])]).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("act_quant is 4 bytes")), "{e}");
    drop(w);
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1, "only the good file");
    std::fs::remove_dir_all(&d).unwrap();

    // The reader: structure at open, content at first read (and in verify).
    let dynamic = ActQuant::PerToken.to_le_bytes().to_vec();
    let f = LbfFile::from_bytes(int8_with_parts(QType::Int8, 0, 1, &[(5, dynamic.clone())])).unwrap();
    f.tensor_parts(0).unwrap();
    check("act on f32", extra_part(5, 8), Want::Format("int8-row-sym"));
    check("act on asymmetric int8", int8_with_parts(QType::Int8, 0, 0, &[(5, dynamic.clone())]), Want::Format("int8"));
    check("act of 4 bytes", int8_with_parts(QType::Int8, 0, 1, &[(5, vec![2, 0, 0, 0])]), Want::Format("act_quant"));
    let perm = (0..8u32).flat_map(|v| v.to_le_bytes()).collect();
    check("act with perm", int8_with_parts(QType::Int8, 0, 1, &[(1, perm), (5, dynamic)]), Want::Format("permutation"));
    for (what, b) in [
        ("mode 0", [0u8; 8]),
        ("static step 0", [1, 0, 0, 0, 0, 0, 0, 0]),
        ("dynamic step", [2, 0, 0, 0, 0, 0, 0x80, 0x3f]),
    ] {
        let f = LbfFile::from_bytes(int8_with_parts(QType::Int8, 0, 1, &[(5, b.to_vec())])).unwrap();
        assert!(
            matches!(f.tensor_parts(0), Err(Error::Format { offset: 128, msg }) if msg.contains("act_quant")),
            "{what}"
        );
        assert_eq!(
            LbfFile::from_bytes(int8_with_parts(QType::Int8, 0, 1, &[(5, b.to_vec())])).unwrap().verify_all().len(),
            1
        );
    }
}
