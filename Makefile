# The two commands a new user runs (see README.md). Both build .venv from nothing when it is
# missing or older than the files that define it.
VENV ?= .venv
STAMP := $(VENV)/.nbkit-ready

.PHONY: quickstart test lint lab clean-venv

quickstart: $(STAMP)
	$(VENV)/bin/nbkit quickstart

test: $(STAMP)
	$(VENV)/bin/python -m pytest

# JupyterLab on the tutorials (with the ipywidgets, plotly and anywidget front-ends); Ctrl-C stops it.
# As root (a container, CI) JupyterLab refuses to start without --allow-root.
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

lint: $(STAMP)
	$(VENV)/bin/ruff check nbkit widgets tests benchmarks

$(STAMP): pyproject.toml constraints.txt scripts/bootstrap.sh
	NBKIT_VENV=$(VENV) scripts/bootstrap.sh

clean-venv:
	rm -rf $(VENV)
