"""LBF through the Python API: save/load round trips, golden files, views and their lifetime,
bad input, checksums, concurrency, and what happens to a mapped file that shrinks."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lbf_reference as ref
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lowbit
from conftest import AFFINE_TYPES, FLOAT_TYPES, GGML_TYPES, ROOT
from lowbit.cli import main

VECTORS = ROOT / "formats" / "vectors"


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _sample(path: Path) -> dict[str, Any]:
    """Save one tensor of every qtype plus float arrays; return what was saved."""
    r = _rng()
    tensors: dict[str, Any] = {}
    for q in [*GGML_TYPES, *FLOAT_TYPES, *(f"{a}-g64" for a in AFFINE_TYPES), "int3-row-sym"]:
        tensors[f"w.{q}"] = lowbit.quantize(r.standard_normal((4, 512), dtype=np.float32), q)
    tensors["norm"] = r.standard_normal(512).astype(np.float32)
    tensors["emb16"] = r.standard_normal((3, 5, 7)).astype(np.float16)
    tensors["empty"] = np.zeros((0, 64), np.float32)
    lowbit.save(path, tensors, {"model.config": json.dumps({"hidden_size": 512}), "seed": 7})
    return tensors


def _same(a: Any, b: Any) -> None:
    """`b` (loaded) holds what `a` (saved) held. f32/f16 tensors load as numpy arrays, also
    when they were saved as QTensors."""
    if isinstance(a, lowbit.QTensor) and a.qtype in ("f32", "f16"):
        assert isinstance(b, np.ndarray) and b.shape == a.shape and b.dtype == np.dtype(a.qtype.replace("f", "float"))
        assert b.tobytes() == a.data.tobytes()
    elif isinstance(a, lowbit.QTensor):
        assert isinstance(b, lowbit.QTensor)
        assert (a.qtype, a.shape, a.group_size, a.symmetric) == (b.qtype, b.shape, b.group_size, b.symmetric)
        np.testing.assert_array_equal(a.data, b.data)
    else:
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


def test_round_trip_every_qtype(tmp_path: Path) -> None:
    p = tmp_path / "m.lbf"
    saved = _sample(p)
    with lowbit.load(p) as f:
        assert list(f) == list(saved)
        for name, t in saved.items():
            _same(t, f[name])
        assert f.metadata == {
            "lbf.writer": f"lowbit {lowbit.__version__}",
            "model.config": '{"hidden_size": 512}',
            "seed": 7,
        }
        assert f.metadata_types["seed"] == "i64"
        info = f.info("w.q4_k")
        assert info.shape == (4, 512) and info.bits_per_weight == 4.5 and info.parts[0].kind == "data"
        assert all(p.offset % 64 == 0 for t in f.tensors for p in t.parts)
        loaded = f["w.int4-g64"]
        assert isinstance(loaded, lowbit.QTensor)
        np.testing.assert_array_equal(lowbit.dequantize(loaded), lowbit.dequantize(saved["w.int4-g64"]))
        f.verify()
    assert os.listdir(tmp_path) == ["m.lbf"]


def test_rust_writer_output_is_read_by_the_reference(tmp_path: Path) -> None:
    """The independent pure-Python reader accepts what lowbit writes, field for field."""
    p = tmp_path / "m.lbf"
    saved = _sample(p)
    data = p.read_bytes()
    rf = ref.read_lbf(data)
    ref.verify(data)
    assert [t.name for t in rf.tensors] == list(saved)
    for i, t in enumerate(rf.tensors):
        parts = ref.read_tensor(rf, data, i)
        want = saved[t.name]
        raw = want.data.tobytes() if isinstance(want, lowbit.QTensor) else want.tobytes()
        assert parts[0] == raw


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    meta=st.dictionaries(
        st.text(min_size=1, max_size=20).filter(lambda k: "\0" not in k and not k.startswith("lbf.")),
        st.one_of(
            st.booleans(),
            st.integers(-(2**63), 2**64 - 1),
            st.floats(allow_nan=False),
            st.text(max_size=50),
            st.lists(st.integers(-(2**63), 2**63 - 1), max_size=5),
            st.lists(st.text(max_size=5), max_size=5),
            st.lists(st.lists(st.booleans(), max_size=3), max_size=3),
        ),
        max_size=8,
    ),
    shapes=st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=3), max_size=6),
)
def test_round_trip_random(tmp_path: Path, meta: dict[str, Any], shapes: list[list[int]]) -> None:
    p = tmp_path / "r.lbf"
    r = _rng(len(shapes))
    tensors = {f"t{i}": r.standard_normal(s).astype(np.float16 if i % 2 else np.float32) for i, s in enumerate(shapes)}
    lowbit.save(p, tensors, meta)
    with lowbit.load(p) as f:
        got = {k: v for k, v in f.metadata.items() if k != "lbf.writer"}
        assert set(got) == set(meta)
        for k, v in meta.items():
            g = got[k]
            if isinstance(v, list) and v and isinstance(v[0], list):
                assert [list(x) for x in g] == v
            elif isinstance(v, list):
                assert list(g) == v
            elif type(v) is int and v > 2**63 - 1:
                # A Python int beyond i64 is stored as u64 and reads back as that type (np.uint64).
                assert g == v and type(g) is np.uint64
            else:
                assert g == v and type(g) is type(v)
        for k, t in tensors.items():
            _same(t, f[k])


def _golden() -> dict[str, Any]:
    return dict(json.loads((VECTORS / "vectors.json").read_text())["files"])


@pytest.mark.parametrize("name", sorted(_golden()))
def test_golden_files(name: str) -> None:
    """Files made by the reference writer load with the values vectors.json records; ggml tensors
    dequantize to exactly what the gguf package computes."""
    want = _golden()[name]
    with lowbit.load(VECTORS / name) as f:
        assert f.header["file_len"] == want["size"]
        for m in want["metadata"]:
            typ = m["type"]
            assert f.metadata_types[m["key"]] == typ or typ == "array", m["key"]
            assert m["key"] in f.metadata
            if typ in ("string", "bool") or typ[0] in "ui":
                assert f.metadata[m["key"]] == m["value"], m["key"]
        for t in want["tensors"]:
            info = f.info(t["name"])
            assert info.shape == tuple(t["dims"])
            assert [(p.kind, p.offset, p.length, p.crc32) for p in info.parts] == [
                (p["name"], p["offset"], p["length"], p["crc"]) for p in t["parts"]
            ]
            parts = f.parts(t["name"])
            for p in t["parts"]:
                assert hashlib.sha256(parts[p["name"]].tobytes()).hexdigest() == p["sha256"]
            if {p["name"] for p in t["parts"]} == {"data", "perm"}:
                q = f[t["name"]]
                assert isinstance(q, lowbit.QTensor) and q.perm is not None
                assert q.perm.astype("<u4").tobytes() == parts["perm"].tobytes()
                continue
            if "act" in t:  # LBF 1.2 W8A8: a QTensor carrying its activation quantization
                q = f[t["name"]]
                step = ref.float_from_bits("f32", int(t["act"]["step"], 16))
                act = lowbit.ActQuant({1: "static", 2: "dynamic"}[t["act"]["mode"]], step)  # type: ignore[arg-type]
                assert isinstance(q, lowbit.QTensor) and q.act == act
                assert (q.qtype.split("-")[0], q.symmetric, q.perm) == ("int8", True, None)
                assert q.data.tobytes() == parts["data"].tobytes() and q.nbytes == t["parts"][0]["length"] + 8
                continue
            if "outlier_rows" in parts:  # a QTensor carrying its sparse sidecar, read from the parts' bytes
                q = f[t["name"]]
                assert isinstance(q, lowbit.QTensor) and q.outliers is not None
                ptr = np.frombuffer(parts["outlier_rows"].tobytes(), "<u8").astype(np.int64)
                cols = np.frombuffer(parts["outlier_cols"].tobytes(), "<u4").astype(np.int64)
                vals = np.frombuffer(parts["outlier_vals"].tobytes(), "<f2").astype(np.float32)
                assert q.outliers.row_ptr.tolist() == ptr.tolist() and q.outliers.cols.tolist() == cols.tolist()
                want_deq = lowbit.dequantize(q.with_outliers(None))
                stored = want_deq if q.perm is None else want_deq[:, q.perm]
                rows_of = np.repeat(np.arange(ptr.size - 1), np.diff(ptr))
                stored[rows_of, cols] += vals
                if q.perm is not None:
                    want_deq[:, q.perm] = stored
                np.testing.assert_array_equal(lowbit.dequantize(q), want_deq)
                continue
            assert len(t["parts"]) == 1, t["name"]
            v = f[t["name"]]
            if "values" in t:
                assert isinstance(v, np.ndarray)
                np.testing.assert_array_equal(v.reshape(-1), np.array(t["values"], dtype=v.dtype))
            if "gguf_dequant_sha256" in t:
                assert isinstance(v, lowbit.QTensor)
                got = lowbit.dequantize(v).astype(np.float32).tobytes()
                assert hashlib.sha256(got).hexdigest() == t["gguf_dequant_sha256"], t["name"]
        f.verify()


def test_views_outlive_close_and_are_read_only(tmp_path: Path) -> None:
    p = tmp_path / "m.lbf"
    saved = _sample(p)
    f = lowbit.load(p)
    norm = f["norm"]
    q = f["w.q4_k"]
    assert isinstance(norm, np.ndarray) and isinstance(q, lowbit.QTensor)
    with pytest.raises(ValueError):
        norm[0] = 1.0
    with pytest.raises(ValueError):
        norm.flags.writeable = True
    f.close()
    assert f.closed
    del f
    # The map stays alive through the views.
    np.testing.assert_array_equal(norm, saved["norm"])
    np.testing.assert_array_equal(lowbit.dequantize(q), lowbit.dequantize(saved["w.q4_k"]))


def test_closed_file_raises(tmp_path: Path) -> None:
    p = tmp_path / "m.lbf"
    _sample(p)
    with lowbit.load(p) as f:
        pass
    with pytest.raises(lowbit.ClosedError):
        f["norm"]
    with pytest.raises(lowbit.ClosedError):
        f.verify()


def test_typed_getters(tmp_path: Path) -> None:
    p = tmp_path / "m.lbf"
    lowbit.save(p, {}, {"s": "x", "i": np.uint16(3), "f": np.float32(0.5), "b": False, "a": [1, 2]})
    with lowbit.load(p) as f:
        assert (f.get_str("s"), f.get_int("i"), f.get_float("f"), f.get_bool("b")) == ("x", 3, 0.5, False)
        assert list(f.get_array("a")) == [1, 2]
        assert f.metadata_types == {
            "lbf.writer": "string",
            "s": "string",
            "i": "u16",
            "f": "f32",
            "b": "bool",
            "a": "array[i64]",
        }
        with pytest.raises(lowbit.MetadataTypeError, match="'s' is string, not an integer"):
            f.get_int("s")
        with pytest.raises(TypeError):
            f.get_str("i")
        with pytest.raises(lowbit.MetadataTypeError):
            f.get_bool("a")
        with pytest.raises(KeyError):
            f.get_str("missing")
        with pytest.raises(lowbit.NotFoundError):
            f["missing"]


def test_checksum_mismatch_is_lazy(tmp_path: Path) -> None:
    p = tmp_path / "m.lbf"
    _sample(p)
    with lowbit.load(p) as f:
        off = f.info("w.q6_k").parts[0].offset
    b = bytearray(p.read_bytes())
    b[off + 3] ^= 0x10
    p.write_bytes(bytes(b))
    with lowbit.load(p) as f:  # opening reads only the header and index
        with pytest.raises(lowbit.ChecksumError, match=r"w\.q6_k"):
            f["w.q6_k"]
        assert isinstance(f["w.q4_k"], lowbit.QTensor)
        with pytest.raises(lowbit.ChecksumError, match="1 tensor"):
            f.verify()
    assert main(["verify", str(p)]) == 1


def _patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    """Overwrite a field and recompute the header CRC so only the field is wrong."""
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, value)
    index_offset = struct.unpack_from("<Q", b, 16)[0]
    crc = zlib.crc32(bytes(b[:60]) + bytes(b[index_offset:]))
    struct.pack_into("<I", b, 60, crc)
    return bytes(b)


def test_bad_files(tmp_path: Path) -> None:
    p = tmp_path / "m.lbf"
    _sample(p)
    good = p.read_bytes()
    cases: dict[str, tuple[bytes, type[Exception], str]] = {
        "empty": (b"", lowbit.FormatError, "empty"),
        "truncated": (good[:-1], lowbit.FormatError, "truncated"),
        "bad magic": (b"GGUF" + good[4:], lowbit.FormatError, "magic"),
        "future major": (_patch(good, 8, "<H", 2), lowbit.VersionError, "newer lowbit"),
        "tensor count": (_patch(good, 40, "<Q", 2**64 - 1), lowbit.FormatError, "tensor count"),
        "crc": (good[:60] + bytes([good[60] ^ 1]) + good[61:], lowbit.ChecksumError, "header"),
    }
    for name, (data, exc, match) in cases.items():
        bad = tmp_path / f"{name}.lbf"
        bad.write_bytes(data)
        with pytest.raises(exc, match=match) as e:
            lowbit.load(bad)
        assert isinstance(e.value, lowbit.LowbitError) and isinstance(e.value, ValueError), name
        assert str(bad) in str(e.value) or name == "crc"
    with pytest.raises(FileNotFoundError):
        lowbit.load(tmp_path / "missing.lbf")
    with pytest.raises(lowbit.FormatError) as fe:
        (tmp_path / "trunc.lbf").write_bytes(good[:100])
        lowbit.load(tmp_path / "trunc.lbf")
    assert fe.value.offset == 48  # the file_len field


def test_save_rejects_bad_input_and_leaves_nothing(tmp_path: Path) -> None:
    p = tmp_path / "out.lbf"
    p.write_bytes(b"old")
    q = lowbit.quantize(_rng().standard_normal((2, 256), dtype=np.float32), "q4_k")
    bad_calls: list[tuple[dict[Any, Any], dict[Any, Any], type[Exception]]] = [
        ({"a": q, "b": "not a tensor"}, {}, TypeError),  # fails after "a" was written
        ({"a": np.zeros(4, np.float64)}, {}, TypeError),
        ({"a": np.float32(1.0) * np.ones(())}, {}, TypeError),
        ({"a": np.ones((), np.float32)}, {}, lowbit.ShapeError),
        ({"": q}, {}, lowbit.ParameterError),
        ({"a\0": q}, {}, lowbit.ParameterError),
        ({1: q}, {}, TypeError),
        ({}, {"lbf.other": "me"}, lowbit.ParameterError),
        ({}, {"d": {"nested": 1}}, TypeError),
        ({}, {"": 1}, lowbit.ParameterError),
        ({}, {"big": 2**64}, lowbit.ParameterError),
        ({}, {"mixed": [1, "a"]}, TypeError),
        ({}, {"deep": [[[[[1]]]]]}, lowbit.ParameterError),
        ({}, {"obj": object()}, TypeError),
        ({}, {"arr2d": np.zeros((2, 2))}, lowbit.ShapeError),
    ]
    for tensors, meta, exc in bad_calls:
        with pytest.raises(exc):
            lowbit.save(p, tensors, meta)
        assert p.read_bytes() == b"old"
        assert os.listdir(tmp_path) == ["out.lbf"], (tensors, meta)
    with pytest.raises(FileNotFoundError):
        lowbit.save(tmp_path / "no" / "x.lbf", {"a": q})
    with pytest.raises(lowbit.ParameterError):
        lowbit.save(tmp_path, {"a": q})


def test_save_refuses_to_overwrite_its_input(tmp_path: Path) -> None:
    p = tmp_path / "m.lbf"
    _sample(p)
    before = p.read_bytes()
    with lowbit.load(p) as f:
        with pytest.raises(lowbit.ParameterError, match="also an input"):
            lowbit.save(p, {"w": f["w.q4_k"]})
        with pytest.raises(lowbit.ParameterError, match="also an input"):
            norm = f["norm"]
            assert isinstance(norm, np.ndarray)
            lowbit.save(p, {"n": norm[1:]})  # a slice of a view is still the file
        lowbit.save(tmp_path / "copy.lbf", dict(f.items()))
    assert p.read_bytes() == before
    with lowbit.load(tmp_path / "copy.lbf") as c, lowbit.load(p) as f:
        for k in f:
            _same(f[k], c[k])


def test_interrupt_between_tensors_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C arrives as KeyboardInterrupt between Rust calls, after some tensors were written to
    the temporary file: the writer is aborted, the old destination stays."""
    p = tmp_path / "out.lbf"
    p.write_bytes(b"old")
    real = lowbit._core.LbfWriter
    calls: list[str] = []

    class Interrupted:
        def __init__(self, *args: Any) -> None:
            self._w = real(*args)

        def add_tensor(self, *args: Any) -> None:
            calls.append(args[0])
            if len(calls) == 3:
                raise KeyboardInterrupt
            self._w.add_tensor(*args)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._w, name)

    monkeypatch.setattr(lowbit._core, "LbfWriter", Interrupted)
    big = {f"t{i}": np.ones(1 << 16, np.float32) for i in range(5)}
    with pytest.raises(KeyboardInterrupt):
        lowbit.save(p, big)
    assert calls == ["t0", "t1", "t2"]
    assert os.listdir(tmp_path) == ["out.lbf"] and p.read_bytes() == b"old"


