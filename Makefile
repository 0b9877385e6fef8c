# Two entry points for a fresh machine (Debian 12, Python 3.11): `make demo` and `make test`.
# Each one creates .venv and installs everything it needs (scripts/bootstrap.sh, idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/aitune-triton
export TORCHINDUCTOR_CACHE_DIR ?= $(CURDIR)/.cache/inductor

.PHONY: setup demo test

setup:
	@bash scripts/bootstrap.sh

demo: setup
	$(CLI) doctor || true
	$(CLI) generate examples/cnn/model.py --out model_repository --force
	$(CLI) validate model_repository --report validation_report --concurrency 1,4 --perf-stability 50

test: setup
	@bash scripts/run-tests.sh
