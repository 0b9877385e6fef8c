#!/usr/bin/env bash
# The full test suite (unit + live tests on the real embedded Triton server).
# pytest exit code 5 means "no tests collected": treated as a failure, not as green.
set -uo pipefail
cd "$(dirname "$0")/.."
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/.cache/inductor}
.venv/bin/python -m pytest -q -ra --durations=15 "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "run-tests: pytest collected no tests; failing" >&2
  exit 1
fi
exit "$rc"
