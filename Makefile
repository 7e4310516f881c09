# The two commands of the README: `make run` (the embedded default end to end) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
SNAKEMAKE := $(VENV)/bin/snakemake
STAMP := $(VENV)/.attrflow-installed
CORES ?= all
export HF_HUB_OFFLINE := 1
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: run test lint format dry-run clean

$(PY):
	python3 -m venv $(VENV)

# Reinstall when the project's dependencies change.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(SNAKEMAKE) --configfile config.yaml --profile profiles/workstation --cores $(CORES)

dry-run: $(STAMP)
	$(SNAKEMAKE) --configfile config.yaml --profile profiles/workstation -n

test: $(STAMP) lint
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/snakefmt --check Snakefile rules
	$(PY) -m attrflow.catalog --check
	$(SNAKEMAKE) --lint

format: $(STAMP)
	$(VENV)/bin/snakefmt Snakefile rules

clean:
	rm -rf results logs .snakemake
