# Two commands matter: `make run` (install + the main job) and `make test` (the whole suite).
VENV ?= .venv
PYTHON ?= python3.11
# TensorFlow build: cpu (default, tested) or gpu (`make install TF=gpu`: TensorFlow with CUDA
# from PyPI for NVIDIA GPUs; a separate venv, e.g. VENV=.venv-gpu, keeps the two apart).
TF ?= cpu
BIN := $(VENV)/bin
# Offline machines: a local dataset mirror (docs/datasets.md); a sibling shared/datasets is used
# when present, otherwise data is downloaded from the official sources.
DCGAN_DATA_MIRROR ?= $(wildcard $(abspath ../shared/datasets))
export DCGAN_DATA_MIRROR
export PATH := $(abspath $(BIN)):$(PATH)

# Debian packages the tests start for real: Graphviz draws the architecture diagrams logged to
# MLflow, PostgreSQL backs the team's MLflow server, OpenSSH serves the DVC SSH remote, Chromium
# opens the MLflow UI, munge and SLURM run a one-machine SLURM cluster for multi_worker training.
SYSTEM_PACKAGES := graphviz postgresql openssh-server chromium munge slurmctld slurmd slurm-client

.PHONY: install system-packages run test test-quick bench params server server-stop clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[$(TF),test]'
	touch $@

install: $(BIN)/.installed

run: install  ## prepare -> classifier -> train -> evaluate with the default config (about 30 min on 2 cores)
	dvc repro

# The whole suite on two pytest-xdist workers, a test module's tests on one worker (its module
# fixtures made once): much of a slow test is single-threaded start-up, DVC and MLflow, so two
# at once keep both cores busy (TEST_WORKERS=0: one process, no workers). Modules are handed
# out in the order tests/conftest.py gives them (long ones first), not xdist's by test count.
# The quick subset on the same workers: each pays TensorFlow's import once, and the unit tests' own
# work halves.
TEST_WORKERS ?= 2

system-packages:  ## install SYSTEM_PACKAGES when missing (as root, with apt-get); otherwise their tests skip
	@bash .ci/system-packages $(SYSTEM_PACKAGES)

test: install system-packages  ## lint and format check, then the whole suite, slow end-to-end tests included
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

test-quick: install  ## unit tests only
	$(BIN)/pytest -m 'not slow' -n $(TEST_WORKERS) --dist loadscope

# The benchmarks docs/ quotes, at the sizes it quotes (the suite runs each as a smoke run on a
# sliver of MNIST). Hours on 2 cores; time nothing else meanwhile.
bench: install  ## throughput, quality floor, precision, launchers, search and time to quality, one after another
	$(BIN)/python benchmarks/throughput.py --steps 15
	$(BIN)/python benchmarks/quality.py floor
	$(BIN)/python benchmarks/quality.py precision --epochs 2
	$(BIN)/python benchmarks/sweeps.py launchers --jobs 4
	$(BIN)/python benchmarks/sweeps.py search --trials 8 data.limit=4096
	$(BIN)/python benchmarks/time_to_quality.py --recipe mnist_best=experiment=mnist_best --plot docs/images/time_to_quality.png

params: install  ## regenerate params.yaml from conf/ (what `dvc exp run` does) after editing conf/
	$(BIN)/python -c "import os; from dvc.utils.hydra import compose_and_dump; compose_and_dump('params.yaml', os.path.abspath('conf'), None, 'config', '.', [])"

# The team's MLflow tracking server on PostgreSQL, on 127.0.0.1 (docs/team.md).
SERVER_PORT ?= 5000
DB_PORT ?= 5433
server: install  ## start it (again): prints the MLFLOW_TRACKING_URI to use
	$(BIN)/python src/tracking_server.py start --port $(SERVER_PORT) --db-port $(DB_PORT)

server-stop: install  ## stop it; its runs, registry and artifacts stay in .mlflow-server/
	$(BIN)/python src/tracking_server.py stop

clean:  ## remove run outputs (not the venv, not DVC's cache)
	rm -rf data/prepared models reports/samples reports/figures outputs multirun
