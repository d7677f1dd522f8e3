# Every target installs what it needs into .venv on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYTHONPATH := $(CURDIR)
# Two cores in CI: keep torch from oversubscribing when pytest and inductor both run.
export OMP_NUM_THREADS ?= 2

.PHONY: venv verify test notebooks bench demo lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	@touch $(STAMP)

verify: $(STAMP)
	$(PY) -m equivalence_tests.verify

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest equivalence_tests
	$(PY) -m notebooks.run_all

notebooks: $(STAMP)
	$(PY) -m notebooks.run_all

bench: $(STAMP)
	$(PY) -m tools.bench

demo: $(STAMP)
	$(PY) -m tools.demo

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) reports/*.md reports/*.png
