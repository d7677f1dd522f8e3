# Every target installs what it needs into .venv on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs
BENCH_STAMP := $(VENV)/.installed-bench
export PYTHONPATH := $(CURDIR)
# Two cores in CI: keep torch from oversubscribing when pytest and inductor both run.
export OMP_NUM_THREADS ?= 2
# Compiled kernels go to this checkout's own inductor cache, one per ATEN_CPU_CAPABILITY: the machine-wide
# cache is shared with other checkouts, versions and capabilities, and an avx2 run on this machine's shared
# cache gave lockstep errors (3.8e-5 against 5e-6) that the same run on a fresh cache did not.
export TORCHINDUCTOR_CACHE_DIR ?= $(CURDIR)/.cache/inductor-$(or $(ATEN_CPU_CAPABILITY),native)

.PHONY: venv verify test notebooks bench demo docs docs-check lint lock clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	@touch $(STAMP)

# Re-pin constraints.txt to the newest versions the registry serves (in a scratch venv); then run `make test`.
lock:
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q torch -e ".[test,docs,bench]"
	{ sed -n '1,2p' constraints.txt; .lock-venv/bin/pip freeze --exclude-editable | sed 's/+cpu$$//'; } > constraints.new
	mv constraints.new constraints.txt && rm -rf .lock-venv

verify: $(STAMP)
	$(PY) -m equivalence_tests.verify

# One pytest worker per core (pytest-xdist), each with one torch thread; a test file stays on one worker, so
# its module fixtures (the torchrun launch of test_distributed.py) run once.
test: $(STAMP)
	$(PY) -m ruff check .
	OMP_NUM_THREADS=1 $(PY) -m pytest -n auto --dist loadfile equivalence_tests
	$(PY) -m notebooks.run_all

$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e ".[test,docs]"
	@touch $(DOCS_STAMP)

# The study site in reports/site/ (every notebook executed; Sphinx warnings are errors).
docs: $(DOCS_STAMP)
	$(PY) -m tools.site.build

# The built site in headless Chromium (Debian's: apt-get install chromium): links, math, plots, screenshots.
docs-check: docs
	$(PY) -m tools.site.check

notebooks: $(STAMP)
	$(PY) -m notebooks.run_all

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e ".[test,bench]"
	@touch $(BENCH_STAMP)

# Ratios to fused AdamW, bitsandbytes, torchao and CAME in one run (reports/bench.md); --reference adds the slow
# reference rows: make bench BENCH_ARGS=--reference
bench: $(BENCH_STAMP)
	$(PY) -m tools.bench $(BENCH_ARGS)

demo: $(STAMP)
	$(PY) -m tools.demo

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) reports/*.md reports/*.png reports/site build/site
