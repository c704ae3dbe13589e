//! Kill test of the LBF writer (`formats/LBF.md` §8): a child process (this test binary, running
//! the ignored test `child_writes_large_file`) streams a ~50 MiB file over an existing one and is
//! SIGKILLed after a deterministic pseudo-random delay. Afterwards the destination must hold the
//! old file byte for byte or the complete new one, and the folder nothing else (no temporary).
#![cfg(unix)]

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use lowbit_core::format::{LbfFile, LbfWriter, Metadata, PartKind, TensorSpec, Value};
use lowbit_core::QType;

/// Where the child writes; the child test does nothing without it.
const ENV_DEST: &str = "LOWBIT_KILL_TEST_DEST";
const CHILD_TEST: &str = "child_writes_large_file";
/// Tensors of the new file, each 256 × 256 f32 (256 KiB): 50 MiB in release, 12.5 MiB in debug.
const N_TENSORS: usize = if cfg!(debug_assertions) { 50 } else { 200 };
const DIMS: [u64; 2] = [256, 256];
const RUNS: usize = 20;
/// Delays spread over [0, DELAY_SPAN × the child's measured run time].
const DELAY_SPAN: f64 = 1.2;
/// Progress lines the child prints (stdout is line-buffered, so each is out before the next step).
const CREATED: &str = "lbf-kill: created";
const TENSOR: &str = "lbf-kill: tensor";
const FINISHING: &str = "lbf-kill: finishing";
const FINISHED: &str = "lbf-kill: finished";
/// SIGKILL's number on every Unix (libc is not a dependency of the tests).
const SIGKILL: i32 = 9;

