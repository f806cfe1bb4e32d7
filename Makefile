PYTHON ?= python3

.PHONY: install demo test test-all lint bench

install:
	PYTHON=$(PYTHON) bash scripts/install.sh

demo: install
	$(PYTHON) -m depthlab demo

test: install
	$(PYTHON) -m pytest -q

test-all: install
	$(PYTHON) -m pytest -q -m "slow or not slow"

# ruff with the configuration in pyproject.toml ([tool.ruff]); CI runs it before the tests
lint: install
	$(PYTHON) -m ruff check .

# The speed and memory benchmarks (docs/performance.md); add DEVICE=cuda on a GPU machine.
DEVICE ?= cpu
bench: install
	cd bench && $(PYTHON) bench_throughput.py --device $(DEVICE)
	cd bench && $(PYTHON) bench_throughput.py --device $(DEVICE) --ablate
	cd bench && $(PYTHON) bench_flops.py --device $(DEVICE)
	cd bench && $(PYTHON) bench_methods.py --device $(DEVICE)
	cd bench && $(PYTHON) bench_memory.py --device $(DEVICE)
	cd bench && $(PYTHON) bench_numerics.py --device $(DEVICE)
