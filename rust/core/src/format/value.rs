//! Typed metadata values (§4): encoding, bounded decoding, and the typed getters.

use std::collections::HashMap;

use super::read::Cursor;
use super::{check_name, MAX_DEPTH, MAX_KEY_LEN};
use crate::error::{Error, Result};

/// A metadata value. `Unknown` holds a value of a type id from a newer minor version (§9).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Array),
    Unknown { type_id: u32, bytes: Vec<u8> },
}

/// A homogeneous array; the variant is the element type (so an empty array keeps its type).
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<Array>),
}

/// Value type ids (§4).
const TYPE_NAMES: [&str; 13] =
    ["u8", "i8", "u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64", "bool", "string", "array"];
const T_BOOL: u32 = 10;
const T_STRING: u32 = 11;
const T_ARRAY: u32 = 12;

/// Smallest encoding of one array element of a type: scalars their size, a string its length
/// field, an array its element type and count (§7).
fn min_elem_len(type_id: u32) -> u64 {
    match type_id {
        0 | 1 | T_BOOL => 1,
        2 | 3 => 2,
        4 | 5 | 8 => 4,
        6 | 7 | 9 | T_STRING => 8,
        _ => 12,
    }
}

macro_rules! scalar_arrays {
    ($m:ident) => {
        $m! { U8 u8 0, I8 i8 1, U16 u16 2, I16 i16 3, U32 u32 4, I32 i32 5, U64 u64 6, I64 i64 7, F32 f32 8, F64 f64 9 }
    };
}

impl Array {
    /// The element type id.
    pub fn elem_type(&self) -> u32 {
        macro_rules! ids { ($($v:ident $t:ident $id:literal),*) => { match self {
            $(Array::$v(_) => $id,)*
            Array::Bool(_) => T_BOOL, Array::String(_) => T_STRING, Array::Array(_) => T_ARRAY,
        } } }
        scalar_arrays!(ids)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        macro_rules! lens { ($($v:ident $t:ident $id:literal),*) => { match self {
            $(Array::$v(a) => a.len(),)*
            Array::Bool(a) => a.len(), Array::String(a) => a.len(), Array::Array(a) => a.len(),
        } } }
        scalar_arrays!(lens)
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Nesting depth: 1 for an array of scalars.
    pub fn depth(&self) -> usize {
        match self {
            Array::Array(a) => 1 + a.iter().map(Array::depth).max().unwrap_or(0),
            _ => 1,
        }
    }

    /// The element type's name (`"u8"`, `"string"`, `"array"`).
    pub fn elem_type_name(&self) -> &'static str {
        TYPE_NAMES[self.elem_type() as usize]
    }

