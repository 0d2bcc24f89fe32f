# sweep: hyperparameter search and experiment tracking for Lightning models.
# Every target runs inside .venv, created on first use (`make install`).

PYTHON ?= python3
VENV ?= .venv
# torch is pinned here (a local CPU wheel on the dev/CI machines); GPU users override it:
#   make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=
# make test: test processes side by side (most tests keep one core busy; 0 runs them
# in this one); a module's tests that share a costly fixture stay in one process.
TEST_WORKERS ?= 2
HOST ?= 127.0.0.1
PORT ?= 5000
# Study shortcuts, for sweep, worker, check, report and optuna-dashboard:
#   make sweep EXP=mnist1d_arch N_TRIALS=60        = ARGS="experiment=mnist1d_arch study.n_trials=60"
#   make worker EXP=mnist1d_arch STORAGE=postgresql://user@host:5432/db
# STORAGE is any Optuna storage URL, handed over as SWEEP_STORAGE_URL (kept out of the
# logged command line); a PostgreSQL one also picks storage=postgres (heartbeats).
EXP ?=
N_TRIALS ?=
STORAGE ?=
study_args = $(if $(EXP),experiment=$(EXP)) $(if $(N_TRIALS),study.n_trials=$(N_TRIALS)) $(if $(filter postgresql%,$(STORAGE)),storage=postgres)
study_env = $(if $(STORAGE),SWEEP_STORAGE_URL='$(STORAGE)')

.PHONY: install train sweep worker check tracking-server bench bench-gpu test lint ui clean help

help:
	@echo "set up:   make sweep (default study, creates .venv) | make test"
	@echo "run:      make train | sweep | worker | check          ARGS=\"hydra overrides\""
	@echo "          make sweep EXP=name (conf/experiment/) N_TRIALS=n STORAGE=url"
	@echo "look:     make ui | optuna-dashboard | report STUDY=name | compare ARGS=\"experiments=[a,b]\" | notebook"
	@echo "deploy:   make serve [STUDY=name|MODEL=uri] | predict ARGS=\"model=... input=... output=...\" | rerun RUN=id"
	@echo "scale:    make tracking-server | worker ARGS=\"storage=postgres tracking=server study.name=...\""
	@echo "develop:  make lint | bench | bench-gpu | clean        TORCH=\"$(TORCH)\""

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(BIN)/sweep train $(ARGS)

sweep: $(STAMP)
	$(study_env) $(BIN)/sweep tune $(study_args) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check sweep tests
	$(BIN)/ruff format --check sweep tests

worker: $(STAMP)
	$(study_env) $(BIN)/sweep worker $(study_args) $(ARGS)

check: $(STAMP)
	$(study_env) $(BIN)/sweep check $(study_args) $(ARGS)

# MLflow tracking server with a PostgreSQL backend store (for several machines).
tracking-server: $(STAMP)
	$(BIN)/sweep tracking-server $(ARGS)

# Benchmarks (50-95 minutes on 2 cores): writes bench/results.md and the README's table.
bench: $(STAMP)
	$(BIN)/python -m sweep.benchmarks $(ARGS)

# On a GPU machine (about 10 minutes): the overhead and two seeds' search, bench/gpu.json.
bench-gpu: $(STAMP)
	$(BIN)/python -m sweep.benchmarks.gpu $(ARGS)

# MLflow UI over the local store (or MLFLOW_TRACKING_URI's database), on 127.0.0.1 only.
# One uvicorn worker is plenty for one person (MLflow's default, 4, starts 4 processes),
# and MLflow's GenAI job runner (8 huey consumer processes) is not used by sweeps.
UI_WORKERS ?= 1
ui: $(STAMP)
	@case "$${MLFLOW_TRACKING_URI:-}" in http://*|https://*) \
	  echo "MLFLOW_TRACKING_URI points at a tracking server: it serves the UI itself; open its address"; \
	  exit 2;; esac
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=$${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false} \
	$(BIN)/mlflow ui --backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db} \
	  --host $(HOST) --port $(PORT) --workers $(UI_WORKERS)

clean:
	rm -rf .pytest_cache .ruff_cache lightning_logs

.PHONY: serve predict rerun

# Deploy (sweep.deploy): the champion models:/<study>@champion (STUDY=..., else conf/sweep.yaml's
# study) unless MODEL=... is given. serve listens on 127.0.0.1:5001; PORT=... / HOST=... on the
# command line override it (the PORT default above is the MLflow UI's).
deploy_set = $(filter command line environment,$(origin $(1)))
serve: $(STAMP)
	$(BIN)/sweep serve $(if $(MODEL),model=$(MODEL)) $(if $(STUDY),study=$(STUDY)) $(if $(call deploy_set,PORT),port=$(PORT)) $(if $(call deploy_set,HOST),host=$(HOST)) $(ARGS)

predict: $(STAMP)
	$(BIN)/sweep predict $(if $(MODEL),model=$(MODEL)) $(if $(STUDY),study=$(STUDY)) $(ARGS)

rerun: $(STAMP)
	$(BIN)/sweep rerun $(RUN) $(ARGS)

# Compare and report (sweep.compare, sweep.report). make compare ARGS="experiments=[a,b]";
# make report STUDY=name (or ARGS="study.name=name ...") writes dashboards/generated/<study>.html;
# make optuna-dashboard [ARGS="study overrides"] serves optuna-dashboard over the study storage.
.PHONY: compare report notebook optuna-dashboard
STUDY ?=
DASHBOARD_PORT ?= 8080

compare: $(STAMP)
	$(BIN)/sweep compare $(ARGS)

report: $(STAMP)
	$(study_env) $(BIN)/sweep report $(study_args) $(if $(STUDY),study.name=$(STUDY)) $(ARGS)

# The comparison notebook run headless over the project's store (SWEEP_EXPERIMENTS=a,b to pick).
notebook: $(STAMP)
	mkdir -p dashboards/generated
	$(BIN)/jupyter execute --output=generated/compared dashboards/compare_experiments.ipynb
	@echo "notebook: dashboards/generated/compared.ipynb"

optuna-dashboard: $(STAMP)
	$(study_env) $(BIN)/sweep optuna-dashboard --host $(HOST) --port $(DASHBOARD_PORT) $(study_args) $(ARGS)
