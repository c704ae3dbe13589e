//! The LBF reader: maps a file, validates everything it reads before use (§7), and hands out
//! zero-copy part views whose CRC-32 is checked the first time a tensor is read.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};

use rayon::prelude::*;

use super::value::{Metadata, Value};
use super::{
    affine_from_fields, align_up, check_name, check_part_contents, check_part_lengths, qtype_from_id, rows_of,
    PartInfo, PartKind, TensorInfo, BYTE_ORDER, HEADER_LEN, MAGIC, MAX_DIMS, MAX_KEY_LEN, MAX_NAME_LEN, MAX_PARTS,
    MIN_METADATA_ENTRY, MIN_TENSOR_ENTRY, PART_RECORD_LEN, VERSION_MAJOR, VERSION_MINOR,
};
use crate::error::{Error, Result};

/// A bounds-checked reader over the index bytes. Every read checks the bytes left first, so a
/// hostile length can never read past the index nor allocate more than it holds.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Absolute file offset of `buf[0]`, for error messages.
    base: u64,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8], base: u64) -> Cursor<'a> {
        Cursor { buf, pos: 0, base }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    pub(crate) fn err(&self, msg: String) -> Error {
        self.err_at(self.pos, msg)
    }

    pub(crate) fn err_at(&self, pos: usize, msg: String) -> Error {
        Error::Format { offset: self.base + pos as u64, msg }
    }

    pub(crate) fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!("{what} of {n} bytes runs past the end ({} bytes left)", self.remaining())));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    /// A sub-cursor over the next `n` bytes.
    pub(crate) fn sub(&mut self, n: u64, what: &str) -> Result<Cursor<'a>> {
        let base = self.base + self.pos as u64;
        Ok(Cursor::new(self.take(n, what)?, base))
    }

    pub(crate) fn rewind(&mut self, pos: usize) {
        self.pos = pos;
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, "u32")?.try_into().expect("4 bytes")))
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, "u64")?.try_into().expect("8 bytes")))
    }

    pub(crate) fn bool(&mut self) -> Result<bool> {
        match self.take(1, "bool")?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.err_at(self.pos - 1, format!("bool byte is {b}, not 0 or 1"))),
        }
    }

    pub(crate) fn string(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let n = self.u64()?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.err_at(at, format!("{what} is not valid UTF-8")))
    }
}

/// The fixed header (§3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub major: u16,
    pub minor: u16,
    pub index_offset: u64,
    pub index_len: u64,
    pub n_metadata: u64,
    pub n_tensors: u64,
    pub file_len: u64,
    pub flags: u32,
    pub header_crc: u32,
}

/// The bytes of a file: a read-only map, or owned bytes (tests, fuzzing).
#[derive(Debug)]
enum Storage {
    Map(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Map(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// Checksum state of a tensor (lazy verification).
const UNCHECKED: u8 = 0;
const GOOD: u8 = 1;

/// An open LBF file. `Sync`: any number of threads may read tensors at once.
#[derive(Debug)]
pub struct LbfFile {
    storage: Storage,
    header: Header,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    checked: Vec<AtomicU8>,
}

fn fmt_err(offset: u64, msg: impl Into<String>) -> Error {
    Error::Format { offset, msg: msg.into() }
}

impl LbfFile {
    /// Map and validate a file. The map is read-only; see `formats/LBF.md` §10 for what happens
    /// if another process truncates the file while it is open.
    pub fn open(path: impl AsRef<Path>) -> Result<LbfFile> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path.display(), &e))?;
        let len = file.metadata().map_err(|e| Error::io(path.display(), &e))?.len();
        if len < HEADER_LEN {
            return Err(too_short(len).with_path(path));
        }
        // SAFETY: the map is read-only and every access is bounds-checked against its length.
        // Another process truncating the file makes accesses to lost pages fault (SIGBUS); this is
        // inherent to memory maps and documented in LBF.md §10. lowbit's writer never modifies a
        // file in place.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path.display(), &e))?;
        LbfFile::parse(Storage::Map(map)).map_err(|e| e.with_path(path))
    }

