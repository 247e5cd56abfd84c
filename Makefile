# Two commands on a fresh machine:  `make study` (the default study, end to end)  and  `make test`.
# Both create or reuse the virtualenv at .venv in the repo root.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.symstudy-installed

.PHONY: study test test-faults install bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

study: $(STAMP)
	$(VENV)/bin/study run searchspaces/quickstart.yaml

# Tests spread over the cores (pytest-xdist): in the suite a module's tests stay on one worker, so its fixtures
# are built once; each fault scenario runs its own study, so they are dealt out one by one.
XDIST  := -n auto --maxprocesses 4

test: $(STAMP)
	$(PY) -m pytest -q $(XDIST) --dist loadfile

test-faults: $(STAMP)
	$(PY) -m pytest -q -m faults $(XDIST) --dist load tests

bench: $(STAMP)
	$(PY) bench/throughput.py

clean:
	rm -rf $(VENV) studies .pytest_cache
