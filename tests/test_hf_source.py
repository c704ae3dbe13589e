"""Hugging Face checkpoints as a conversion `Source` (`lowbit.conversion.hf_source`).

Checkpoint directories are built here: shards written by the official `safetensors` serializer,
JSON files by `json`. Expected tensor values are computed independently: F16 with numpy's cast,
BF16 with gguf's numpy BF16 quantizer/dequantizer. The Hub is never contacted:
`huggingface_hub.snapshot_download` is monkeypatched, or run offline in a subprocess.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import huggingface_hub
import numpy as np
import numpy.typing as npt
import pytest
import safetensors
from gguf import GGMLQuantizationType as GT
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize
from huggingface_hub import errors as hf_errors

from lowbit.conversion import hf_source
from lowbit.conversion.hf_source import HUB_ALLOW_PATTERNS, HFCheckpoint, open_hf_checkpoint, resolve_source
from lowbit.errors import FormatError, ParameterError, UnsupportedError

CONFIG = {"architectures": ["LlamaForCausalLM"], "hidden_size": 8, "num_hidden_layers": 12}
GEN_CONFIG = {"bos_token_id": 1, "eos_token_id": 2}
TOKENIZER_JSON = '{\n  "version": "1.0",\n  "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}\n}\n'
TOKENIZER_CONFIG = {"chat_template": "{{ messages }}", "eos_token": "</s>"}
_OFFICIAL_DTYPE = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


class Weight:
    """A tensor to store: its values, the dtype to store them as, the stored bytes and the float32
    values a reader must return (computed with numpy / gguf, not lowbit)."""

    def __init__(self, values: npt.NDArray[np.float32], dtype: str) -> None:
        self.dtype = dtype
        self.shape = values.shape
        if dtype == "F32":
            self.raw: npt.NDArray[Any] = values.astype("<f4")
            self.expected = self.raw.astype(np.float32)
        elif dtype == "F16":
            self.raw = values.astype("<f2")
            self.expected = self.raw.astype(np.float32)
        else:
            q = gguf_quantize(values.reshape(1, -1), GT.BF16)
            self.raw = np.asarray(q).view("<u2").reshape(values.shape)
            self.expected = np.asarray(gguf_dequantize(q, GT.BF16), np.float32).reshape(values.shape)


def write_shard(path: Path, weights: dict[str, Weight]) -> None:
    specs = {
        n: safetensors.TensorSpec(
            dtype=_OFFICIAL_DTYPE[w.dtype], shape=list(w.shape), data_ptr=w.raw.ctypes.data, data_len=w.raw.nbytes
        )
        for n, w in weights.items()
    }
    path.write_bytes(safetensors.serialize(specs, {"format": "pt"}))


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj), encoding="utf-8")


def llama_weights(layers: int = 12, seed: int = 0) -> dict[str, Weight]:
    r = np.random.default_rng(seed)
    dtypes = ["F32", "F16", "BF16"]
    out: dict[str, Weight] = {
        "model.embed_tokens.weight": Weight(r.standard_normal((16, 8)).astype(np.float32), "BF16")
    }
    for i in range(layers):
        for k, name in enumerate(("self_attn.q_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight")):
            shape = (8,) if name.endswith("norm.weight") else (8, 8)
            out[f"model.layers.{i}.{name}"] = Weight(r.standard_normal(shape).astype(np.float32), dtypes[(i + k) % 3])
    out["model.norm.weight"] = Weight(r.standard_normal(8).astype(np.float32), "F32")
    out["lm_head.weight"] = Weight(r.standard_normal((16, 8)).astype(np.float32), "F16")
    return out


def make_checkpoint(
    root: Path, shards: dict[str, dict[str, Weight]], index: dict[str, Any] | None = None, *, tokenizer: bool = True
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "config.json", CONFIG)
    if tokenizer:
        write_json(root / "generation_config.json", GEN_CONFIG)
        (root / "tokenizer.json").write_text(TOKENIZER_JSON, encoding="utf-8")
        write_json(root / "tokenizer_config.json", TOKENIZER_CONFIG)
    for fname, weights in shards.items():
        (root / fname).parent.mkdir(parents=True, exist_ok=True)
        write_shard(root / fname, weights)
    if index is not None:
        write_json(root / "model.safetensors.index.json", index)
    return root


def sharded(root: Path, n: int = 3) -> tuple[Path, dict[str, Weight]]:
    """A checkpoint whose tensors are dealt round-robin into `n` shards, with an index."""
    weights = llama_weights()
    names = list(weights)
    files = [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
    shards = {f: {m: weights[m] for m in names[k::n]} for k, f in enumerate(files)}
    weight_map = {m: files[i % n] for i, m in enumerate(names)}
    make_checkpoint(root, shards, {"metadata": {"total_size": 0}, "weight_map": weight_map})
    return root, weights


def assert_loads_exactly(ck: HFCheckpoint, weights: dict[str, Weight]) -> None:
    assert {t.name for t in ck.tensors} == set(weights)
    for t in ck.tensors:
        w = weights[t.name]
        assert (t.dtype, t.shape, t.nbytes) == (w.dtype, w.shape, w.raw.nbytes)
        got = t.load()
        assert got.dtype == np.float32 and got.flags.c_contiguous
        assert got.tobytes() == w.expected.tobytes(), t.name


# --------------------------------------------------------------------------------------------
# Opening checkpoints


def test_sharded_checkpoint_with_index(tmp_path: Path) -> None:
    root, weights = sharded(tmp_path / "ck")
    with open_hf_checkpoint(root) as ck:
        assert ck.kind == "hf" and ck.path == root
        assert ck.config == CONFIG and ck.generation_config == GEN_CONFIG
        assert ck.tokenizer_json == TOKENIZER_JSON  # verbatim text
        assert ck.tokenizer_config == TOKENIZER_CONFIG
        assert len(ck.shards) == 3
        assert_loads_exactly(ck, weights)
        # natural order: layer numbers ascend numerically (0, 1, 2, ..., 10, 11), not as strings
        layers = [int(t.name.split(".")[2]) for t in ck.tensors if t.name.startswith("model.layers.")]
        assert layers == sorted(layers) and layers[-1] == 11 and layers.index(10) > layers.index(9)
        names = [t.name for t in ck.tensors]
        assert (
            names.index("lm_head.weight")
            < names.index("model.embed_tokens.weight")
            < names.index("model.layers.0.input_layernorm.weight")
        )
        assert names[-1] == "model.norm.weight"


def test_single_file_checkpoint(tmp_path: Path) -> None:
    weights = llama_weights(layers=2)
    root = make_checkpoint(tmp_path / "ck", {"model.safetensors": weights}, tokenizer=False)
    with open_hf_checkpoint(root) as ck:
        assert ck.generation_config is None and ck.tokenizer_json is None and ck.tokenizer_config is None
        assert_loads_exactly(ck, weights)


def test_model_safetensors_wins_over_other_unindexed_files(tmp_path: Path) -> None:
    weights = llama_weights(layers=1)
    extra = {"adapter.weight": Weight(np.ones((2, 2), np.float32), "F32")}
    root = make_checkpoint(tmp_path / "ck", {"model.safetensors": weights, "adapter_model.safetensors": extra})
    with open_hf_checkpoint(root) as ck:
        assert_loads_exactly(ck, weights)


def test_several_files_without_index(tmp_path: Path) -> None:
    weights = llama_weights(layers=3)
    names = list(weights)
    root = make_checkpoint(
        tmp_path / "ck",
        {
            "part-a.safetensors": {n: weights[n] for n in names[::2]},
            "part-b.safetensors": {n: weights[n] for n in names[1::2]},
        },
    )
    with open_hf_checkpoint(root) as ck:
        assert len(ck.shards) == 2
        assert_loads_exactly(ck, weights)


def test_same_tensor_in_two_unindexed_files(tmp_path: Path) -> None:
    w = {"x": Weight(np.ones(4, np.float32), "F32")}
    root = make_checkpoint(tmp_path / "ck", {"a.safetensors": w, "b.safetensors": w})
    with pytest.raises(FormatError, match=r"tensor 'x' is in both a.safetensors and b.safetensors"):
        open_hf_checkpoint(root)


def test_index_may_name_shards_in_a_subfolder(tmp_path: Path) -> None:
    weights = llama_weights(layers=1)
    root = make_checkpoint(
        tmp_path / "ck",
        {"shards/one.safetensors": weights},
        {"weight_map": dict.fromkeys(weights, "shards/one.safetensors")},
    )
    with open_hf_checkpoint(root) as ck:
        assert_loads_exactly(ck, weights)


# --------------------------------------------------------------------------------------------
# Index defects


def _index_case(root: Path, case: str) -> None:
    a = {"a": Weight(np.ones(4, np.float32), "F32")}
    b = {"b": Weight(np.zeros(4, np.float32), "F32")}
    ab = {**a, **b}
    shards: dict[str, dict[str, Weight]] = {"s1.safetensors": a, "s2.safetensors": b}
    wm: dict[str, Any] = {"a": "s1.safetensors", "b": "s2.safetensors"}
    index: Any = {"weight_map": wm}
    if case == "no_weight_map":
        index = {"metadata": {}}
    elif case == "weight_map_list":
        index = {"weight_map": [["a", "s1.safetensors"]]}
    elif case == "empty_weight_map":
        index = {"weight_map": {}}
    elif case == "file_not_str":
        wm["a"] = 1
    elif case == "dotdot":
        wm["a"] = "../s1.safetensors"
    elif case == "dotdot_inside":
        wm["a"] = "sub/../s1.safetensors"
    elif case == "absolute":
        wm["a"] = str(root / "s1.safetensors")
    elif case == "backslash":
        wm["a"] = "sub\\s1.safetensors"
    elif case == "empty_component":
        wm["a"] = "sub//s1.safetensors"
    elif case == "dot_component":
        wm["a"] = "./s1.safetensors"
    elif case == "missing_shard":
        wm["a"] = "s3.safetensors"
    elif case == "shard_lacks_tensor":
        wm["c"] = "s1.safetensors"
    elif case == "tensor_in_other_shard":
        wm["b"] = "s1.safetensors"
        wm["c"] = "s2.safetensors"
        shards["s2.safetensors"] = {**b, "c": Weight(np.ones(2, np.float32), "F16")}
    elif case == "tensor_not_listed":
        del wm["b"]
        wm["a2"] = "s2.safetensors"
        shards["s2.safetensors"] = {**b, "a2": Weight(np.ones(2, np.float32), "F16")}
    elif case == "tensor_in_two_shards":
        shards["s2.safetensors"] = ab
    make_checkpoint(root, shards, None)
    path = root / "model.safetensors.index.json"
    if case == "duplicate_key":
        path.write_text('{"weight_map": {"a": "s1.safetensors", "a": "s2.safetensors", "b": "s2.safetensors"}}')
    elif case == "invalid_json":
        path.write_text('{"weight_map": {"a": "s1.safetensors",}}')
    else:
        write_json(path, index)


INDEX_CASES = [
    ("no_weight_map", "'weight_map' must be an object"),
    ("weight_map_list", "'weight_map' must be an object"),
    ("empty_weight_map", "'weight_map' is empty"),
    ("file_not_str", "weight_map['a'] must be a non-empty file name"),
    ("dotdot", "'../s1.safetensors' is not a plain relative path"),
    ("dotdot_inside", "'sub/../s1.safetensors' is not a plain relative path"),
    ("absolute", "is not a plain relative path"),
    ("backslash", "is not a plain relative path"),
    ("empty_component", "'sub//s1.safetensors' is not a plain relative path"),
    ("dot_component", "'./s1.safetensors' is not a plain relative path"),
    ("missing_shard", "shard s3.safetensors is missing"),
    ("shard_lacks_tensor", "puts tensor 'c' in shard s1.safetensors, which does not hold it"),
    ("tensor_in_other_shard", "shard s2.safetensors holds tensor 'b', which the index assigns to s1.safetensors"),
    ("tensor_not_listed", "shard s2.safetensors holds tensor 'b', which the index does not list"),
    ("tensor_in_two_shards", "tensor 'a' is in two shards: s1.safetensors and s2.safetensors"),
    ("duplicate_key", "duplicate key 'a'"),
    ("invalid_json", "invalid JSON"),
]


@pytest.mark.parametrize(("case", "needle"), INDEX_CASES, ids=[c for c, _ in INDEX_CASES])
def test_index_defects(tmp_path: Path, case: str, needle: str) -> None:
    root = tmp_path / "ck"
    _index_case(root, case)
    with pytest.raises(FormatError, match=re.escape(needle)):
        open_hf_checkpoint(root)


def test_malformed_shard_is_reported(tmp_path: Path) -> None:
    root = make_checkpoint(tmp_path / "ck", {})
    (root / "model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00[]")
    with pytest.raises(FormatError, match=r"model\.safetensors: header is a JSON list"):
        open_hf_checkpoint(root)


# --------------------------------------------------------------------------------------------
# JSON files, pickles, missing weights


@pytest.mark.parametrize(
    ("fname", "text", "needle"),
    [
        ("config.json", None, "config.json is missing"),
        ("config.json", '{"a": 1,', "invalid JSON"),
        ("config.json", "[1, 2]", "not an object"),
        ("config.json", '{"a": 1, "a": 2}', "duplicate key 'a'"),
        ("config.json", b'{"a": "\xff"}', "not valid UTF-8"),
        ("generation_config.json", "{", "invalid JSON"),
        ("tokenizer_config.json", '"text"', "not an object"),
        ("tokenizer.json", '{"model": ', "invalid JSON"),
    ],
)
def test_bad_json_files(tmp_path: Path, fname: str, text: str | bytes | None, needle: str) -> None:
    root = make_checkpoint(tmp_path / "ck", {"model.safetensors": llama_weights(layers=1)})
    if text is None:
        (root / fname).unlink()
    else:
        (root / fname).write_bytes(text.encode() if isinstance(text, str) else text)
    with pytest.raises(FormatError, match=re.escape(needle)) as ei:
        open_hf_checkpoint(root)
    assert fname in str(ei.value)


@pytest.mark.parametrize("pickle_name", ["pytorch_model.bin", "model.pt", "model.pth", "last.ckpt"])
def test_pickle_only_checkpoint_is_refused(tmp_path: Path, pickle_name: str) -> None:
    root = make_checkpoint(tmp_path / "ck", {})
    (root / pickle_name).write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(UnsupportedError, match=r"pickle checkpoints .* safetensors.*safe_serialization=True"):
        open_hf_checkpoint(root)


def test_pickles_next_to_safetensors_are_ignored(tmp_path: Path) -> None:
    weights = llama_weights(layers=1)
    root = make_checkpoint(tmp_path / "ck", {"model.safetensors": weights})
    (root / "pytorch_model.bin").write_bytes(b"garbage that would fail to unpickle")
    with open_hf_checkpoint(root) as ck:
        assert_loads_exactly(ck, weights)


def test_no_weights(tmp_path: Path) -> None:
    root = make_checkpoint(tmp_path / "ck", {})
    with pytest.raises(FormatError, match="no weights found"):
        open_hf_checkpoint(root)


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_hf_checkpoint(tmp_path / "missing")
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        open_hf_checkpoint(tmp_path / "f")


def test_unsupported_dtype_raises_on_load_only(tmp_path: Path) -> None:
    root = make_checkpoint(tmp_path / "ck", {})
    ids = np.arange(4, dtype=np.int32)
    spec = safetensors.TensorSpec(dtype="int32", shape=[4], data_ptr=ids.ctypes.data, data_len=ids.nbytes)
    (root / "model.safetensors").write_bytes(safetensors.serialize({"position_ids": spec}, None))
    with open_hf_checkpoint(root) as ck:
        (t,) = ck.tensors
        assert (t.name, t.dtype, t.shape) == ("position_ids", "I32", (4,))
        with pytest.raises(UnsupportedError, match="'position_ids' has dtype I32"):
            t.load()


# --------------------------------------------------------------------------------------------
# resolve_source


def test_resolve_local_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, weights = sharded(tmp_path / "ck")
    for src in (root, str(root)):
        with resolve_source(src) as ck:
            assert isinstance(ck, HFCheckpoint)
            assert_loads_exactly(ck, weights)
    with pytest.raises(ParameterError, match="revision='main' applies to Hugging Face repo ids"):
        resolve_source(root, revision="main")

    gguf = tmp_path / "model.bin"  # a GGUF file is recognised by its magic, not its name
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00")
    with pytest.raises(FormatError, match="GGUF"):  # opened as GGUF: truncated after the version
        resolve_source(gguf)
    seen: list[Path] = []

    def fake_open_gguf(p: Path) -> str:
        seen.append(p)
        return "opened"

    monkeypatch.setattr(hf_source, "_open_gguf", fake_open_gguf)
    assert resolve_source(str(gguf)) == "opened"  # type: ignore[comparison-overlap]
    assert seen == [gguf]


@pytest.mark.parametrize(
    ("fname", "exc", "needle"),
    [
        ("pytorch_model.bin", UnsupportedError, "pickle checkpoints"),
        ("model.ckpt", UnsupportedError, "pickle checkpoints"),
        ("model.safetensors", ParameterError, "pass the checkpoint directory"),
        ("notes.txt", FormatError, "neither a GGUF or LBF file"),
    ],
)
def test_resolve_files(tmp_path: Path, fname: str, exc: type[Exception], needle: str) -> None:
    p = tmp_path / fname
    p.write_bytes(b"\x80\x04abc")
    with pytest.raises(exc, match=needle):
        resolve_source(p)


class FakeHub:
    """Stands in for `huggingface_hub.snapshot_download`: records calls, returns `snapshot` or raises."""

    def __init__(self, snapshot: Path | None = None, error: BaseException | None = None) -> None:
        self.snapshot, self.error = snapshot, error
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        self.calls.append((args, kwargs))
        if self.error is not None:
            raise self.error
        assert self.snapshot is not None
        return str(self.snapshot)


def test_resolve_repo_id_downloads_and_opens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, weights = sharded(tmp_path / "snap")
    hub = FakeHub(root)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    monkeypatch.chdir(tmp_path)  # "HuggingFaceTB/SmolLM2-135M" is not a local path here
    with resolve_source("HuggingFaceTB/SmolLM2-135M", revision="v1.0") as ck:
        assert isinstance(ck, HFCheckpoint) and ck.path == root
        assert_loads_exactly(ck, weights)
    ((args, kwargs),) = hub.calls
    repo_id = args[0] if args else kwargs["repo_id"]
    assert repo_id == "HuggingFaceTB/SmolLM2-135M" and kwargs["revision"] == "v1.0"
    allow = kwargs["allow_patterns"]
    assert allow == HUB_ALLOW_PATTERNS
    for wanted in (
        "model.safetensors",
        "model-00001-of-00002.safetensors",
        "model.safetensors.index.json",
        "config.json",
    ):
        assert any(fnmatch.fnmatch(wanted, pat) for pat in allow), wanted
    ignore = kwargs["ignore_patterns"]
    assert any(fnmatch.fnmatch("original/consolidated.safetensors", pat) for pat in ignore)
    assert not any(fnmatch.fnmatch("model.safetensors", pat) for pat in ignore)
    for pickle in ("pytorch_model.bin", "model.pt", "model.pth", "model.ckpt", "pytorch_model-00001-of-00002.bin"):
        assert not any(fnmatch.fnmatch(pickle, pat) for pat in allow), pickle


@pytest.mark.parametrize(
    ("error", "exc", "needle"),
    [
        (hf_errors.LocalEntryNotFoundError("not cached"), FileNotFoundError, "not in the local cache"),
        (hf_errors.OfflineModeIsEnabled("offline"), OSError, "downloading it from the Hugging Face Hub failed"),
        (hf_errors.HFValidationError("bad revision"), ParameterError, "not a valid Hugging Face repo id"),
    ],
)
def test_resolve_repo_id_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception, exc: type[Exception], needle: str
) -> None:
    monkeypatch.setattr(huggingface_hub, "snapshot_download", FakeHub(error=error))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(exc, match=needle) as ei:
        resolve_source("owner/model.v2")
    assert "owner/model.v2" in str(ei.value)
    assert ei.value.__cause__ is error


@pytest.mark.parametrize(
    "src",
    [
        "owner",
        "owner/name/extra",
        "-owner/name",
        "owner/name.",
        "own--er/name",
        "ow..ner/name",
        "a/" + "b" * 95,
        "owner/na me",
    ],
)
def test_non_repo_ids_are_not_downloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, src: str) -> None:
    hub = FakeHub(tmp_path)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a Hugging Face repo id"):
        resolve_source(src)
    with pytest.raises(FileNotFoundError):
        resolve_source(Path("owner/name"))  # a path object is never taken for a repo id
    assert hub.calls == []


def test_offline_and_not_cached_for_real(tmp_path: Path) -> None:
    """The real snapshot_download, offline, in an empty HF_HOME: a FileNotFoundError naming the repo
    (a subprocess, since huggingface_hub reads HF_HUB_OFFLINE at import)."""
    code = (
        "from lowbit.conversion.hf_source import resolve_source\n"
        "try:\n    resolve_source('nobody-here/no-model')\n"
        "except FileNotFoundError as e:\n    print('FNF', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert (
        out.stdout.startswith("FNF nobody-here/no-model: not a local path") and "not in the local cache" in out.stdout
    )
