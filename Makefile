# Quick start: `make demo` (set up + run the pipeline) and `make test` (set up + tests).
# Both create or reuse .venv; nothing needs to be installed by hand.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Locked environment: every package pinned with its hashes (`make lock` writes them from
# pyproject.toml). torch from its own lock (the pinned torch/torchvision pair and its CUDA
# libraries), which the main lock repeats entry for entry: nothing can pull another build.
LOCK       := requirements.lock
TORCH_LOCK := requirements-torch.lock
SERVERS_LOCK := requirements-servers.lock
LOCKS      := $(TORCH_LOCK) $(LOCK)
# Installed in two pip processes side by side (a third of the set-up's time): the torch
# lock and the rest of the main lock, no package in both, after the packages a fresh venv
# already has (infra/split_lock.py). Every pin carries its hash and the lock is the whole
# closure, so pip resolves nothing (--no-deps; `pip check` in .ci/run). Bytecode: below.
FIRST_LOCK := build/requirements-first.lock
REST_LOCK  := build/requirements-rest.lock
PIP_LOCKED := -q --no-compile --no-deps --require-hashes

# Telemetry of DVC, Prefect and MLflow off for everything run from here, unless set in the
# environment (ssp/ops/telemetry.py holds the list; README "Telemetry" says how to turn it on)
export DVC_NO_ANALYTICS ?= 1
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY ?= false
export MLFLOW_DISABLE_TELEMETRY ?= true

# Bytecode caches: pip installs without byte-compiling (compiling every file of every
# package, torch's and transformers' thousands included, was a third of the set-up: 45 of
# 135 s); Python writes the caches of the modules actually imported, on first import, so
# nothing run from here may turn that off. (.dvcignore keeps the caches out of the stages'
# code-dependency hashes.)
unexport PYTHONDONTWRITEBYTECODE
# the training and evaluation imports (torch, transformers, mlflow, ...), compiled once at
# set-up rather than by the first processes of a run at the same time
WARM_IMPORTS := ssp.eval.train_test ssp.eval.evaluate flows.reproduce

.PHONY: setup demo test lint ui lock clean-venv

setup: $(STAMP)

# the lock files only (no resolution at install time); the project itself without its
# dependencies, built with the locked setuptools (nothing outside the lock is installed)
$(STAMP): pyproject.toml $(LOCKS)
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python infra/split_lock.py $(LOCK) --minus $(TORCH_LOCK) --first $(FIRST_LOCK) --rest $(REST_LOCK)
	$(BIN)/python -m pip install $(PIP_LOCKED) -r $(FIRST_LOCK)
	$(BIN)/python -m pip install $(PIP_LOCKED) -r $(TORCH_LOCK) & torch=$$!; \
	$(BIN)/python -m pip install $(PIP_LOCKED) -r $(REST_LOCK); rest=$$?; \
	wait $$torch && test $$rest -eq 0
	$(BIN)/python -m pip install -q --no-compile --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]" $(WARM_IMPORTS)
	touch $(STAMP)

# the whole pipeline (every DVC stage, as Prefect tasks, logged to MLflow), then the report
demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m flows.reproduce
	cat reports/report.md
	@echo
	@echo "MLflow UI on the local store:  make ui   (prints the links of the saved views: Table 2 rows, λ' sweep, all runs)"

# the layout and style contracts (pyproject.toml: ruff, import-linter), then the suite
test: lint
	$(BIN)/python -m pytest -n 2 --dist loadscope

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

ui: $(STAMP)
	$(BIN)/ssp ui --backend-store-uri sqlite:///mlruns/mlflow.db --host 127.0.0.1 --port 5000

# Regenerate the lock files after a pin changes in pyproject.toml (transitive pins move only
# when they must; LOCK_ARGS=--upgrade moves them all). Resolves with pip's configuration of
# this machine (indexes, find-links, constraints): hashes of the files pip picks here.
# pip-tools lives in its own venv under build/, not in .venv. Takes minutes (it hashes every
# candidate file, torch's CUDA libraries included).
LOCK_VENV := build/pip-tools
COMPILE   := CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile --quiet --generate-hashes \
	--allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links $(LOCK_ARGS)
lock:
	test -x $(LOCK_VENV)/bin/pip-compile || { $(PYTHON) -m venv $(LOCK_VENV) \
		&& $(LOCK_VENV)/bin/python -m pip install -q pip-tools==7.6.2; }
	$(COMPILE) --extra dev --output-file $(LOCK) pyproject.toml
	grep -E '^(torch|torchvision)==' $(LOCK) | cut -d' ' -f1 \
		| $(COMPILE) --constraint $(LOCK) --output-file $(TORCH_LOCK) -
	$(COMPILE) --constraint $(LOCK) --output-file $(SERVERS_LOCK) infra/requirements-servers.txt

clean-venv:
	rm -rf $(VENV)
