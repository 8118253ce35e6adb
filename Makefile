# The two commands a new user runs (see README.md). Both build .venv from nothing when it is
# missing or older than the files that define it.
VENV ?= .venv
STAMP := $(VENV)/.nbkit-ready

.PHONY: quickstart test lint clean-venv

quickstart: $(STAMP)
	$(VENV)/bin/nbkit quickstart

test: $(STAMP)
	$(VENV)/bin/python -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check nbkit widgets tests benchmarks

$(STAMP): pyproject.toml constraints.txt scripts/bootstrap.sh
	NBKIT_VENV=$(VENV) scripts/bootstrap.sh

clean-venv:
	rm -rf $(VENV)
