# The README's commands. Everything a fresh machine needs (Python 3.11 + make) is set up here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SPEC   ?= configs/demo.yaml
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: setup demo test lint bench data lock clean up down status deploy screenshots

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

data: setup
	$(BIN)/pretrainlab data fetch

demo: data
	$(BIN)/pretrainlab run $(SPEC)
	$(BIN)/pretrainlab query "select split, count(*) as docs, sum(n_chars) as chars from corpus group by 1 order by 1" --spec $(SPEC)

test: data
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# Every benchmark (bare library vs pretrainlab on the same work) into one table:
# benchmarks/RESULTS.md, plus docs/scaling.png. BENCH_ARGS=--quick: a smoke run in a few minutes.
bench: setup
	$(BIN)/python -m benchmarks.suite $(BENCH_ARGS)

# Operate: Prefect server + a process worker + MLflow server on 127.0.0.1 (logs and pid files in
# .pretrainlab/run; ports: PRETRAINLAB_PREFECT_PORT=4200, PRETRAINLAB_MLFLOW_PORT=5000).
up: data
	$(BIN)/pretrainlab up

down:
	$(BIN)/pretrainlab down

status:
	$(BIN)/pretrainlab status

# Register prefect.yaml's deployments (nightly schedule + one per stage) on the server `up` started.
deploy: setup
	PREFECT_API_URL=http://127.0.0.1:$${PRETRAINLAB_PREFECT_PORT:-4200}/api \
	  $(BIN)/prefect --no-prompt deploy --all </dev/null

# README screenshots (not CI): needs `make up`, `make deploy`, one completed pipeline run, and
# Debian's headless Chromium (apt-get install -y chromium).
screenshots: setup
	$(BIN)/pretrainlab screenshots --experiment $${EXPERIMENT:-demo} --out docs/screenshots

# Re-lock after a deliberate upgrade: regenerate constraints.txt from the working venv.
lock: setup
	{ sed -n '1,3p' constraints.txt; echo "torch==2.13.0"; $(BIN)/python -m pip freeze --exclude-editable | grep -vE '^(torch|pretrainlab)=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) .pretrainlab build dist *.egg-info