    /// Validate a file held in memory (tests, fuzzing, small files).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<LbfFile> {
        if (bytes.len() as u64) < HEADER_LEN {
            return Err(too_short(bytes.len() as u64));
        }
        LbfFile::parse(Storage::Owned(bytes))
    }

    fn parse(storage: Storage) -> Result<LbfFile> {
        let bytes = storage.bytes();
        let header = parse_header(bytes)?;
        let newer_minor = is_newer_minor(header.minor);
        let index = &bytes[header.index_offset as usize..];
        let mut c = Cursor::new(index, header.index_offset);

        if header.n_metadata > c.remaining() / MIN_METADATA_ENTRY {
            return Err(fmt_err(32, format!("metadata count {} exceeds what the index can hold", header.n_metadata)));
        }
        let mut metadata = Metadata::new();
        for _ in 0..header.n_metadata {
            let at = c.pos();
            let key = c.string("metadata key")?;
            check_name("metadata key", &key, MAX_KEY_LEN).map_err(|m| c.err_at(at, m))?;
            let type_id = c.u32()?;
            let len = c.u64()?;
            let mut vc = c.sub(len, "metadata value")?;
            let value = Value::decode(&mut vc, type_id, newer_minor)?;
            metadata.push_read(key, value).map_err(|m| c.err_at(at, m))?;
        }

        if header.n_tensors > c.remaining() / MIN_TENSOR_ENTRY {
            return Err(fmt_err(40, format!("tensor count {} exceeds what the index can hold", header.n_tensors)));
        }
        let mut tensors = Vec::with_capacity(header.n_tensors as usize);
        let mut by_name = HashMap::with_capacity(header.n_tensors as usize);
        let mut next = HEADER_LEN; // where the next part must start (§2)
        for i in 0..header.n_tensors as usize {
            let t = parse_tensor(&mut c, &mut next, header.index_offset, newer_minor)?;
            if by_name.insert(t.name.clone(), i).is_some() {
                return Err(c.err(format!("duplicate tensor name {:?}", t.name)));
            }
            tensors.push(t);
        }
        if c.remaining() != 0 {
            return Err(c.err(format!("{} bytes after the last tensor entry", c.remaining())));
        }
        let data_end = align_up(next).ok_or_else(|| fmt_err(16, "data section overflows"))?;
        if data_end != header.index_offset {
            return Err(fmt_err(
                16,
                format!("index_offset is {} but the parts end at {next} (aligned {data_end})", header.index_offset),
            ));
        }
        let checked = (0..tensors.len()).map(|_| AtomicU8::new(UNCHECKED)).collect();
        Ok(LbfFile { storage, header, metadata, tensors, by_name, checked })
    }

    /// The fixed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The tensors, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Index of a tensor by name.
    pub fn find(&self, name: &str) -> Result<usize> {
        self.by_name.get(name).copied().ok_or_else(|| Error::NotFound { what: "tensor", name: name.to_string() })
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    /// The bytes of a part of this file's index, without checking their checksum.
    fn part_bytes_unchecked(&self, p: &PartInfo) -> &[u8] {
        &self.bytes()[p.offset as usize..(p.offset + p.len) as usize]
    }

    /// The parts of tensor `i` by kind (empty slices for absent kinds), after checking its
    /// checksums (once) and the content of its perm, outlier and act_quant parts. Fails for a tensor of an
    /// unknown qtype or part kind (a newer minor version).
    pub fn tensor_parts(&self, i: usize) -> Result<[&[u8]; PartKind::COUNT]> {
        let t = self.tensors.get(i).ok_or_else(|| {
            Error::InvalidParameter(format!("tensor index {i} out of range (the file has {})", self.tensors.len()))
        })?;
        if t.qtype.is_none() {
            return Err(Error::Unsupported(format!(
                "tensor {:?} has qtype id {}, which this version of lowbit does not know (file format {}.{})",
                t.name, t.qtype_id, self.header.major, self.header.minor
            )));
        }
        let mut parts: [&[u8]; PartKind::COUNT] = [&[]; PartKind::COUNT];
        for p in &t.parts {
            let Some(kind) = PartKind::from_id(p.kind) else {
                return Err(Error::Unsupported(format!(
                    "tensor {:?} has a part of kind {}, which this version of lowbit does not know",
                    t.name, p.kind
                )));
            };
            parts[kind as usize] = self.part_bytes_unchecked(p);
        }
        if self.checked[i].load(Ordering::Acquire) != GOOD {
            self.check_tensor(i)?;
            check_part_contents(t, &parts)?;
            self.checked[i].store(GOOD, Ordering::Release);
        }
        Ok(parts)
    }

    /// A hint that the file's bytes `offset..offset + len` will not be read soon (the engine
    /// calls it for a tensor it has copied, e.g. packed): on a mapped file their pages leave the
    /// process's resident set, and a later read maps them again from the file, with the same
    /// contents. Nothing for owned bytes; a failed hint is ignored.
    pub fn release(&self, offset: usize, len: usize) {
        if let Storage::Map(m) = &self.storage {
            if offset.checked_add(len).is_some_and(|end| end <= m.len()) && len > 0 {
                // SAFETY: the map is read-only and shared with the file, so MADV_DONTNEED only
                // drops page-table entries: no data is lost, every later read faults the same
                // bytes back in from the file, and no reference into the map is invalidated.
                let _ = unsafe { m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len) };
            }
        }
    }

    /// The `data` part of tensor `i` (checked as [`LbfFile::tensor_parts`]).
    pub fn tensor_data(&self, i: usize) -> Result<&[u8]> {
        Ok(self.tensor_parts(i)?[PartKind::Data as usize])
    }

    /// Recompute the CRC-32 of every part of tensor `i`, and check that the padding after
    /// each part is zero (§6).
    fn check_tensor(&self, i: usize) -> Result<()> {
        let t = &self.tensors[i];
        if let Storage::Map(m) = &self.storage {
            // The CRC pass reads every page of the tensor: ask the kernel to read ahead in large
            // pieces instead of faulting page by page (a hint; failure is harmless).
            for p in &t.parts {
                let _ = m.advise_range(memmap2::Advice::WillNeed, p.offset as usize, p.len as usize);
            }
        }
        for p in &t.parts {
            let end = p.offset + p.len;
            let pad_end = align_up(end).expect("checked when the file was opened");
            if let Some(k) = self.bytes()[end as usize..pad_end as usize].iter().position(|&b| b != 0) {
                return Err(fmt_err(end + k as u64, format!("tensor {:?}: padding after a part is not zero", t.name)));
            }
            let computed = crc32(self.part_bytes_unchecked(p));
            if computed != p.crc {
                let kind = PartKind::from_id(p.kind).map_or(format!("kind {}", p.kind), |k| k.name().to_string());
                return Err(Error::Checksum {
                    what: format!("tensor {:?} part {kind}", t.name),
                    stored: p.crc,
                    computed,
                });
            }
        }
        Ok(())
    }

    /// Check every tensor (in parallel) as a first read would: checksums, padding, and the
    /// content of perm, outlier and act_quant parts; the failures, by tensor index. Tensors of a newer
    /// minor version's unknown qtypes or part kinds get their checksums checked only.
    pub fn verify_all(&self) -> Vec<(usize, Error)> {
        let mut bad: Vec<(usize, Error)> = (0..self.tensors.len())
            .into_par_iter()
            .filter_map(|i| match self.tensor_parts(i) {
                Ok(_) => None,
                Err(Error::Unsupported(_)) => self.check_tensor(i).err().map(|e| (i, e)),
                Err(e) => Some((i, e)),
            })
            .collect();
        bad.sort_by_key(|(i, _)| *i);
        bad
    }

    /// Check every checksum; the first failure as an error.
    pub fn verify(&self) -> Result<()> {
        match self.verify_all().into_iter().next() {
            None => Ok(()),
            Some((_, e)) => Err(e),
        }
    }
}

