//! The LBF writer (§8): tensors stream to an unnamed temporary file in the destination's
//! folder as they are added; `finish` appends the index, writes the header, fsyncs and renames
//! the file into place. Dropping an unfinished writer (an error, Ctrl-C) discards it; on Linux a
//! killed process leaves nothing behind either (`O_TMPFILE`).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::read::crc32;
use super::value::{encode_str, Metadata};
use super::{
    affine_fields, align_up, check_name, check_part_contents, check_part_lengths, qtype_id, qtype_minor, rows_of,
    PartInfo, PartKind, TensorInfo, BYTE_ORDER, HEADER_LEN, MAGIC, MAX_DIMS, MAX_NAME_LEN, VERSION_MAJOR,
};
use crate::error::{Error, Result};
use crate::qtype::{AffineSpec, QType};

/// What a tensor is: everything of its index entry but the parts.
#[derive(Debug, Clone, Copy)]
pub struct TensorSpec<'a> {
    /// Unique name (§5).
    pub name: &'a str,
    /// Storage type.
    pub qtype: QType,
    /// Group-affine parameters (required for `int*` types, absent otherwise).
    pub affine: Option<AffineSpec>,
    /// Dimensions, outermost first; the last is the row length.
    pub dims: &'a [u64],
}

/// How the temporary file is named.
#[derive(Debug)]
enum Temp {
    /// `O_TMPFILE`: no name until `finish` links it.
    Unnamed,
    /// A hidden named file, removed on drop unless finished.
    Named(PathBuf),
}

/// A file being written. Call [`LbfWriter::finish`] to publish it; dropping it discards it.
#[derive(Debug)]
pub struct LbfWriter {
    file: File,
    dest: PathBuf,
    temp: Temp,
    /// Bytes written so far (the next free offset).
    pos: u64,
    entries: Vec<u8>,
    n_tensors: u64,
    names: HashSet<String>,
    /// The minor version written: the lowest that has every qtype and part kind added (§9).
    minor: u16,
    /// An I/O error happened: the file on disk no longer matches `pos`, so nothing more may be
    /// written and the file is never published.
    failed: bool,
}

impl LbfWriter {
    /// Start writing `dest`. Refuses a destination that is one of `inputs` (the same file, by
    /// device and inode) or a folder. Nothing is visible at `dest` until [`LbfWriter::finish`].
    pub fn create(dest: impl AsRef<Path>, inputs: &[&Path]) -> Result<LbfWriter> {
        let dest = dest.as_ref().to_path_buf();
        if dest.is_dir() {
            return Err(Error::InvalidParameter(format!("{} is a folder, not a file path", dest.display())));
        }
        for input in inputs {
            if same_file(&dest, input) {
                return Err(Error::InvalidParameter(format!(
                    "refusing to overwrite {}: it is also an input",
                    dest.display()
                )));
            }
        }
        let dir = parent_dir(&dest);
        sweep_stale_temps(&dir, &dest);
        let (mut file, temp) = open_temp(&dir, &dest)?;
        file.write_all(&[0u8; HEADER_LEN as usize]).map_err(|e| Error::io(dest.display(), &e))?;
        Ok(LbfWriter {
            file,
            dest,
            temp,
            pos: HEADER_LEN,
            entries: Vec::new(),
            n_tensors: 0,
            names: HashSet::new(),
            minor: 0,
            failed: false,
        })
    }

    fn io(&mut self, e: std::io::Error) -> Error {
        self.failed = true;
        Error::io(self.dest.display(), &e)
    }

    fn check_usable(&self) -> Result<()> {
        if self.failed {
            return Err(Error::InvalidParameter(format!(
                "writing {} failed earlier; the file is discarded (drop this writer)",
                self.dest.display()
            )));
        }
        Ok(())
    }

