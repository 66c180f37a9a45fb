# Two commands on a fresh machine:  `make quickstart`  then  `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: quickstart test env clean-env

$(BIN)/.installed: hard_requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r hard_requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

env: $(BIN)/.installed

quickstart: env
	$(BIN)/python -m xraygpt.quickstart

test: env
	$(BIN)/python -m pytest -q tests

clean-env:
	rm -rf $(VENV)