/// CRC-32 (zlib's), parallel over 8 MiB chunks for large inputs.
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    const CHUNK: usize = 8 << 20;
    if bytes.len() <= CHUNK {
        let mut h = crc32fast::Hasher::new();
        h.update(bytes);
        return h.finalize();
    }
    bytes
        .par_chunks(CHUNK)
        .map(|c| {
            let mut h = crc32fast::Hasher::new();
            h.update(c);
            (h, c.len() as u64)
        })
        .collect::<Vec<_>>()
        .into_iter()
        .reduce(|(mut a, n), (b, m)| {
            a.combine(&b);
            (a, n + m)
        })
        .map_or(0, |(h, _)| h.finalize())
}

fn too_short(len: u64) -> Error {
    if len == 0 {
        fmt_err(0, "the file is empty")
    } else {
        fmt_err(len, format!("the file is {len} bytes, shorter than the {HEADER_LEN}-byte header"))
    }
}

impl Error {
    /// Prefix a format error's message with the file's path.
    fn with_path(self, path: &Path) -> Error {
        match self {
            Error::Format { offset, msg } => Error::Format { offset, msg: format!("{}: {msg}", path.display()) },
            Error::Version(msg) => Error::Version(format!("{}: {msg}", path.display())),
            e => e,
        }
    }
}

