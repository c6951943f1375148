# One command per habit. Each target creates the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch first: a bare `torch` requirement would pull several GB of CUDA wheels.
TORCH ?= torch==2.13.0

.PHONY: install test test-fast test-slow mutate lint demo bench bench-quick clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -c constraints.txt -e ".[test,lint]"
	touch $@

# The fast tier (no worker process, no embedded server) runs first, then the slow tier; each prints its slowest tests.
test: test-fast test-slow

# The fast tier is CPU-bound (tiny models, hypothesis): one pytest process per core, whole files per process
# (module fixtures load their models once). TEST_PROCESSES=auto on a bigger machine.
TEST_PROCESSES ?= 2
test-fast: install
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" -n $(TEST_PROCESSES) --dist loadfile --durations=10

# The slow tier mostly waits on worker subprocesses (sleep faults, leases, boots): two pytest processes
# halve its wall time on two cores. Each file keeps its order and its module fixtures (--dist loadfile).
SLOW_PROCESSES ?= 2
test-slow: install
	$(PY) -m pytest -q -p no:cacheprovider -m slow -n $(SLOW_PROCESSES) --dist loadfile --durations=15

# Mutation testing of the core modules ([tool.mutmut] in pyproject.toml); slow, not in CI.
mutate: install
	rm -rf mutants
	OMP_NUM_THREADS=1 PYTHONPATH= $(VENV)/bin/mutmut run --max-children 2  # mutants/ goes first on the path; one
	# OpenMP thread: forked mutant runs hang in torch otherwise
	$(VENV)/bin/mutmut results

lint: install
	$(VENV)/bin/ruff check batchformers jobs producer worker tests bench
	$(VENV)/bin/mypy batchformers jobs producer worker

demo: install
	$(VENV)/bin/batchformers demo

bench: install
	$(PY) -m bench --full

bench-quick: install
	$(PY) -m bench --quick

clean:
	rm -rf .demo out mutants
