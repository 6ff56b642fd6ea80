# Two commands on a fresh machine with Python 3.11 and git:
#   make run    set up .venv and run the pipeline on the example study
#   make test   set up .venv and run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CORES ?= all

.PHONY: run test verify report example clean-results lint

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)

test: $(STAMP)
	$(BIN)/python -m pytest

# Recompute the sha256 of every input and output listed in each study's manifest.
verify: $(STAMP)
	$(BIN)/allianceflow verify results/*/manifest.json

# Snakemake's HTML report of the example study (every figure and table with its caption).
report: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/snakemake --report results/example/report.html

# Regenerate the embedded example study from its seed (the bytes must not change).
example: $(STAMP)
	$(BIN)/python -m allianceflow.simulate data/raw/example
	$(BIN)/python -m allianceflow.simulate data/raw/example2 srs+phq9

lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/rules

clean-results:
	rm -rf results/*/ data/processed/*/ logs .snakemake