/// Whether a file's minor version is newer than this reader's (§9).
fn is_newer_minor(minor: u16) -> bool {
    minor > VERSION_MINOR
}

/// Read and check the fixed header (§3, §7 steps 1–4).
fn parse_header(bytes: &[u8]) -> Result<Header> {
    let u16_at = |o: usize| u16::from_le_bytes(bytes[o..o + 2].try_into().expect("2 bytes"));
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
    if bytes[..8] != MAGIC {
        return Err(fmt_err(0, format!("bad magic {:02x?}: not an LBF file", &bytes[..8])));
    }
    let bom = u32_at(12);
    if bom == BYTE_ORDER.swap_bytes() {
        return Err(fmt_err(12, "byte-order mark is swapped: a big-endian file, which LBF does not define"));
    }
    if bom != BYTE_ORDER {
        return Err(fmt_err(12, format!("bad byte-order mark {bom:#010x}")));
    }
    let h = Header {
        major: u16_at(8),
        minor: u16_at(10),
        index_offset: u64_at(16),
        index_len: u64_at(24),
        n_metadata: u64_at(32),
        n_tensors: u64_at(40),
        file_len: u64_at(48),
        flags: u32_at(56),
        header_crc: u32_at(60),
    };
    if h.major != VERSION_MAJOR {
        let why = if h.major == 0 { "version 0 is not valid" } else { "a newer lowbit is needed" };
        return Err(Error::Version(format!(
            "LBF format version {}.{} is not supported by this reader ({VERSION_MAJOR}.{VERSION_MINOR}): {why}",
            h.major, h.minor
        )));
    }
    if h.flags != 0 && !is_newer_minor(h.minor) {
        return Err(fmt_err(56, format!("unknown header flags {:#x}", h.flags)));
    }
    let real = bytes.len() as u64;
    if h.file_len != real {
        return Err(fmt_err(
            48,
            format!("header says {} bytes but the file has {real} (truncated or appended?)", h.file_len),
        ));
    }
    if h.index_offset < HEADER_LEN || !h.index_offset.is_multiple_of(super::ALIGN) {
        return Err(fmt_err(16, format!("index_offset {} is not a multiple of 64 at or after 64", h.index_offset)));
    }
    if h.index_offset.checked_add(h.index_len) != Some(real) {
        return Err(fmt_err(
            24,
            format!("index at {} + {} bytes does not end the {real}-byte file", h.index_offset, h.index_len),
        ));
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&bytes[..60]);
    crc.update(&bytes[h.index_offset as usize..]);
    let computed = crc.finalize();
    if computed != h.header_crc {
        return Err(Error::Checksum { what: "the header and index".into(), stored: h.header_crc, computed });
    }
    Ok(h)
}