    /// `"array[u8]"`, `"array[array[string]]"`.
    pub fn type_name(&self) -> String {
        match self {
            Array::Array(a) => {
                format!("array[{}]", a.first().map_or("array[?]".to_string(), Array::type_name))
            }
            _ => format!("array[{}]", self.elem_type_name()),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.elem_type().to_le_bytes());
        out.extend_from_slice(&(self.len() as u64).to_le_bytes());
        macro_rules! enc { ($($v:ident $t:ident $id:literal),*) => { match self {
            $(Array::$v(a) => a.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),)*
            Array::Bool(a) => out.extend(a.iter().map(|&b| u8::from(b))),
            Array::String(a) => a.iter().for_each(|s| encode_str(s, out)),
            Array::Array(a) => a.iter().for_each(|x| x.encode(out)),
        } } }
        scalar_arrays!(enc)
    }

    /// Decode an array at depth `depth` (1 = a top-level array value). `None`: an element type
    /// this reader does not know, in a file of a newer minor version (an error otherwise).
    fn decode(c: &mut Cursor<'_>, depth: usize, newer_minor: bool) -> Result<Option<Array>> {
        if depth > MAX_DEPTH {
            return Err(c.err(format!("arrays nested deeper than {MAX_DEPTH}")));
        }
        let at = c.pos();
        let elem = c.u32()?;
        if elem > T_ARRAY {
            return if newer_minor {
                Ok(None)
            } else {
                Err(c.err_at(at, format!("unknown array element type {elem}")))
            };
        }
        let n = c.u64()?;
        if n > c.remaining() / min_elem_len(elem) {
            return Err(c.err(format!("array count {n} exceeds the {} bytes left", c.remaining())));
        }
        let n = n as usize;
        macro_rules! dec { ($($v:ident $t:ident $id:literal),*) => { match elem {
            $($id => {
                let bytes = c.take(n as u64 * std::mem::size_of::<$t>() as u64, "array")?;
                Array::$v(bytes.chunks_exact(std::mem::size_of::<$t>())
                    .map(|b| <$t>::from_le_bytes(b.try_into().expect("element size"))).collect())
            })*
            T_BOOL => Array::Bool((0..n).map(|_| c.bool()).collect::<Result<_>>()?),
            T_STRING => Array::String((0..n).map(|_| c.string("string")).collect::<Result<_>>()?),
            _ => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    let Some(a) = Array::decode(c, depth + 1, newer_minor)? else { return Ok(None) };
                    v.push(a);
                }
                Array::Array(v)
            }
        } } }
        Ok(Some(scalar_arrays!(dec)))
    }
}

pub(crate) fn encode_str(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Value {
    /// The type id (§4).
    pub fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::U64(_) => 6,
            Value::I64(_) => 7,
            Value::F32(_) => 8,
            Value::F64(_) => 9,
            Value::Bool(_) => T_BOOL,
            Value::String(_) => T_STRING,
            Value::Array(_) => T_ARRAY,
            Value::Unknown { type_id, .. } => *type_id,
        }
    }

    /// `"u32"`, `"string"`, `"array[f32]"`, `"unknown(13)"`.
    pub fn type_name(&self) -> String {
        match self {
            Value::Array(a) => a.type_name(),
            Value::Unknown { type_id, .. } => format!("unknown({type_id})"),
            v => TYPE_NAMES[v.type_id() as usize].to_string(),
        }
    }

    /// Append the value's encoding (without type id and length).
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::U8(v) => out.push(*v),
            Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::Bool(v) => out.push(u8::from(*v)),
            Value::String(s) => encode_str(s, out),
            Value::Array(a) => a.encode(out),
            Value::Unknown { bytes, .. } => out.extend_from_slice(bytes),
        }
    }

    /// Decode a value of `type_id` that must fill exactly the cursor (`value_len` bytes).
    /// `newer_minor`: an unknown type id is kept as [`Value::Unknown`] instead of an error.
    pub(crate) fn decode(c: &mut Cursor<'_>, type_id: u32, newer_minor: bool) -> Result<Value> {
        macro_rules! num {
            ($t:ty, $v:ident) => {{
                let b = c.take(std::mem::size_of::<$t>() as u64, "value")?;
                Value::$v(<$t>::from_le_bytes(b.try_into().expect("value size")))
            }};
        }
        let v = match type_id {
            0 => num!(u8, U8),
            1 => num!(i8, I8),
            2 => num!(u16, U16),
            3 => num!(i16, I16),
            4 => num!(u32, U32),
            5 => num!(i32, I32),
            6 => num!(u64, U64),
            7 => num!(i64, I64),
            8 => num!(f32, F32),
            9 => num!(f64, F64),
            T_BOOL => Value::Bool(c.bool()?),
            T_STRING => Value::String(c.string("string")?),
            T_ARRAY => {
                let start = c.pos();
                match Array::decode(c, 1, newer_minor)? {
                    Some(a) => Value::Array(a),
                    // §9: an element type from a newer minor makes the whole value unknown.
                    None => {
                        c.rewind(start);
                        Value::Unknown { type_id: T_ARRAY, bytes: c.take(c.remaining(), "value")?.to_vec() }
                    }
                }
            }
            t if newer_minor => Value::Unknown { type_id: t, bytes: c.take(c.remaining(), "value")?.to_vec() },
            t => return Err(c.err(format!("unknown metadata value type {t}"))),
        };
        if c.remaining() != 0 {
            return Err(c.err(format!("value of type {} leaves {} of its bytes unread", v.type_name(), c.remaining())));
        }
        Ok(v)
    }
}

