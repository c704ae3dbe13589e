"""LBF file I/O against safetensors, gguf-py and the raw disk, measured in the same run on the same data.

A model-like file of `--size-gib` GiB is built from 4096×4096 float16 tensors (32 MiB each, random
bits, NaN patterns included: LBF stores f16 bytes as they are). Each of `--repeat` rounds writes it
in every format, then times, for each file:

* write GB/s: `lowbit.save` (temporary file, fsync, rename, folder fsync) vs
  `safetensors.numpy.save_file` + fsync, `gguf.GGUFWriter` + fsync, and plain `file.write` + fsync
  of the same bytes (the raw disk's upper bound);
* open + first tensor (ms): `lowbit.load(p)[first]` (its CRC-32 is checked on this first read),
  `safe_open(p, framework="np").get_tensor(first)`, `gguf.GGUFReader(p).tensors[0].data`, and
  `np.fromfile` of the first tensor's 32 MiB (raw), each followed by reading one byte; with the page
  cache warm (just written) and cold (`posix_fadvise(DONTNEED)` after an fsync; `mincore` reports
  how much of the file was still cached, so a drop that did not work shows);
* full verify GB/s: `LBFFile.verify()` (every CRC-32, all cores) vs reading the file with
  `np.fromfile`, with `readinto` a reused 16 MiB buffer, and the same through `zlib.crc32`
  (one thread), warm and cold;
* peak RSS while opening the file and reading its first tensor, in a fresh child process
  (VmHWM after resetting it through /proc/self/clear_refs).

Figures are medians over the rounds with (min–max); ratios compare medians and are always
anchor time / lowbit time, so > 1 means lowbit is faster. GB = 10^9 bytes of tensor data.

    .venv/bin/python benches/bench_lbf.py --size-gib 1 --repeat 5 [--json out.json]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import mmap
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import numpy.typing as npt
from safetensors import safe_open
from safetensors.numpy import save_file

import lowbit

ROWS = COLS = 4096
TENSOR_BYTES = ROWS * COLS * 2
FORMATS = ("lowbit", "safetensors", "gguf", "raw")
SUFFIX = {"lowbit": ".lbf", "safetensors": ".safetensors", "gguf": ".gguf", "raw": ".bin"}
CHUNK = 16 << 20

Tensors = dict[str, npt.NDArray[np.float16]]


def make_tensors(n: int, seed: int = 0) -> Tensors:
    """`n` float16 4096×4096 tensors of random bits."""
    rng = np.random.default_rng(seed)
    return {
        f"blk.{i}.ffn_down.weight": rng.integers(0, 2**16, size=(ROWS, COLS), dtype=np.uint16).view(np.float16)
        for i in range(n)
    }


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def drop_cache(path: Path) -> None:
    """Ask the kernel to evict `path` from the page cache (its pages must be clean and unmapped)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


_libc: Any = None


