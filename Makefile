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

test: $(STAMP)
	$(PY) -m pytest -q

test-faults: $(STAMP)
	$(PY) -m pytest -q -m faults tests

bench: $(STAMP)
	$(PY) bench/throughput.py

clean:
	rm -rf $(VENV) studies .pytest_cache
