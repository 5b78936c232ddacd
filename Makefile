# Two commands on a fresh machine: `make demo` and `make test`.
# TORCH selects the torch requirement; a GPU user can pass e.g. TORCH="torch==2.13.0 --index-url ...".
PYTHON ?= python3.11
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev,lens,neo4j,viz,lora,tracr,tune,tensorboard,ray]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m circuitlab.demo

test: $(STAMP)
	$(BIN)/python -m pytest tests

lint: $(STAMP)
	$(BIN)/ruff check circuitlab tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean-venv:
	rm -rf $(VENV)
