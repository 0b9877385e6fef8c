#!/usr/bin/env bash
# The GPU serving matrix on a device-tool machine, in one call (results under $OUT).
# Carry: .devbundle (Triton + perf_analyzer: ../shared/tools/make-device-bundle.sh .venv .devbundle), .whl (Python
# 3.12 wheels of tritonclient and its deps, polygraphy) and, for the before/after comparison, .bench_before
# (`git archive <commit> aitune_triton templates | tar -x -C .bench_before`).
#   run: bash benchmarks/run_gpu_matrix.sh h200|h200i|h200x2 [gpu_matrix.py options]
set -eo pipefail
KIND=${1:?kind: h200, h200i (instances only) or h200x2}; shift
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=$PWD:/tmp/site
eval "$(bash .devbundle/device-env.sh)"
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor
BEFORE=(); [ -d .bench_before/aitune_triton ] && BEFORE=(--before .bench_before)
{ nvidia-smi --query-gpu=index,name,driver_version,clocks.sm,power.draw --format=csv,noheader; nproc; } | tee "$OUT/log"
python3 benchmarks/gpu_matrix.py --kind "$KIND" --out "$OUT" "${BEFORE[@]}" "$@" > "$OUT/stdout" 2>&1 || true
tail -n 80 "$OUT/stdout"
