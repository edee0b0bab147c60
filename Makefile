# Two commands from a fresh clone: `make pipeline` (default pipeline end to end) and `make test`.
# Both create .venv and install the pinned dependencies first (torch 2.13.0, CPU build).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup pipeline quick test lint bench clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c requirements.lock -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

pipeline: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m flows.pipeline

test: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m bench.bench_tokenizer
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m bench.bench_kv_cache
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m bench.bench_quant
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m bench.bench_word2vec

clean:
	rm -rf out metrics plots mlflow.db mlartifacts dvc.lock
