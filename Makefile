# Quick start: `make demo` (set up + run the pipeline) and `make test` (set up + tests).
# Both create or reuse .venv; nothing needs to be installed by hand.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# torch first (and alone): the pinned CPU/CUDA pair, so that nothing later pulls another build
TORCH  := torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint ui clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# the whole pipeline (every DVC stage, as Prefect tasks, logged to MLflow), then the report
demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m flows.reproduce
	$(BIN)/ssp report
	@echo
	@echo "MLflow UI on the local store:  make ui   (then open http://127.0.0.1:5000)"

# the layout and style contracts (pyproject.toml: ruff, import-linter), then the suite
test: lint
	$(BIN)/python -m pytest -n 2 --dist loadscope

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --host 127.0.0.1 --port 5000

clean-venv:
	rm -rf $(VENV)
