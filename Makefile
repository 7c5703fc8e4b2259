# make demo   - install, then train -> generate -> score on the embedded default (README's first command)
# make test   - install, then the test suite
# make install - .venv with pinned versions (constraints.txt, shared with the Dockerfile)
# make bench   - the tutorial's way vs ours (generation rows/s, training examples/s, peak memory)
# make profile - where our generation and training steps spend their time (bench/profile.txt)
# make gpu-check - on a CUDA machine: train (bf16) + generate + score on the 270M, with speed figures
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch first and pinned, so that nothing pulls a multi-GB CUDA build as a dependency. On this project's CPU
# machines pip takes the CPU build of 2.13.0 from local disk; elsewhere pass TORCH_INDEX_URL for the CPU wheel.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
PYTEST_ARGS ?=

.PHONY: install test demo bench profile gpu-check clean
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(PY) -m pip check
	touch $@

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(PY) entrypoint.py run --config configs/demo.yaml

bench: install
	$(PY) -m bench.run

profile: install
	$(PY) -m bench.profile

gpu-check: install
	$(PY) -m bench.gpu_check

clean:
	rm -rf outputs .pytest_cache