def test_concurrent_readers(tmp_path: Path) -> None:
    p = tmp_path / "m.lbf"
    saved = _sample(p)
    names = [k for k, v in saved.items() if isinstance(v, lowbit.QTensor) and v.qtype not in ("f32", "f16")]
    want = {k: lowbit.dequantize(saved[k]) for k in names}
    shared = lowbit.load(p)

    def work(i: int) -> int:
        f = shared if i % 2 else lowbit.load(p)
        for k in names[i % 3 :: 2]:
            np.testing.assert_array_equal(lowbit.dequantize(f[k]), want[k])  # type: ignore[arg-type]
        f.verify()
        return 1

    with ThreadPoolExecutor(8) as ex:
        assert sum(ex.map(work, range(32))) == 32
    shared.close()


def _run_child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, RAYON_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_file_shrunk_after_mapping_kills_only_the_reader(tmp_path: Path) -> None:
    """Documented behaviour (LBF.md §10): a reader touching pages a truncation removed gets SIGBUS;
    the process that truncated (here the parent) is unaffected."""
    p = tmp_path / "big.lbf"
    lowbit.save(p, {"a": np.ones(1 << 20, np.float32), "b": np.ones(1 << 20, np.float32)})
    child = """
        import sys, os, lowbit
        f = lowbit.load(sys.argv[1])
        os.truncate(sys.argv[1], 4096)      # another writer shrinks the file behind our back
        v = f.parts("b")                     # checksumming touches the lost pages
        print("survived", file=sys.stderr)
    """
    r = _run_child(child, str(p))
    assert r.returncode == -7, (r.returncode, r.stderr)  # SIGBUS
    assert "survived" not in r.stderr
    assert os.path.getsize(p) == 4096  # and the parent is fine


