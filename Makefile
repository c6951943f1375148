# One command per habit. Each target creates the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch first: a bare `torch` requirement would pull several GB of CUDA wheels.
TORCH ?= torch==2.13.0

.PHONY: install test lint demo bench bench-quick clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -c constraints.txt -e ".[test,lint]"
	touch $@

test: install
	$(PY) -m pytest -q -p no:cacheprovider

lint: install
	$(VENV)/bin/ruff check jobs producer worker tests bench
	$(VENV)/bin/mypy jobs producer worker

demo: install
	$(VENV)/bin/batchformers demo

bench: install
	$(PY) -m bench --full

bench-quick: install
	$(PY) -m bench --quick

clean:
	rm -rf .demo out
