# Two entry points for a fresh machine (Debian 12, Python 3.11): `make demo` and `make test`.
# Each one creates .venv and installs everything it needs (scripts/bootstrap.sh, idempotent).
# Neither leaves anything for git to report: the demo writes under demo/ (ignored), and the
# committed model_repository/ (the reference the tests compare with) changes only by `make reference`.
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/aitune-triton
export TORCHINDUCTOR_CACHE_DIR ?= $(CURDIR)/.cache/inductor

.PHONY: setup demo test reference dist

setup:
	@bash scripts/bootstrap.sh

demo: setup
	$(CLI) doctor || true
	@mkdir -p demo
	$(CLI) generate examples/cnn/model.py --out demo/model_repository --force
	$(CLI) validate demo/model_repository --report demo/validation_report --concurrency 1,4 --perf-stability 50

test: setup
	@bash scripts/run-tests.sh

# regenerate the committed reference repository after a change to what generate writes; --portable: it
# must load on any x86-64 host CI or a newcomer has (an ExportedProgram, not a package of this CPU's ISA)
# the batch is declared: a measured max_batch_size would depend on the machine that regenerates it
reference: setup
	$(CLI) generate examples/cnn/model.py --out model_repository --force --portable --max-batch-size 8

# a wheel of this checkout (dist/aitune_triton-*.whl), e.g. to install the tool in a Triton container
dist: setup
	$(PY) -m pip wheel --no-deps --no-build-isolation . -w dist
