PYTHON ?= python3

.PHONY: install demo test test-all lint bench mutants

install:
	PYTHON=$(PYTHON) bash scripts/install.sh

demo: install
	$(PYTHON) -m depthlab demo

# pytest-xdist: one worker per core, whole files per worker (module fixtures built once); -n 0 runs serially
TEST_WORKERS ?= auto
test: install
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-all: install
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "slow or not slow"

# ruff with the configuration in pyproject.toml ([tool.ruff]); CI runs it before the tests
lint: install
	$(PYTHON) -m ruff check .

# Mutation testing of the core modules (docs/notes/mutation.md; not part of CI, tens of minutes on 2 cores):
# mutmut plants one small change at a time ([tool.mutmut] in pyproject.toml) and runs the tests that
# reach it; scripts/mutants.py prints the killed/survived counts and the survivors.
mutants: install
	$(PYTHON) -m pip install -q -e ".[mutation]"
	$(PYTHON) -m mutmut run --max-children $(or $(JOBS),2) $(MUTANTS) || true
	$(PYTHON) scripts/mutants.py

# The speed and memory benchmarks (docs/performance.md); add DEVICE=cuda on a GPU machine.
DEVICE ?= cpu
bench: install
	cd bench && $(PYTHON) bench_throughput.py --device $(DEVICE)
	cd bench && $(PYTHON) bench_throughput.py --device $(DEVICE) --ablate
	cd bench && $(PYTHON) bench_flops.py --device $(DEVICE)
	cd bench && $(PYTHON) bench_methods.py --device $(DEVICE)
	cd bench && $(PYTHON) bench_memory.py --device $(DEVICE)
	cd bench && $(PYTHON) bench_numerics.py --device $(DEVICE)
	cd bench && $(PYTHON) bench_track.py --device $(DEVICE)