def cached_fraction(path: Path) -> float | None:
    """Fraction of `path`'s pages in the page cache (mincore on a fresh, untouched map), or None."""
    global _libc
    try:
        if _libc is None:
            lib = ctypes.CDLL(None, use_errno=True)
            lib.mmap.restype = ctypes.c_void_p
            lib.mmap.argtypes = [
                ctypes.c_void_p,
                ctypes.c_size_t,
                ctypes.c_int,
                ctypes.c_int,
                ctypes.c_int,
                ctypes.c_long,
            ]
            lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
            lib.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
            _libc = lib
        size = path.stat().st_size
        if size == 0:
            return None
        fd = os.open(path, os.O_RDONLY)
        try:
            addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        finally:
            os.close(fd)
        if addr is None or addr == ctypes.c_void_p(-1).value:
            return None
        try:
            vec = np.zeros(-(-size // mmap.PAGESIZE), dtype=np.uint8)
            if _libc.mincore(ctypes.c_void_p(addr), size, vec.ctypes.data) != 0:
                return None
            return float(np.count_nonzero(vec & 1)) / len(vec)
        finally:
            _libc.munmap(ctypes.c_void_p(addr), size)
    except (OSError, AttributeError):
        return None


# -- writers -------------------------------------------------------------------------------------


def write_lowbit(path: Path, tensors: Tensors) -> None:
    lowbit.save(path, tensors)


def write_safetensors(path: Path, tensors: Tensors) -> None:
    save_file(tensors, path)
    fsync_path(path)


def write_gguf(path: Path, tensors: Tensors) -> None:
    w = gguf.GGUFWriter(path, "llama")
    for name, t in tensors.items():
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.flush()
    assert w.fout is not None
    os.fsync(w.fout[0].fileno())
    w.close()


def write_raw(path: Path, tensors: Tensors) -> None:
    with open(path, "wb") as f:
        for t in tensors.values():
            f.write(t.data)
        f.flush()
        os.fsync(f.fileno())


WRITERS: dict[str, Callable[[Path, Tensors], None]] = {
    "lowbit": write_lowbit,
    "safetensors": write_safetensors,
    "gguf": write_gguf,
    "raw": write_raw,
}


# -- open + first tensor (each returns the first tensor's first byte) ------------------------------


def first_lowbit(path: Path, name: str) -> int:
    f = lowbit.load(path)
    try:
        a = f[name]
        assert isinstance(a, np.ndarray)
        return int(a.reshape(-1).view(np.uint8)[0])
    finally:
        f.close()


def first_safetensors(path: Path, name: str) -> int:
    with safe_open(path, framework="np") as f:
        a = f.get_tensor(name)
        return int(a.reshape(-1).view(np.uint8)[0])


def first_gguf(path: Path, name: str) -> int:
    r = gguf.GGUFReader(path)
    t = r.tensors[0]
    assert t.name == name
    return int(np.asarray(t.data).reshape(-1).view(np.uint8)[0])


def first_raw(path: Path, name: str) -> int:
    a = np.fromfile(path, dtype=np.uint8, count=TENSOR_BYTES)
    return int(a[0])


FIRST: dict[str, Callable[[Path, str], int]] = {
    "lowbit": first_lowbit,
    "safetensors": first_safetensors,
    "gguf": first_gguf,
    "raw": first_raw,
}


def open_only_lowbit(path: Path) -> int:
    with lowbit.load(path) as f:
        return len(f)


# -- full-file checks ------------------------------------------------------------------------------


def verify_lowbit(path: Path) -> int:
    with lowbit.load(path) as f:
        f.verify()
        return len(f)


def read_fromfile(path: Path) -> int:
    return int(np.fromfile(path, dtype=np.uint8).size)


def read_chunks(path: Path) -> int:
    total = 0
    buf = bytearray(CHUNK)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    return total


def read_crc32(path: Path) -> int:
    crc = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            crc = zlib.crc32(view[:n], crc)
    return crc


FULL: dict[str, Callable[[Path], int]] = {
    "verify": verify_lowbit,
    "read": read_fromfile,
    "read_chunks": read_chunks,
    "read_crc32": read_crc32,
}


def _append(out: list[int], fn: Callable[[Path, str], int], path: Path, name: str) -> None:
    out.append(fn(path, name))


def timed(fn: Callable[[], Any]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    gc.collect()
    return dt


# -- peak RSS in a child ---------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def rss_child(fmt: str, path: str, name: str) -> None:
    """Child side: reset the high-water mark, open + read the first tensor, print RSS figures."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    before = _status_kib("VmRSS")
    hwm_before = _status_kib("VmHWM")
    FIRST[fmt](Path(path), name)
    out = {
        "rss_before_kib": before,
        "hwm_before_kib": hwm_before,
        "hwm_after_kib": _status_kib("VmHWM"),
        "reset": reset,
    }
    print(json.dumps(out))


def measure_rss(fmt: str, path: Path, name: str) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--rss-child", fmt, str(path), name]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    r: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    base = r["rss_before_kib"] if r["reset"] else max(r["rss_before_kib"], r["hwm_before_kib"])
    r["peak_delta_mib"] = (r["hwm_after_kib"] - base) / 1024
    return r


# -- the run ---------------------------------------------------------------------------------------


def summary(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def machine_info(workdir: Path) -> dict[str, Any]:
    df = subprocess.run(["df", "-h", str(workdir)], capture_output=True, text=True).stdout.strip()
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    import safetensors

    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "df": df,
        "rayon_num_threads": os.environ.get("RAYON_NUM_THREADS"),
        "loadavg_at_start": os.getloadavg(),
        "versions": {
            "lowbit": lowbit.__version__,
            "numpy": np.__version__,
            "safetensors": safetensors.__version__,
            "gguf": _dist_version("gguf"),
        },
    }


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def run(size_gib: float, repeat: int, workdir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    n = max(1, round(size_gib * (1 << 30) / TENSOR_BYTES))
    log(f"generating {n} × float16 {ROWS}×{COLS} tensors ({n * TENSOR_BYTES / 2**30:.2f} GiB) ...")
    tensors = make_tensors(n)
    first = next(iter(tensors))
    nbytes = n * TENSOR_BYTES
    paths = {fmt: workdir / f"model{SUFFIX[fmt]}" for fmt in FORMATS}
    samples: dict[str, list[float]] = {}
    residency: dict[str, list[float | None]] = {}
    rss: dict[str, list[dict[str, Any]]] = {fmt: [] for fmt in ("lowbit", "safetensors", "gguf")}

    def add(key: str, v: float) -> None:
        samples.setdefault(key, []).append(v)

    def cold(key: str, path: Path, fn: Callable[[], Any]) -> None:
        gc.collect()
        drop_cache(path)
        residency.setdefault(key, []).append(cached_fraction(path))
        add(key, timed(fn))

    expect = int(tensors[first].reshape(-1).view(np.uint8)[0])
    for r in range(repeat):
        order = FORMATS[r % len(FORMATS) :] + FORMATS[: r % len(FORMATS)]
        for fmt in order:
            paths[fmt].unlink(missing_ok=True)
            os.sync()
            add(f"write.{fmt}", timed(partial(WRITERS[fmt], paths[fmt], tensors)))
        if r == 0:
            with lowbit.load(paths["lowbit"]) as f:
                got = f[first]
                assert isinstance(got, np.ndarray)
                assert np.array_equal(got.view(np.uint16), tensors[first].view(np.uint16)), "LBF round trip"
                f.verify()
                del got  # a live view would keep the file mapped and its pages cached
        # Warm: every file was just written, so its pages are cached.
        for fmt in order:
            got_byte: list[int] = []
            add(f"first_warm.{fmt}", timed(partial(_append, got_byte, FIRST[fmt], paths[fmt], first)))
            assert got_byte == [expect], (fmt, got_byte, expect)
        add("open_warm.lowbit", timed(lambda: open_only_lowbit(paths["lowbit"])))
        for key, fn in FULL.items():
            add(f"full_warm.{key}", timed(partial(fn, paths["lowbit"])))
        for fmt in rss:
            rss[fmt].append(measure_rss(fmt, paths[fmt], first))
        # Cold: evict the file first.
        for fmt in order:
            cold(f"first_cold.{fmt}", paths[fmt], partial(FIRST[fmt], paths[fmt], first))
        cold("open_cold.lowbit", paths["lowbit"], lambda: open_only_lowbit(paths["lowbit"]))
        for key, fn in FULL.items():
            cold(f"full_cold.{key}", paths["lowbit"], partial(fn, paths["lowbit"]))
        log(
            f"round {r + 1}/{repeat}: write lowbit {nbytes / samples['write.lowbit'][-1] / 1e9:.2f} GB/s, "
            f"verify warm {nbytes / samples['full_warm.verify'][-1] / 1e9:.2f} GB/s"
        )
    sizes = {fmt: paths[fmt].stat().st_size for fmt in FORMATS}
    for p in paths.values():
        p.unlink(missing_ok=True)
    return {
        "n_tensors": n,
        "tensor_bytes": TENSOR_BYTES,
        "data_bytes": nbytes,
        "file_bytes": sizes,
        "repeat": repeat,
        "samples_s": samples,
        "summary_s": {k: summary(v) for k, v in samples.items()},
        "cached_fraction_after_drop": residency,
        "rss": rss,
    }


# -- report ----------------------------------------------------------------------------------------

ANCHOR_NAMES = {
    "safetensors": "safetensors",
    "gguf": "gguf-py",
    "raw": "raw write + fsync",
    "read": "raw read (np.fromfile)",
    "read_chunks": "raw read (16 MiB readinto)",
    "read_crc32": "raw read + zlib.crc32",
}


def _fmt_rate(nbytes: int, s: dict[str, float]) -> str:
    return f"{nbytes / s['median'] / 1e9:.2f} ({nbytes / s['max'] / 1e9:.2f}–{nbytes / s['min'] / 1e9:.2f})"


def _fmt_ms(s: dict[str, float]) -> str:
    return f"{s['median'] * 1e3:.1f} ({s['min'] * 1e3:.1f}–{s['max'] * 1e3:.1f})"


def table(res: dict[str, Any]) -> str:
    s = res["summary_s"]
    nb = res["data_bytes"]
    rows: list[tuple[str, str, list[str]]] = [
        ("write, GB/s", "write.lowbit", ["write.safetensors", "write.gguf", "write.raw"]),
        (
            "open + first tensor, warm, ms",
            "first_warm.lowbit",
            ["first_warm.safetensors", "first_warm.gguf", "first_warm.raw"],
        ),
        (
            "open + first tensor, cold, ms",
            "first_cold.lowbit",
            ["first_cold.safetensors", "first_cold.gguf", "first_cold.raw"],
        ),
        (
            "verify all CRCs, warm, GB/s",
            "full_warm.verify",
            ["full_warm.read", "full_warm.read_chunks", "full_warm.read_crc32"],
        ),
        (
            "verify all CRCs, cold, GB/s",
            "full_cold.verify",
            ["full_cold.read", "full_cold.read_chunks", "full_cold.read_crc32"],
        ),
    ]
    out = [
        "| measure (median, min–max) | lowbit | anchor | anchor figure | anchor time / lowbit time |",
        "|---|--:|---|--:|--:|",
    ]
    for label, lk, anchors in rows:
        rate = "GB/s" in label
        fmt: Callable[[dict[str, float]], str] = (lambda x: _fmt_rate(nb, x)) if rate else _fmt_ms
        for i, ak in enumerate(anchors):
            ratio = s[ak]["median"] / s[lk]["median"]
            name = ANCHOR_NAMES[ak.split(".", 1)[1]]
            if ak == "first_warm.raw" or ak == "first_cold.raw":
                name = "raw np.fromfile of 32 MiB"
            out.append(
                f"| {label if i == 0 else ''} | {fmt(s[lk]) if i == 0 else ''} | {name} | {fmt(s[ak])} | {ratio:.2f}× |"
            )
    return "\n".join(out)


def extras(res: dict[str, Any]) -> str:
    s = res["summary_s"]
    lines = [
        f"lowbit open only (load, no tensor read): warm {_fmt_ms(s['open_warm.lowbit'])} ms, "
        f"cold {_fmt_ms(s['open_cold.lowbit'])} ms",
        "page cache after the drop (mincore, fraction of the file still cached, median): "
        + ", ".join(
            f"{k} {statistics.median(v2):.3f}" if (v2 := [x for x in v if x is not None]) else f"{k} n/a"
            for k, v in res["cached_fraction_after_drop"].items()
        ),
        "peak RSS growth during open + first tensor (fresh process, median MiB): "
        + ", ".join(f"{fmt} {statistics.median(x['peak_delta_mib'] for x in v):.1f}" for fmt, v in res["rss"].items())
        + f" (first tensor {res['tensor_bytes'] / 2**20:.0f} MiB, file {res['file_bytes']['lowbit'] / 2**20:.0f} MiB)",
        "file sizes, bytes: " + ", ".join(f"{k} {v}" for k, v in res["file_bytes"].items()),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--rss-child"]:
        rss_child(argv[1], argv[2], argv[3])
        return 0
    default_dir = Path(__file__).resolve().parent.parent / "target" / "bench-lbf"
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--size-gib", type=float, default=1.0, help="tensor data per file, GiB (default 1)")
    ap.add_argument("--repeat", type=int, default=5, help="rounds; medians are reported (default 5)")
    ap.add_argument("--dir", type=Path, default=default_dir, help=f"where the files go (default {default_dir})")
    ap.add_argument("--json", nargs="?", const="-", metavar="PATH", help="dump everything as JSON (to PATH, or stdout)")
    args = ap.parse_args(argv)
    if args.repeat < 1 or args.size_gib <= 0:
        ap.error("--repeat must be ≥ 1 and --size-gib > 0")
    args.dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=args.dir))
    to_stderr = args.json == "-"

    def log(msg: str) -> None:
        print(msg, file=sys.stderr if to_stderr else sys.stdout, flush=True)

    try:
        info = machine_info(workdir)
        res = run(args.size_gib, args.repeat, workdir, log)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    info["loadavg_at_end"] = os.getloadavg()
    res["machine"] = info
    res["command"] = " ".join([os.path.relpath(sys.executable), *sys.argv])
    log("")
    log(f"{res['n_tensors']} × float16 {ROWS}×{COLS} ({res['data_bytes'] / 2**30:.2f} GiB), {args.repeat} rounds")
    log(table(res))
    log(extras(res))
    log(info["df"])
    log(f"load average (1, 5, 15 min) at start {info['loadavg_at_start']}, at end {info['loadavg_at_end']}")
    if args.json is not None:
        text = json.dumps(res, indent=1)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
