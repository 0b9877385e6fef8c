#!/usr/bin/env bash
# Driver for the GPU machine (device tool): carries .devbundle (Triton + perf_analyzer, from
# ../shared/tools/make-device-bundle.sh) and .whl (tritonclient, polygraphy and their deps for Python 3.12).
#   run: bash benchmarks/run_gpu.sh   (results in $OUT/gpu_serving.json and $OUT/log)
set -eo pipefail
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=$PWD:/tmp/site
eval "$(bash .devbundle/device-env.sh)"
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 benchmarks/gpu_serving.py --device cuda --out "$OUT" "$@" 2>&1 | tee "$OUT/log"
