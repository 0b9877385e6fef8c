#!/usr/bin/env bash
# The full test suite (unit + live tests on the real embedded Triton server).
# pytest exit code 5 means "no tests collected": treated as a failure, not as green.
#
# Two pytest-xdist workers by default: most live tests wait on a server (start-up, model loads,
# perf_analyzer windows) rather than use a core, so two run side by side on a 2-core machine.
# --dist loadfile keeps each test file on one worker, so a module's shared repository and server are
# built once. AITUNE_TEST_WORKERS=0 runs serially (also the fallback when xdist is not installed).
set -uo pipefail
cd "$(dirname "$0")/.."
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/.cache/inductor}
workers=${AITUNE_TEST_WORKERS:-2}
parallel=()
if [ "$workers" -gt 1 ] && .venv/bin/python -c "import xdist" 2>/dev/null; then
  parallel=(-n "$workers" --dist loadfile)
fi
.venv/bin/python -m pytest -q -ra --durations=15 "${parallel[@]}" "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "run-tests: pytest collected no tests; failing" >&2
  exit 1
fi
exit "$rc"
