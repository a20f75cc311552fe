# The README's commands. Everything a fresh machine needs (Python 3.11 + make) is set up here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SPEC   ?= configs/demo.yaml
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: setup demo test lint bench data lock clean

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

# Each benchmark runs the bare library and pretrainlab on the same work and prints the ratio.
bench: setup
	$(BIN)/python -m benchmarks.ingest
	$(BIN)/python -m benchmarks.tokenization
	$(BIN)/python -m benchmarks.pretrain

# Re-lock after a deliberate upgrade: regenerate constraints.txt from the working venv.
lock: setup
	{ sed -n '1,3p' constraints.txt; echo "torch==2.13.0"; $(BIN)/python -m pip freeze --exclude-editable | grep -vE '^(torch|pretrainlab)=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) .pretrainlab build dist *.egg-info