    /// Append a tensor: its parts (at most one of each kind, `Data` required) go to disk now.
    /// Every length, and the content of perm, outlier and act_quant parts, is checked against §5
    /// first.
    pub fn add_tensor(&mut self, spec: &TensorSpec<'_>, parts: &[(PartKind, &[u8])]) -> Result<()> {
        self.check_usable()?;
        let name = spec.name;
        check_name("tensor name", name, MAX_NAME_LEN).map_err(Error::InvalidParameter)?;
        if self.names.contains(name) {
            return Err(Error::InvalidParameter(format!("duplicate tensor name {name:?}")));
        }
        let bad = |m: String| Error::Shape(format!("tensor {name:?}: {m}"));
        if spec.dims.is_empty() || spec.dims.len() > MAX_DIMS {
            return Err(bad(format!("{} dimensions (1 to {MAX_DIMS} allowed)", spec.dims.len())));
        }
        if spec.affine.is_some() != spec.qtype.affine_bits().is_some()
            || spec.affine.is_some_and(|s| Some(s.bits) != spec.qtype.affine_bits())
        {
            return Err(Error::InvalidParameter(format!(
                "tensor {name:?}: group-affine parameters must be given exactly for the int types"
            )));
        }
        let cols = *spec.dims.last().expect("non-empty");
        let rows = rows_of(spec.dims).ok_or_else(|| bad(format!("dimensions {:?} overflow 64 bits", spec.dims)))?;
        let mut sorted: Vec<(PartKind, &[u8])> = parts.to_vec();
        sorted.sort_by_key(|(k, _)| *k);
        if sorted.first().map(|(k, _)| *k) != Some(PartKind::Data) {
            return Err(bad("the data part is required".into()));
        }
        if sorted.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(bad("a part kind is given twice".into()));
        }
        if sorted.iter().any(|(k, _)| *k == PartKind::ActQuant) {
            let has = |kind: PartKind| sorted.iter().any(|(k, _)| *k == kind);
            crate::matmul::check_act_target(
                spec.qtype,
                spec.affine,
                cols,
                has(PartKind::Perm),
                has(PartKind::OutlierRows),
            )
            .map_err(|e| match e {
                Error::InvalidParameter(m) => Error::InvalidParameter(format!("tensor {name:?}: {m}")),
                e => bad(e.to_string()),
            })?;
        }
        let lens: Vec<(u32, u64)> = sorted.iter().map(|(k, b)| (*k as u32, b.len() as u64)).collect();
        check_part_lengths(spec.qtype, spec.affine, rows, cols, &lens).map_err(bad)?;
        let mut by_kind: [&[u8]; PartKind::COUNT] = [&[]; PartKind::COUNT];
        for (k, b) in &sorted {
            by_kind[*k as usize] = b;
        }
        let info = TensorInfo {
            name: name.to_string(),
            qtype_id: qtype_id(spec.qtype),
            qtype: Some(spec.qtype),
            affine: spec.affine,
            dims: spec.dims.to_vec(),
            parts: Vec::new(),
        };
        check_part_contents(&info, &by_kind).map_err(|e| match e {
            Error::Format { msg, .. } => Error::InvalidParameter(msg),
            e => e,
        })?;