/// Parse one tensor entry (§5), checking it fully; `next` is where its first part must start.
fn parse_tensor(c: &mut Cursor<'_>, next: &mut u64, data_end: u64, newer_minor: bool) -> Result<TensorInfo> {
    let at = c.pos();
    let name = c.string("tensor name")?;
    check_name("tensor name", &name, MAX_NAME_LEN).map_err(|m| c.err_at(at, m))?;
    let ctx = |m: String| format!("tensor {name:?}: {m}");
    let q_at = c.pos();
    let qtype_id = c.u32()?;
    let group_size = c.u32()?;
    let flags = c.u32()?;
    let qtype = qtype_from_id(qtype_id);
    if qtype.is_none() && !newer_minor {
        return Err(c.err_at(q_at, ctx(format!("unknown qtype id {qtype_id}"))));
    }
    let affine = match qtype {
        Some(q) => affine_from_fields(q, group_size, flags).map_err(|m| c.err_at(q_at, ctx(m)))?,
        None => None,
    };
    let d_at = c.pos();
    let n_dims = c.u32()? as usize;
    if n_dims == 0 || n_dims > MAX_DIMS {
        return Err(c.err_at(d_at, ctx(format!("{n_dims} dimensions (1 to {MAX_DIMS} allowed)"))));
    }
    let dims: Vec<u64> = (0..n_dims).map(|_| c.u64()).collect::<Result<_>>()?;
    let cols = dims[n_dims - 1];
    let rows = rows_of(&dims).ok_or_else(|| c.err_at(d_at, ctx(format!("dimensions {dims:?} overflow 64 bits"))))?;
    let p_at = c.pos();
    let n_parts = c.u32()? as u64;
    if n_parts == 0 || n_parts > MAX_PARTS as u64 {
        return Err(c.err_at(p_at, ctx(format!("{n_parts} parts (1 to {MAX_PARTS} allowed)"))));
    }
    let mut parts = Vec::with_capacity(n_parts as usize);
    for k in 0..n_parts {
        let at = c.pos();
        let mut r = c.sub(PART_RECORD_LEN, "part record")?;
        let p = PartInfo { kind: r.u32()?, crc: r.u32()?, offset: r.u64()?, len: r.u64()? };
        if k == 0 && p.kind != PartKind::Data as u32 {
            return Err(c.err_at(at, ctx("the first part must be data (kind 0)".into())));
        }
        if parts.last().is_some_and(|q: &PartInfo| q.kind >= p.kind) {
            return Err(c.err_at(at, ctx(format!("part kind {} out of order or repeated", p.kind))));
        }
        if PartKind::from_id(p.kind).is_none() && !newer_minor {
            return Err(c.err_at(at, ctx(format!("unknown part kind {}", p.kind))));
        }
        let start = align_up(*next).ok_or_else(|| c.err_at(at, ctx("offset overflows".into())))?;
        if p.offset != start {
            return Err(c.err_at(at + 8, ctx(format!("part at offset {} but the layout puts it at {start}", p.offset))));
        }
        let end = p.offset.checked_add(p.len).filter(|&e| e <= data_end).ok_or_else(|| {
            c.err_at(at + 16, ctx(format!("part of {} bytes at {} runs past the data section", p.len, p.offset)))
        })?;
        *next = end;
        parts.push(p);
    }
    if let Some(q) = qtype {
        let lens: Vec<(u32, u64)> = parts.iter().map(|p| (p.kind, p.len)).collect();
        check_part_lengths(q, affine, rows, cols, &lens).map_err(|m| c.err_at(p_at, ctx(m)))?;
    }
    Ok(TensorInfo { name, qtype_id, qtype, affine, dims, parts })
}
