# Two commands on a fresh machine with Python 3.11+ and make: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1

.PHONY: install run test bench lint typecheck check migrate lock

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is required")'
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[worker,dev]'
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

# constraints.txt again from pyproject.toml's pins alone, in a throwaway venv (the one above
# keeps what it has): every extra, then the versions pip chose for what they pull in. torch
# from PyTorch's CPU index, as the worker image takes it (PyPI's Linux torch is a CUDA build
# that pulls nvidia-* packages); `make lock TORCH_INDEX=` where that index is out of reach
# and the CPU wheel is at hand otherwise. The freeze is checked before it replaces the lock.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) '.[worker,dev]'
	.lock-venv/bin/python -m pip freeze --exclude-editable > .lock-venv/freeze.txt
	grep -q '^torch==' .lock-venv/freeze.txt
	! grep -q -e '^nvidia-' -e '^triton==' .lock-venv/freeze.txt
	{ sed -n '/^#/p' constraints.txt; grep -v '^margin-api' .lock-venv/freeze.txt \
	  | sed 's/+cpu$$//'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .lock-venv