/// splitmix64: a fast deterministic generator.
fn splitmix(s: &mut u64) -> u64 {
    *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Write the new file to `$LOWBIT_KILL_TEST_DEST`, reporting progress on stdout.
#[test]
#[ignore = "run in a child process by writer_survives_sigkill"]
fn child_writes_large_file() {
    let Some(dest) = std::env::var_os(ENV_DEST) else { return };
    let mut w = LbfWriter::create(&dest, &[]).expect("create");
    println!("{CREATED}");
    let mut buf = vec![0u8; (DIMS[0] * DIMS[1] * 4) as usize];
    let mut s = 0x1234_5678_9ABC_DEF0u64;
    for i in 0..N_TENSORS {
        for c in buf.chunks_exact_mut(8) {
            c.copy_from_slice(&splitmix(&mut s).to_le_bytes());
        }
        let name = format!("model.layers.{i}.weight");
        let spec = TensorSpec { name: &name, qtype: QType::F32, affine: None, dims: &DIMS };
        w.add_tensor(&spec, &[(PartKind::Data, &buf)]).expect("add_tensor");
        println!("{TENSOR} {i}");
    }
    let mut meta = Metadata::new();
    meta.insert("kill_test.file", Value::String("new".into())).expect("metadata");
    println!("{FINISHING}");
    w.finish(&meta).expect("finish");
    println!("{FINISHED}");
}

/// A folder removed (with its content) on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let p = std::env::temp_dir().join(format!("lowbit-format-kill-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&p).expect("create temp folder");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The old file: small, valid, different from anything the child writes.
fn old_file(dir: &Path) -> Vec<u8> {
    let path = dir.join("old.lbf");
    let mut w = LbfWriter::create(&path, &[]).unwrap();
    // f16 values 0, 1/1024, ... (any bits are valid f16 data; these are small and finite).
    let data: Vec<u8> = (0..4 * 64u16).flat_map(|i| (0x1400 + i).to_le_bytes()).collect();
    for i in 0..3 {
        let spec = TensorSpec { name: &format!("old.{i}"), qtype: QType::F16, affine: None, dims: &[4, 64] };
        w.add_tensor(&spec, &[(PartKind::Data, &data)]).unwrap();
    }
    let mut meta = Metadata::new();
    meta.insert("kill_test.file", Value::String("old".into())).unwrap();
    w.finish(&meta).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    LbfFile::from_bytes(bytes.clone()).unwrap().verify().unwrap();
    bytes
}

/// A fresh folder holding only `model.lbf` = `old`; the destination's path.
fn setup(root: &Path, run: &str, old: &[u8]) -> PathBuf {
    let dir = root.join(run);
    std::fs::create_dir(&dir).unwrap();
    let dest = dir.join("model.lbf");
    std::fs::write(&dest, old).unwrap();
    dest
}

fn spawn_child(dest: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([CHILD_TEST, "--exact", "--nocapture", "--ignored", "--test-threads=1"])
        .env(ENV_DEST, dest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child test")
}

/// Whether this test binary can start itself: not when it is a cross-compiled binary run under
/// qemu-user without binfmt_misc (`make test-neon`), where exec fails (ENOEXEC, or the shell
/// fallback's 126/127).
fn can_exec_self() -> Result<(), String> {
    let out = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .arg("--list")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let listed = String::from_utf8_lossy(&out.stdout).contains(CHILD_TEST);
    if out.status.success() && listed {
        Ok(())
    } else {
        Err(format!("`{} --list` gave {}", std::env::current_exe().unwrap().display(), out.status))
    }
}

/// The names in the destination's folder.
fn entries(dest: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dest.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn writer_survives_sigkill() {
    if let Err(why) = can_exec_self() {
        eprintln!("format_kill: skipped: this test binary cannot run itself here ({why})");
        return;
    }
    let started = Instant::now();
    let root = TempDir::new();
    let old = old_file(&root.0);

    // Two uninterrupted runs: the reference new file (the same both times: the writer is
    // deterministic, §8) and the child's run time (the faster, so a cold first run does not
    // stretch the delays).
    let mut child_time = std::time::Duration::MAX;
    let mut new = Vec::new();
    for m in 0..2 {
        let dest = setup(&root.0, &format!("measure{m}"), &old);
        let t = Instant::now();
        let out = spawn_child(&dest).wait_with_output().unwrap();
        child_time = child_time.min(t.elapsed());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.lines().any(|l| l.ends_with(FINISHED)),
            "child failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(entries(&dest), ["model.lbf"]);
        let bytes = std::fs::read(&dest).unwrap();
        assert_ne!(bytes, old);
        assert!(m == 0 || bytes == new, "the writer is not deterministic");
        let f = LbfFile::open(&dest).unwrap();
        f.verify().unwrap();
        assert_eq!((f.tensors().len(), f.metadata().get_str("kill_test.file").unwrap()), (N_TENSORS, "new"));
        drop(f);
        std::fs::remove_dir_all(dest.parent().unwrap()).unwrap();
        new = bytes;
    }

    let (mut early, mut mid, mut mid_with_data, mut late, mut completed, mut link_window) = (0, 0, 0, 0, 0, 0);
    let mut seed = 0x5EED_0FC0_FFEE_u64;
    for run in 0..RUNS {
        // Stratified: run k's delay falls in the k-th of RUNS equal slices of the span.
        let u = (splitmix(&mut seed) >> 11) as f64 / (1u64 << 53) as f64;
        let delay = child_time.mul_f64(DELAY_SPAN * (run as f64 + u) / RUNS as f64);
        let dest = setup(&root.0, &format!("run{run}"), &old);
        let mut child = spawn_child(&dest);
        let child_id = child.id();
        std::thread::sleep(delay);
        // SIGKILL; harmless if the child has already exited (it is not reaped before wait).
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        // The harness prints "test <name> ... " before the first line: match line ends.
        let saw = |m: &str| stdout.lines().any(|l| l.ends_with(m));
        let tensors = stdout.lines().filter(|l| l.contains(TENSOR)).count();
        let ctx = format!("run {run} (kill after {delay:?}, {tensors} tensors written, status {})", out.status);

        let now = std::fs::read(&dest).unwrap_or_else(|e| panic!("{ctx}: destination unreadable: {e}"));
        let is_old = now == old;
        let is_new = now == new;
        assert!(is_old || is_new, "{ctx}: destination is neither the old nor the new file ({} bytes)", now.len());
        // With O_TMPFILE the temporary has no name until publish() links it under a hidden name
        // and renames that over the destination; Linux has no atomic "link over", so a kill
        // between those two syscalls (~0.2 ms) leaves the complete new file under the hidden
        // name. §8 allows exactly that state, and the next writer of the destination removes it.
        let mut names = entries(&dest);
        let stray = format!(".model.lbf.lbf-tmp-{child_id}-");
        let in_finish = saw(FINISHING) && !saw(FINISHED);
        if in_finish && is_old && names.len() == 2 && names[0].starts_with(&stray) {
            let tmp = std::fs::read(dest.with_file_name(&names[0])).unwrap();
            assert!(tmp == new, "{ctx}: stray {} is not the complete new file", names[0]);
            drop(LbfWriter::create(&dest, &[]).unwrap());
            names = entries(&dest);
            assert_eq!(names, ["model.lbf"], "{ctx}: the next writer did not sweep the stale temporary");
            link_window += 1;
        }
        let why = if in_finish { " (killed in finish, between linkat and rename?)" } else { "" };
        assert_eq!(names, ["model.lbf"], "{ctx}: stray files left in the folder{why}");
        if is_new {
            LbfFile::open(&dest).and_then(|f| f.verify()).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        }

        if out.status.success() {
            assert!(is_new && saw(FINISHED), "{ctx}: the child finished but the new file is not in place");
            completed += 1;
        } else {
            assert_eq!(out.status.signal(), Some(SIGKILL), "{ctx}: child failed on its own:\n{stdout}");
            if saw(FINISHED) {
                assert!(is_new, "{ctx}: finish returned but the old file is still in place");
                late += 1;
            } else if saw(CREATED) {
                if !saw(FINISHING) {
                    // Only finish renames: before it the old file must still be there.
                    assert!(is_old, "{ctx}: the new file appeared before finish");
                }
                mid += 1;
                mid_with_data += usize::from(tensors > 0);
            } else {
                assert!(is_old, "{ctx}: killed before the writer existed, yet the file changed");
                early += 1;
            }
        }
        std::fs::remove_dir_all(dest.parent().unwrap()).unwrap();
    }
    eprintln!(
        "format_kill: child run time {child_time:.2?}; of {RUNS} runs {mid} killed mid-write ({mid_with_data} after \
         some tensor data), {early} killed before the writer existed, {late} killed after finish, {completed} \
         completed; {link_window} left the hidden temporary (killed between linkat and rename); total {:.2?}",
        started.elapsed()
    );
    assert_eq!(early + mid + late + completed, RUNS);
    assert!(mid >= 5 && mid_with_data >= 3, "too few kills landed mid-write ({mid}, {mid_with_data} with data)");
}