        let mut records = Vec::with_capacity(sorted.len());
        for (k, b) in &sorted {
            let offset = align_up(self.pos).expect("file offsets fit in u64");
            let pad = (offset - self.pos) as usize;
            self.file.write_all(&[0u8; 64][..pad]).map_err(|e| self.io(e))?;
            self.file.write_all(b).map_err(|e| self.io(e))?;
            self.pos = offset + b.len() as u64;
            records.push(PartInfo { kind: *k as u32, crc: crc32(b), offset, len: b.len() as u64 });
        }
        let e = &mut self.entries;
        encode_str(name, e);
        let (group, flags) = affine_fields(spec.affine);
        for v in [qtype_id(spec.qtype), group, flags, spec.dims.len() as u32] {
            e.extend_from_slice(&v.to_le_bytes());
        }
        spec.dims.iter().for_each(|d| e.extend_from_slice(&d.to_le_bytes()));
        e.extend_from_slice(&(records.len() as u32).to_le_bytes());
        for r in &records {
            e.extend_from_slice(&r.kind.to_le_bytes());
            e.extend_from_slice(&r.crc.to_le_bytes());
            e.extend_from_slice(&r.offset.to_le_bytes());
            e.extend_from_slice(&r.len.to_le_bytes());
        }
        self.names.insert(name.to_string());
        self.minor = sorted.iter().fold(self.minor.max(qtype_minor(spec.qtype)), |m, (k, _)| m.max(k.minor()));
        self.n_tensors += 1;
        Ok(())
    }

    /// Write the index (`metadata` first) and the header, fsync, and atomically replace the
    /// destination. On error the destination is untouched and the temporary file is removed.
    pub fn finish(mut self, metadata: &Metadata) -> Result<()> {
        self.check_usable()?;
        let index_offset = align_up(self.pos).expect("file offsets fit in u64");
        let mut index = Vec::with_capacity(self.entries.len() + 4096);
        metadata.encode(&mut index);
        index.extend_from_slice(&self.entries);
        let file_len = index_offset + index.len() as u64;

        let mut header = Vec::with_capacity(HEADER_LEN as usize);
        header.extend_from_slice(&MAGIC);
        header.extend_from_slice(&VERSION_MAJOR.to_le_bytes());
        header.extend_from_slice(&self.minor.to_le_bytes());
        header.extend_from_slice(&BYTE_ORDER.to_le_bytes());
        for v in [index_offset, index.len() as u64, metadata.len() as u64, self.n_tensors, file_len] {
            header.extend_from_slice(&v.to_le_bytes());
        }
        header.extend_from_slice(&0u32.to_le_bytes()); // flags
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header);
        crc.update(&index);
        header.extend_from_slice(&crc.finalize().to_le_bytes());

        let pad = (index_offset - self.pos) as usize;
        self.file.write_all(&[0u8; 64][..pad]).map_err(|e| self.io(e))?;
        self.file.write_all(&index).map_err(|e| self.io(e))?;
        self.file.seek(SeekFrom::Start(0)).map_err(|e| self.io(e))?;
        self.file.write_all(&header).map_err(|e| self.io(e))?;
        self.file.sync_all().map_err(|e| self.io(e))?;
        self.publish()
    }

    /// Give the finished temporary file the destination's name, atomically, and make the rename
    /// durable.
    fn publish(&mut self) -> Result<()> {
        let dir = parent_dir(&self.dest);
        let named = match &self.temp {
            Temp::Named(p) => p.clone(),
            Temp::Unnamed => {
                let p = temp_name(&dir, &self.dest);
                link_unnamed(&self.file, &p).map_err(|e| self.io(e))?;
                self.temp = Temp::Named(p.clone());
                p
            }
        };
        std::fs::rename(&named, &self.dest).map_err(|e| self.io(e))?;
        self.temp = Temp::Unnamed; // nothing left to clean up
        if let Ok(d) = File::open(&dir) {
            // Best effort: some filesystems refuse fsync on a folder.
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Drop for LbfWriter {
    fn drop(&mut self) {
        if let Temp::Named(p) = &self.temp {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The folder a path is in (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A hidden name next to the destination, unique to this process and writer.
fn temp_name(dir: &Path, dest: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let base = dest.file_name().map_or("out".into(), |n| n.to_string_lossy().into_owned());
    dir.join(format!(".{base}.lbf-tmp-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)))
}

/// Remove the hidden temporary files of `dest` left by writers that no longer run (§8: a kill
/// in the instant between naming the finished temporary and renaming it leaves one).
fn sweep_stale_temps(dir: &Path, dest: &Path) {
    let Some(base) = dest.file_name().map(|n| n.to_string_lossy().into_owned()) else { return };
    let prefix = format!(".{base}.lbf-tmp-");
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&prefix) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !process_alive(pid) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Whether a process of this id exists (unknown: assume it does).
fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else { return true };
        // SAFETY: kill with signal 0 only checks for existence and permission; it sends nothing.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// An unnamed file in `dir` where the OS supports it, else a hidden named one.
fn open_temp(dir: &Path, dest: &Path) -> Result<(File, Temp)> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let unnamed = OpenOptions::new().read(true).write(true).mode(0o644).custom_flags(libc::O_TMPFILE).open(dir);
        match unnamed {
            Ok(f) => return Ok((f, Temp::Unnamed)),
            // Filesystems without O_TMPFILE answer EOPNOTSUPP (or EISDIR/EINVAL on old kernels).
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)) => {}
            Err(e) => return Err(Error::io(dir.display(), &e)),
        }
    }
    let p = temp_name(dir, dest);
    let f =
        OpenOptions::new().read(true).write(true).create_new(true).open(&p).map_err(|e| Error::io(p.display(), &e))?;
    Ok((f, Temp::Named(p)))
}

/// Give an `O_TMPFILE` file a name (`linkat` through `/proc/self/fd`, as open(2) describes).
#[cfg(target_os = "linux")]
fn link_unnamed(file: &File, to: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::io::AsRawFd;
    let from = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).expect("no NUL");
    let to = CString::new(to.as_os_str().as_bytes()).map_err(|_| std::io::Error::other("path contains NUL"))?;
    // SAFETY: both arguments are valid NUL-terminated C strings that outlive the call.
    let r =
        unsafe { libc::linkat(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::AT_SYMLINK_FOLLOW) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn link_unnamed(_file: &File, _to: &Path) -> std::io::Result<()> {
    unreachable!("unnamed temporary files exist only on Linux")
}

/// Whether two paths name the same existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        #[cfg(unix)]
        (Ok(x), Ok(y)) => {
            use std::os::unix::fs::MetadataExt;
            x.dev() == y.dev() && x.ino() == y.ino()
        }
        #[cfg(not(unix))]
        (Ok(_), Ok(_)) => std::fs::canonicalize(a).ok() == std::fs::canonicalize(b).ok(),
        _ => false,
    }
}
