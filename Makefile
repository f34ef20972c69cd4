# segkd: `make test` and `make demo` are the two commands of the README's quick start.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test test-fast lint demo clean-demo

# Create the virtual environment once and (re)install when the requirements change. requirements-dev.txt
# is requirements.txt plus what the tests and `make lint` use (scipy, ruff).
$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check .

# The CPU benchmark (24-35 min on 2 cores from a fresh clone, by CPU: README, Results): the CPU tier of the
# generated dataset, the teacher once, four student rows x 3 seeds, evaluation, table with paired differences,
# figure.
demo: $(STAMP)
	SCALE=demo PYTHON=$(abspath $(PY)) bash scripts/synthetic/table.sh
