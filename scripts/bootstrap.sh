#!/usr/bin/env bash
# Creates .venv with the pinned CPU stack, the package (editable), the embedded Triton server
# (nvidia-pytriton) and perf_analyzer. Idempotent: a stamp file skips work already done.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PY:-python3.11}
STAMP="$VENV/.aitune-bootstrap"
want=$(cat pyproject.toml requirements-lock.txt scripts/bootstrap.sh | sha256sum | cut -c1-16)
t0=$SECONDS
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
echo "### bootstrap: creating $VENV (first run takes ~3 minutes)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch first: the local CPU wheel; anything else would pull a multi-GB CUDA build
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q -r requirements-lock.txt
"$VENV/bin/pip" install -q --no-deps -e '.[dev]'
"$VENV/bin/pip" install -q hypothesis pytest-timeout
# TensorRT's type stubs for the type check, outside site-packages: they depend on the full TensorRT wheel,
# and in site-packages their tensorrt/ directory makes `import tensorrt` an empty namespace package
"$VENV/bin/pip" install -q --no-deps --upgrade --target "$VENV/typestubs" tensorrt-stubs==10.13.0.35.1
# perf_analyzer (+ libb64, libcudart) into the venv; the Python-backend dir bound to this venv
"$VENV/bin/python" -m aitune_triton.triton.tools install
echo "$want" > "$STAMP"
echo "### bootstrap: done in $((SECONDS - t0))s"
