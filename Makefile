# Two commands on a fresh machine with Python 3.11 and git:
#   make run    set up .venv from requirements.lock and run the pipeline on the example studies
#   make test   set up .venv from requirements.lock and run the test suite
# The environment is installed from requirements.lock (exact versions with sha256 hashes), so a
# reviewer months later gets the same packages, and so the same bytes. `make lock` rewrites it
# from pyproject.toml's ranges.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CORES ?= all
LOCK := requirements.lock
# Greedy job selection: Snakemake's default (ilp) starts a solver process at every scheduling
# round, which on this pipeline's ~100 short jobs costs CPU and saves nothing (one resource,
# no temporary files). The Snakefile sits at the top, so workflow/profiles/default is used
# only when named (--profile); these flags are what `make run` passes.
SNAKEMAKE_FLAGS ?= --scheduler greedy

.PHONY: run resume test test-all verify report example clean-results lint format lock \
	notebooks notebooks-html

$(STAMP): $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) $(SNAKEMAKE_FLAGS)

# After an interrupted run (Ctrl-C, a killed job, a lost SSH session): release Snakemake's
# lock on the folder and rerun the jobs whose outputs were left incomplete.
resume: $(STAMP)
	$(BIN)/snakemake --unlock
	$(BIN)/snakemake --cores $(CORES) $(SNAKEMAKE_FLAGS) --rerun-incomplete

# The default suite: quick (.test/ configuration for the end-to-end tests, hypothesis's quick
# profile). With CI=true (as .ci/run sets) it runs everything: the full example pipeline, the
# thorough hypothesis profile, and the lme4 and SLURM tests, which then fail if R or SLURM is
# missing instead of skipping.
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Everything CI runs, on your machine.
test-all: $(STAMP)
	CI=true $(BIN)/python -m pytest $(PYTEST_ARGS)

# Recompute the sha256 of every input and output listed in each study's manifest.
verify: $(STAMP)
	$(BIN)/allianceflow verify results/*/manifest.json

# Snakemake's HTML report of the example study (every figure and table with its caption).
report: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) $(SNAKEMAKE_FLAGS)
	$(BIN)/snakemake --report results/example/report.html

# The teaching notebooks (notebooks/NN_*.ipynb) in JupyterLab: installs the `notebooks`
# extra (JupyterLab, nbconvert) into .venv once, then opens JupyterLab on the folder.
NOTEBOOKS_STAMP := $(VENV)/.notebooks-stamp
NOTEBOOKS_HTML := build/notebooks

$(NOTEBOOKS_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[notebooks]"
	touch $(NOTEBOOKS_STAMP)

notebooks: $(NOTEBOOKS_STAMP)
	$(BIN)/jupyter lab notebooks/

# Executed HTML copies of the notebooks in build/notebooks/ (git-ignored, never committed).
notebooks-html: $(NOTEBOOKS_STAMP)
	mkdir -p $(NOTEBOOKS_HTML)
	cd notebooks && ../$(BIN)/jupyter nbconvert --to html --execute \
		--ExecutePreprocessor.timeout=600 --output-dir ../$(NOTEBOOKS_HTML) *.ipynb

# Regenerate the embedded example study from its seed (the bytes must not change).
example: $(STAMP)
	$(BIN)/python -m allianceflow.simulate data/raw/example
	$(BIN)/python -m allianceflow.simulate data/raw/example2 srs+phq9
	$(BIN)/python -m allianceflow.simulate data/raw/example3 couples

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/rules

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/snakefmt Snakefile workflow/rules

# Rewrite requirements.lock from pyproject.toml (the package and its test extra), for
# Python 3.11 on Linux x86_64, with hashes. Run it after changing a dependency range.
lock:
	test -x $(BIN)/uv || ($(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install --quiet uv)
	$(BIN)/uv pip compile pyproject.toml --extra test --generate-hashes --no-header \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 -o $(LOCK)

clean-results:
	rm -rf results/*/ data/processed/*/ logs .snakemake $(NOTEBOOKS_HTML)