/// Ordered metadata: keys in file order, unique, with typed getters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    /// Empty metadata.
    pub fn new() -> Metadata {
        Metadata::default()
    }

    /// Add an entry; the key must be valid (§4) and new, arrays at most [`MAX_DEPTH`] deep.
    pub fn insert(&mut self, key: impl Into<String>, value: Value) -> Result<()> {
        let key = key.into();
        check_name("metadata key", &key, MAX_KEY_LEN).map_err(Error::InvalidParameter)?;
        if self.index.contains_key(&key) {
            return Err(Error::InvalidParameter(format!("duplicate metadata key {key:?}")));
        }
        if let Value::Array(a) = &value {
            if a.depth() > MAX_DEPTH {
                return Err(Error::InvalidParameter(format!("metadata {key:?}: arrays nest at most {MAX_DEPTH} deep")));
            }
        }
        if let Value::Unknown { type_id, .. } = &value {
            return Err(Error::InvalidParameter(format!(
                "metadata {key:?}: cannot write unknown value type {type_id}"
            )));
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        Ok(())
    }

    /// Entries in file order.
    pub fn entries(&self) -> &[(String, Value)] {
        &self.entries
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value of a key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    fn typed<'a, T>(&'a self, key: &str, expected: &'static str, f: impl Fn(&'a Value) -> Option<T>) -> Result<T> {
        let v = self.get(key).ok_or_else(|| Error::NotFound { what: "metadata key", name: key.to_string() })?;
        f(v).ok_or_else(|| Error::WrongType { key: key.to_string(), expected, found: v.type_name() })
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.typed(key, "string", |v| match v {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// A boolean value.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.typed(key, "bool", |v| match v {
            Value::Bool(b) => Some(*b),
            _ => None,
        })
    }

    /// An integer value of any integer type, if it fits in i128 (always).
    pub fn get_int(&self, key: &str) -> Result<i128> {
        self.typed(key, "an integer", |v| match *v {
            Value::U8(x) => Some(x.into()),
            Value::I8(x) => Some(x.into()),
            Value::U16(x) => Some(x.into()),
            Value::I16(x) => Some(x.into()),
            Value::U32(x) => Some(x.into()),
            Value::I32(x) => Some(x.into()),
            Value::U64(x) => Some(x.into()),
            Value::I64(x) => Some(x.into()),
            _ => None,
        })
    }

    /// A floating-point value (f32 or f64).
    pub fn get_float(&self, key: &str) -> Result<f64> {
        self.typed(key, "a float", |v| match *v {
            Value::F32(x) => Some(x.into()),
            Value::F64(x) => Some(x),
            _ => None,
        })
    }

    /// An array value.
    pub fn get_array(&self, key: &str) -> Result<&Array> {
        self.typed(key, "an array", |v| match v {
            Value::Array(a) => Some(a),
            _ => None,
        })
    }

    /// Encode all entries (§4) into `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let mut value = Vec::new();
        for (k, v) in &self.entries {
            encode_str(k, out);
            value.clear();
            v.encode(&mut value);
            out.extend_from_slice(&v.type_id().to_le_bytes());
            out.extend_from_slice(&(value.len() as u64).to_le_bytes());
            out.extend_from_slice(&value);
        }
    }

    /// Insert without the writer's checks (the reader has checked the key already).
    pub(crate) fn push_read(&mut self, key: String, value: Value) -> std::result::Result<(), String> {
        if self.index.contains_key(&key) {
            return Err(format!("duplicate metadata key {key:?}"));
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        Ok(())
    }
}
