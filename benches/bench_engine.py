"""The engine on the demo model (SmolLM2-135M): prompt tokens/s (a 512-token prompt in one batch)
and generation tokens/s (64 greedy decode steps), lowbit against llama.cpp in the same run.

* Files: the float32 HF checkpoint (--hf; made from the demo GGUF when absent) converted with
  `lowbit.convert` to f32, q8_0 and q4_k_m LBF files in --cache, each exported with
  `lowbit.export_gguf` (the same tensor bytes; q/k rows permuted to llama.cpp's order). Kept between
  runs.
* Prompt: the first 512 tokens of --text (the model's own tokenizer, from the LBF metadata);
  seeded random token ids if the file is missing. Both engines get the same ids.
* One child process per (file, engine, threads), `--repeats` rounds each after one warm-up
  round; each round starts a fresh context, times one forward of the whole prompt (logits of the
  last position only), then 64 single-token forwards, each fed the argmax of the previous logits.
  Figures are medians over the rounds. lowbit runs on rayon's global pool (RAYON_NUM_THREADS);
  llama.cpp gets n_threads = n_threads_batch = the same count, n_batch = n_ubatch = the prompt length, its
  defaults otherwise (KV cache f16, no flash attention, weights repacked at load where it does).
* Sanity: the greedy tokens of the two engines are compared (length of the common prefix), and
  teacher-forced: how many of llama.cpp's greedy tokens lowbit picks when fed llama.cpp's history
  (the first near-tie ends a common prefix for good), with the largest logit gap where it does not.

The anchor is llama.cpp through llama-cpp-python's `Llama` (optional), run by --llama-python, e.g.

    .venv/bin/python benches/bench_engine.py --llama-python /work/anchor-venv/bin/python [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

CACHE = Path.home() / ".cache" / "lowbit"
RECIPES = ("f32", "q8_0", "q4_k_m")
PROMPT_TOKENS, GEN_TOKENS = 512, 64


def lowbit_rounds(lbf: str, prompt: list[int], gen: int, repeats: int) -> dict[str, Any]:
    """Seconds of the prompt forward and of the `gen` decode steps per round, and the greedy tokens."""
    import lowbit

    with lowbit.Model.load(lbf) as model:
        ids = np.asarray(prompt, np.uint32)
        out: dict[str, Any] = {"prompt_s": [], "gen_s": [], "tokens": []}
        for r in range(repeats + 1):
            sess = model.session(len(prompt) + gen + 1)
            t0 = time.perf_counter()
            logits = np.asarray(sess.forward(ids, False))
            t1 = time.perf_counter()
            toks = []
            for _ in range(gen):
                toks.append(int(np.argmax(logits.reshape(-1)[-model.vocab_size :])))
                logits = np.asarray(sess.forward(np.asarray(toks[-1:], np.uint32), False))
            t2 = time.perf_counter()
            if r:  # round 0 warms up (page faults of the mapped weights, thread pool)
                out["prompt_s"].append(t1 - t0)
                out["gen_s"].append(t2 - t1)
            out["tokens"] = toks
    return out


def llama_rounds(gguf: str, prompt: list[int], gen: int, repeats: int, threads: int) -> dict[str, Any]:
    """The same rounds in llama.cpp (llama-cpp-python's `Llama`, greedy on the raw logits)."""
    import llama_cpp

    n = len(prompt)
    llm = llama_cpp.Llama(model_path=gguf, n_ctx=n + gen + 16, n_batch=n, n_ubatch=n, n_threads=threads,
                          n_threads_batch=threads, verbose=False)  # fmt: skip
    n_vocab = llm.n_vocab()
    out: dict[str, Any] = {"prompt_s": [], "gen_s": [], "tokens": []}

    def last_logits() -> npt.NDArray[np.float32]:
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))

    for r in range(repeats + 1):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        t1 = time.perf_counter()
        toks = []
        for _ in range(gen):
            toks.append(int(np.argmax(last_logits())))
            llm.eval(toks[-1:])
        t2 = time.perf_counter()
        if r:
            out["prompt_s"].append(t1 - t0)
            out["gen_s"].append(t2 - t1)
        out["tokens"] = toks
    llm.close()
    return out


