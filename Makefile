# Two commands on a fresh machine with Python 3.11+ and make: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1

.PHONY: install run test bench lint typecheck check migrate

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is required")'
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[worker,dev]'
	touch $(STAMP)

install: $(STAMP)

migrate: install
	mkdir -p var
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py seed
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0

run: migrate
	$(BIN)/python -m deploy.devserver

test: install
	$(BIN)/python -m pytest

bench: migrate
	$(BIN)/python tests/benchmarks/bench_model.py
	$(BIN)/python tests/benchmarks/bench_api.py
	$(BIN)/python tests/benchmarks/bench_finetune.py
	$(BIN)/python tests/benchmarks/bench_economics.py
	$(BIN)/python tests/benchmarks/bench_limits.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy platform workers deploy

check: lint typecheck test