def test_hostile_counts_do_not_allocate(tmp_path: Path) -> None:
    """Under an address-space limit of what the process already uses + 256 MiB, hostile counts
    and lengths give FormatError: nothing is allocated in proportion to an unchecked count."""
    p = tmp_path / "m.lbf"
    lowbit.save(p, {"a": np.ones(16, np.float32)}, {"k": [1, 2, 3], "s": "text"})
    good = p.read_bytes()
    with lowbit.load(p) as f:
        index = f.header["index_offset"]
    # Field offsets: the first metadata key's length, its value length, the array count.
    key_len = index
    first_value_len = index + 8 + len("lbf.writer") + 4
    cases = {
        "n_metadata": _patch(good, 32, "<Q", 2**64 - 1),
        "n_tensors": _patch(good, 40, "<Q", 2**40),
        "key length": _patch(good, key_len, "<Q", 2**62),
        "value length": _patch(good, first_value_len, "<Q", 2**63),
    }
    for name, data in cases.items():
        (tmp_path / f"{name}.lbf").write_bytes(data)
    child = """
        import resource, sys, glob, lowbit
        vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
        resource.setrlimit(resource.RLIMIT_AS, (vm + (256 << 20), vm + (256 << 20)))
        big = bytearray(1 << 30) if len(sys.argv) > 2 else None   # proves the limit bites
        for path in sorted(glob.glob(sys.argv[1] + "/*.lbf")):
            try:
                lowbit.load(path)
                print("loaded", path)
            except lowbit.FormatError as e:
                print("rejected", path, e.offset)
    """
    r = _run_child(child, str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("rejected") == len(cases), r.stdout
    assert "loaded" in r.stdout  # the valid file still loads under the limit
    r = _run_child(child, str(tmp_path), "prove")
    assert r.returncode != 0 and "MemoryError" in r.stderr


def test_cli_inspect_and_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "m.lbf"
    saved = _sample(p)
    assert main(["inspect", str(p)]) == 0
    out = capsys.readouterr().out
    assert "LBF 1.0" in out and "w.q4_k" in out and "int4-g64" in out and "model.config" in out
    assert "bits per weight" in out
    assert main(["inspect", "--json", str(p)]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in payload["tensors"]] == list(saved)
    values = sum(int(np.prod(t["shape"])) for t in payload["tensors"])
    assert payload["totals"]["values"] == values
    nbytes = sum(t["nbytes"] for t in payload["tensors"])
    assert payload["totals"]["bits_per_weight"] == pytest.approx(8 * nbytes / values)
    assert main(["verify", str(p)]) == 0
    assert "OK" in capsys.readouterr().out
    (tmp_path / "bad.lbf").write_bytes(b"nope")
    assert main(["inspect", str(tmp_path / "bad.lbf")]) == 2
    assert "invalid LBF file" in capsys.readouterr().err
    r = subprocess.run(
        [sys.executable, "-m", "lowbit", "verify", str(tmp_path / "none.lbf")], capture_output=True, text=True
    )
    assert r.returncode == 2 and "No such file" in r.stderr


def test_float_metadata_keeps_its_type(tmp_path: Path) -> None:
    p = tmp_path / "m.lbf"
    arrays: dict[str, npt.NDArray[Any]] = {
        d: np.arange(3).astype(d) for d in ["u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f4", "f8"]
    }
    lowbit.save(p, {}, {f"a.{k}": v for k, v in arrays.items()})
    with lowbit.load(p) as f:
        for k, v in arrays.items():
            got = f.metadata[f"a.{k}"]
            assert got.dtype == v.dtype and list(got) == list(v)


def test_metadata_copies_between_files_with_its_types(tmp_path: Path) -> None:
    src = VECTORS / "basic.lbf"
    with lowbit.load(src) as f:
        meta, types = f.metadata, f.metadata_types
    lowbit.save(tmp_path / "copy.lbf", {}, meta)
    with lowbit.load(tmp_path / "copy.lbf") as c:
        assert c.metadata["lbf.writer"] == f"lowbit {lowbit.__version__}"

        # An empty list has no element type: empty string/bool/nested arrays come back as [] and
        # are stored as array[i64]. Everything else keeps its type.
        def has_empty(v: Any) -> bool:
            return isinstance(v, list) and (not v or any(has_empty(x) for x in v))

        empty = {k for k, v in meta.items() if has_empty(v)}
        assert empty
        assert {k: t for k, t in c.metadata_types.items() if k not in empty | {"lbf.writer"}} == {
            k: t for k, t in types.items() if k not in empty
        }


def test_disk_full_leaves_destination_and_no_temporary(tmp_path: Path) -> None:
    """A write error mid-file (here RLIMIT_FSIZE, as a full disk would) is an OSError; the old
    destination stays and nothing else is left in the folder."""
    dest = tmp_path / "model.lbf"
    dest.write_bytes(b"old")
    child = """
        import resource, signal, sys, numpy as np, lowbit
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # get EFBIG instead of the signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        tensors = {f"t{i}": np.ones(1 << 16, np.float32) for i in range(8)}   # 2 MiB in all
        try:
            lowbit.save(sys.argv[1], tensors)
        except OSError as e:
            print("OSError", e.errno)
    """
    r = _run_child(child, str(dest))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["OSError", "27"]  # EFBIG
    assert os.listdir(tmp_path) == ["model.lbf"] and dest.read_bytes() == b"old"


@pytest.mark.parametrize("qtype", ["int8-g64", "int8-g32-sym", "int4-row", "int3-g64", "int2-g32-sym"])
def test_row_layout_locates_codes_scales_and_zeros(tmp_path: Path, qtype: str) -> None:
    """The byte ranges TensorInfo.row_layout reports are where the scales (and, for int8, codes
    and zeros) really are: rebuilding the values from them gives `dequantize` exactly."""
    x = _rng(3).standard_normal((3, 192), dtype=np.float32)
    qt = lowbit.quantize(x, qtype)
    lowbit.save(tmp_path / "m.lbf", {"w": qt})
    with lowbit.load(tmp_path / "m.lbf") as f:
        layout = f.info("w").row_layout
    assert layout is not None and layout["zeros"][1] == qt.data.shape[1]
    assert (layout["zeros"][0] == layout["zeros"][1]) == bool(qt.symmetric)
    a, b = layout["scales"]
    scales = qt.data[:, a:b].copy().view(np.float16).astype(np.float32)
    group = qt.group_size or 192
    assert scales.shape == (3, -(-192 // group)) and np.all(np.isfinite(scales)) and np.all(scales >= 0)
    if qt.base_qtype == "int8":
        codes = qt.data[:, layout["codes"][0] : layout["codes"][1]].astype(np.int32)
        z0, z1 = layout["zeros"]
        zeros = qt.data[:, z0:z1].astype(np.int32) if z1 > z0 else np.full(scales.shape, 128, np.int32)
        rebuilt = np.repeat(scales, group, axis=1)[:, :192] * (codes - np.repeat(zeros, group, axis=1)[:, :192])
        np.testing.assert_array_equal(rebuilt.astype(np.float32), lowbit.dequantize(qt))


# ------------------------------------------------------------------ W8A8 (act_quant part, LBF 1.2)


def _w8a8_tensors() -> dict[str, Any]:
    r = _rng(5)
    w = r.standard_normal((4, 96), dtype=np.float32)
    return {
        "static": lowbit.quantize(w, "int8-row-sym").with_act(lowbit.ActQuant("static", 0.0123)),
        "dynamic": lowbit.quantize(w[:3, :64], "int8-g64-sym").with_act(lowbit.ActQuant("dynamic")),
        "plain": lowbit.quantize(w, "int8-row-sym"),
    }


def test_w8a8_written_by_lowbit_is_read_by_the_reference(tmp_path: Path) -> None:
    """lowbit writes W8A8 weights as LBF 1.2 with the act_quant bytes of §5; the independent
    reference reads them and rewrites exactly the same bytes."""
    p = tmp_path / "w8a8.lbf"
    saved = _w8a8_tensors()
    lowbit.save(p, saved)
    data = p.read_bytes()
    rf = ref.verify(data)
    assert rf.minor == 2
    for i, t in enumerate(rf.tensors):
        parts = ref.read_tensor(rf, data, i)
        q = saved[t.name]
        assert parts[ref.PART_DATA] == q.data.tobytes()
        if q.act is None:
            assert list(parts) == [ref.PART_DATA]
        else:
            mode, step = ref.ACT_QUANT.unpack(parts[ref.PART_ACT_QUANT])
            assert (mode, step) == ({"static": ref.ACT_STATIC, "dynamic": ref.ACT_DYNAMIC}[q.act.mode], q.act.step)
    assert ref.write_lbf(None, rf.metadata, ref.extract_tensors(rf, data)) == data
    with lowbit.load(p) as f:
        for name, q in saved.items():
            _same(q, f[name])
            assert f[name].act == q.act  # type: ignore[union-attr]


def test_golden_w8a8_rewritten_identically_by_lowbit(tmp_path: Path) -> None:
    """lowbit's writer, given what lowbit's reader read from the reference's W8A8 golden file
    (tensors with their parts, metadata), writes the same bytes."""
    src = VECTORS / "w8a8.lbf"
    dest = tmp_path / "copy.lbf"
    with lowbit.load(src) as f:
        w = lowbit._core.LbfWriter(str(dest), [str(src)])
        for t in f.tensors:
            parts = f.parts(t.name)
            w.add_tensor(
                t.name, t.qtype, list(t.shape), [(p.kind, parts[p.kind]) for p in t.parts], t.group_size, t.symmetric
            )
        w.finish([(k, f.metadata_types[k], v) for k, v in f.metadata.items()])
    assert dest.read_bytes() == src.read_bytes()


def test_cli_inspect_shows_act(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """inspect prints each W8A8 tensor's activation mode (and static step) and nothing for the others;
    --json gives them as "act"."""
    p = tmp_path / "w8a8.lbf"
    saved = _w8a8_tensors()
    lowbit.save(p, saved)
    assert main(["inspect", str(p)]) == 0
    lines = {line.split()[1]: line for line in capsys.readouterr().out.splitlines() if line[:6].strip().isdigit()}
    assert lines["static"].endswith(f"data,act_quant  act static {saved['static'].act.step:.6g}")
    assert "0.0123" in lines["static"]
    assert lines["dynamic"].endswith("data,act_quant  act dynamic")
    assert lines["plain"].endswith("data")
    assert main(["inspect", "--json", str(p)]) == 0
    acts = {t["name"]: t["act"] for t in json.loads(capsys.readouterr().out)["tensors"]}
    assert acts == {
        "static": {"mode": "static", "step": saved["static"].act.step},
        "dynamic": {"mode": "dynamic"},
        "plain": None,
    }
    with lowbit.load(p) as f:
        at = next(q.offset for q in f.info("static").parts if q.kind == "act_quant")
    b = bytearray(p.read_bytes())
    b[at] = 3  # mode 3: the index is intact, the part is not
    p.write_bytes(bytes(b))
    assert main(["inspect", str(p)]) == 0  # inspect still lists the file
    assert "act invalid" in capsys.readouterr().out