def child_main(spec: str) -> int:
    c = json.loads(spec)
    if c["engine"] == "lowbit":
        res = lowbit_rounds(c["model"], c["prompt"], c["gen"], c["repeats"])
    else:
        res = llama_rounds(c["model"], c["prompt"], c["gen"], c["repeats"], c["threads"])
    print(json.dumps(res))
    return 0


def run_child(python: str, cfg: dict[str, Any]) -> Any:
    print(f"running {cfg['engine']} on {cfg['model']}, {cfg['threads']} threads", file=sys.stderr, flush=True)
    env = {**os.environ, "RAYON_NUM_THREADS": str(cfg["threads"]), "OMP_NUM_THREADS": str(cfg["threads"])}
    proc = subprocess.run([python, __file__, "--child", json.dumps(cfg)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{cfg['engine']} child on {cfg['model']} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def prepare(hf: Path, gguf_src: Path, cache: Path, recipes: list[str]) -> dict[str, tuple[Path, Path]]:
    """The LBF and exported GGUF of each recipe (and of f32, the prompt's tokenizer) in `cache`,
    made when missing."""
    import lowbit

    cache.mkdir(parents=True, exist_ok=True)
    files = {r: (cache / f"{r}.lbf", cache / f"{r}.gguf") for r in dict.fromkeys(["f32", *recipes])}
    if all(lbf.exists() and gg.exists() for lbf, gg in files.values()):
        return files
    if not (hf / "config.json").exists():
        lowbit.gguf_to_hf(gguf_src, hf, progress=False)
    for r, (lbf, gg) in files.items():
        if not lbf.exists():
            lowbit.convert(hf, lbf, r, progress=False, gguf_compatible=True)  # llama.cpp runs the same bytes
        if not gg.exists():
            lowbit.export_gguf(lbf, gg, progress=False)
    return files


def prompt_ids(lbf: Path, text: Path, n: int) -> tuple[list[int], str]:
    """The first `n` tokens of `text` (repeated if short), or seeded random ids if it is missing."""
    import lowbit

    with lowbit.load(lbf) as f:
        tok_json = f.get_str("tokenizer.json")
        vocab = int(json.loads(f.get_str("model.config"))["vocab_size"])
    if text.is_file():
        from tokenizers import Tokenizer

        ids = Tokenizer.from_str(tok_json).encode(text.read_text(encoding="utf-8")).ids
        if ids:
            return (ids * (n // len(ids) + 1))[:n], f"first {n} tokens of {text.name}"
    rng = np.random.default_rng(0)
    return [int(i) for i in rng.integers(0, vocab, n)], f"{n} seeded random token ids"


def common_prefix(a: list[int], b: list[int]) -> int:
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return k


def teacher_forced(lbf: Path, prompt: list[int], tokens: list[int]) -> tuple[int, float]:
    """How many of the anchor's greedy `tokens` lowbit also picks when fed the anchor's history
    (one forward of the prompt and `tokens[:-1]`, every position's logits), and the largest logit
    gap, where it picks another token, between its choice and the anchor's (0 if none): free-running
    greedy runs part for good at the first near-tie, this counts every step."""
    import lowbit

    with lowbit.Model.load(lbf) as model:
        sess = model.session(len(prompt) + len(tokens))
        ids = np.asarray(prompt + tokens[:-1], np.uint32)
        logits = np.asarray(sess.forward(ids, True)).reshape(len(ids), -1)[len(prompt) - 1 :]
    want = np.asarray(tokens)
    picked = logits.argmax(1)
    gaps = logits[np.arange(len(want)), picked] - logits[np.arange(len(want)), want]
    return int((picked == want).sum()), float(gaps.max(initial=0.0))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hf", type=Path, default=CACHE / "SmolLM2-135M-Instruct.Q4_1-hf",
                    help="float32 HF checkpoint dir (made from --gguf when it does not exist)")  # fmt: skip
    ap.add_argument("--gguf", type=Path, default=CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--cache", type=Path, default=CACHE / "bench-engine", help="where the converted files are kept")
    ap.add_argument("--text", type=Path, default=CACHE / "botchan.txt")
    ap.add_argument("--threads", type=lambda s: [int(t) for t in s.split(",")], default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--recipes", type=lambda s: s.split(","), default=list(RECIPES),
                    help="recipes or qtypes to convert to and run (default f32,q8_0,q4_k_m)")  # fmt: skip
    ap.add_argument("--prompt-tokens", type=int, default=PROMPT_TOKENS)
    ap.add_argument("--gen-tokens", type=int, default=GEN_TOKENS)
    ap.add_argument("--llama-python", help="a Python with llama_cpp (default: this one, if it has it)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child_main(args.child)

    import lowbit

    llama_py = args.llama_python or (sys.executable if importlib.util.find_spec("llama_cpp") else None)
    files = prepare(args.hf, args.gguf, args.cache, args.recipes)
    prompt, what = prompt_ids(files["f32"][0], args.text, args.prompt_tokens)
    anchor = f"llama.cpp via {llama_py}" if llama_py else "none"
    print(f"lowbit {lowbit.__version__} (isa {lowbit.isa()}); anchor: {anchor}")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load average at start "
          f"{os.getloadavg()[0]:.2f}; prompt: {what}; {args.gen_tokens} greedy decode steps; "
          f"medians of {args.repeats} rounds after a warm-up\n")  # fmt: skip

    record: dict[str, Any] = {"load_start": os.getloadavg(), "runs": {}}
    for r in args.recipes:
        lbf, gg = files[r]
        for t in args.threads:
            base = {"prompt": prompt, "gen": args.gen_tokens, "repeats": args.repeats, "threads": t}
            runs = {"lowbit": run_child(sys.executable, {**base, "engine": "lowbit", "model": str(lbf)})}
            if llama_py:
                runs["llama.cpp"] = run_child(llama_py, {**base, "engine": "llama.cpp", "model": str(gg)})
            record["runs"][f"{r} {t}"] = runs
    record["load_end"] = os.getloadavg()

    def tps(res: dict[str, Any] | None, key: str, n: int) -> float | None:
        return None if res is None else n / statistics.median(res[key])

    def cell(v: float | None) -> str:
        return "—" if v is None else f"{v:.1f}"

    def ratio(a: float | None, b: float | None) -> str:
        return "—" if a is None or b is None else f"{a / b:.2f}×"

    print("| file | MiB | threads | prompt t/s lowbit | llama.cpp | ratio | generation t/s lowbit | llama.cpp "
          "| ratio | greedy tokens agreeing | teacher-forced (largest gap) |")  # fmt: skip
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in args.recipes:
        lbf = files[r][0]
        for t in args.threads:
            runs = record["runs"][f"{r} {t}"]
            lb, ll = runs["lowbit"], runs.get("llama.cpp")
            pl, pa = tps(lb, "prompt_s", len(prompt)), tps(ll, "prompt_s", len(prompt))
            gl, ga = tps(lb, "gen_s", args.gen_tokens), tps(ll, "gen_s", args.gen_tokens)
            agree = forced = "—"
            if ll is not None:
                agree = f"{common_prefix(lb['tokens'], ll['tokens'])}/{args.gen_tokens}"
                k, gap = teacher_forced(lbf, prompt, ll["tokens"])
                runs["teacher_forced"] = {"agree": k, "max_gap": gap}
                forced = f"{k}/{len(ll['tokens'])} ({gap:.3f})"
            print(f"| {r} | {lbf.stat().st_size / 2**20:.0f} | {t} | {cell(pl)} | {cell(pa)} | {ratio(pl, pa)} "
                  f"| {cell(gl)} | {cell(ga)} | {ratio(gl, ga)} | {agree} | {forced} |")  # fmt: skip
    print(f"\nload average (1 min) {record['load_start'][0]:.2f} at start, {record['load_end'][0]:.2f} at end")
    if args.json:
        args.json.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
