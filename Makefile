# make demo   - install, then train -> generate -> score on the embedded default (README's first command)
# make test   - install, then the whole test suite (what CI runs), listing the ten slowest tests
# make test-fast - the inner loop: every test that needs no model and starts no process (about 25 s on 2 cores)
# make install - .venv with pinned versions (constraints.txt, shared with the Dockerfile)
# make browser - install, plus the browser test's Playwright, system Chromium and Korean font (apt-get)
# make docs-screenshot - docs/report-html.png, the README's picture of report.html, from that browser test
# make bench   - the tutorial's way vs ours (generation rows/s, training examples/s, peak memory), in
#                outputs/bench/results.json (bench/results.json is the committed reference run)
# make profile - where our generation and training steps spend their time (outputs/bench/profile.txt)
# make gpu-check - on a CUDA machine: the H200 targets, timed on Gemma 3 1B's architecture (random bf16 weights)
# make gpu-bundle - .gpu/: the tokenizer and the wheels a GPU machine without network lacks, for gpu-check there
PYTHON ?= python3
SHELL := /bin/bash
space := $(subst ,, )
VENV := .venv
PY := $(VENV)/bin/python
# torch first and pinned, so that nothing pulls a multi-GB CUDA build as a dependency. On this project's CPU
# machines pip takes the CPU build of 2.13.0 from local disk; elsewhere pass TORCH_INDEX_URL for the CPU wheel.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
PYTEST_ARGS ?=

.PHONY: install browser docs-screenshot test test-fast demo bench profile gpu-check gpu-bundle clean
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(PY) -m pip check
	touch $@

# The browser the report.html test drives (Playwright with the system browser: nothing downloads a browser build),
# and a font with Hangul for its screenshots; apt-get installs only what is missing, through sudo when not root.
# Elsewhere than Debian/Ubuntu: install Chromium yourself and point $$CHROMIUM at it.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser: install
	$(PY) -m pip install --quiet -c constraints.txt -e ".[browser]"
	@missing="$$(command -v chromium-headless-shell >/dev/null || command -v chromium >/dev/null || echo chromium-headless-shell)"; \
	missing="$$missing $$(fc-list :lang=ko 2>/dev/null | grep -q . || echo fonts-nanum)"; \
	if [ -n "$${missing// }" ]; then $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; fi; \
	echo "browser: $$(command -v chromium-headless-shell || command -v chromium)"

docs-screenshot: browser
	mkdir -p docs
	REPORT_HTML_SCREENSHOT=docs/report-html.png $(PY) -m pytest tests/test_html.py -k report_html_in_chromium -q

# Two worker processes (pytest-xdist), each test file in one of them (module fixtures are built once): most tests use
# one core at a time. TEST_WORKERS=0 runs in this process (for pdb). PYTHONDONTWRITEBYTECODE is unset for pytest's
# cache of rewritten test modules (__pycache__/, ignored by git): seconds of every run otherwise.
TEST_WORKERS ?= 2
PYTEST := env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)
test: install
	$(PYTEST) --durations=10 $(PYTEST_ARGS)

test-fast: install
	$(PYTEST) -m "not model and not slow and not subprocess" $(PYTEST_ARGS)

demo: install
	$(PY) entrypoint.py run --config configs/demo.yaml

bench: install
	$(PY) -m bench.run

profile: install
	$(PY) -m bench.profile

gpu-check: install
	$(PY) -m bench.gpu_check

# The device image has torch, transformers, peft, accelerate, pyarrow, pandas, xxhash; not trl, datasets and
# datasets' dill/multiprocess, nor what pipeline/ imports besides (config: pydantic; the card's metrics: jsonschema,
# rouge_score, nltk; entrypoint.py, which gpu-check runs end to end: click). rouge_score has no wheel on PyPI:
# built here (pure Python). mecab-ko is not bundled: gpu-check's end-to-end run scores with score.tokenize=char.
# There: pip install --no-index --no-deps --target /tmp/site .gpu/whl/*.whl, then
# PYTHONPATH=/tmp/site:. python3 -m bench.gpu_check --tokenizer .gpu/tokenizer --out $$OUT (see README).
GPU_WHEELS := trl datasets dill multiprocess pydantic pydantic_core annotated-types typing-inspection
GPU_WHEELS += jsonschema jsonschema-specifications referencing rpds-py nltk defusedxml click
gpu-bundle: install
	rm -rf .gpu && mkdir -p .gpu/tokenizer .gpu/whl
	cp "$$($(PY) -c 'from pipeline.config import ModelConfig; from pipeline.sources import ensure_embedded_model; print(ensure_embedded_model(ModelConfig()))')"/{config.json,tokenizer.json,tokenizer_config.json} .gpu/tokenizer/
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_17_x86_64 -d .gpu/whl $$(grep -E '^($(subst $(space),|,$(GPU_WHEELS)))==' constraints.txt)
	$(PY) -m pip wheel --quiet --no-deps -w .gpu/whl $$(grep -E '^rouge_score==' constraints.txt)

clean:
	rm -rf outputs .pytest_cache
