#!/usr/bin/env bash
# tune quick vs tune --brute vs Model Analyzer 1.58 brute on a device-tool GPU machine, in one call (results under $OUT).
# Carry (all git-ignored, built from the project root):
#   .devbundle  Triton 2.51 (the venv's nvidia-pytriton tritonserver, backends, Python 3.12 stub) and perf_analyzer
#               packed as triton-sp.tar.xz, with device-env.sh printing the exports (as for run_gpu_matrix.sh)
#   .whl        Python 3.12 wheels of tritonclient and its deps (as for run_gpu_matrix.sh)
#   .whl_ma     Python 3.12 wheels of triton-model-analyzer==1.58.0 and what the GPU image lacks of its deps:
#               optuna==3.6.1 alembic SQLAlchemy Mako colorlog docker pdfkit importlib_metadata distro httplib2
#               (pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
#                --platform manylinux_2_28_x86_64 ... -d .whl_ma NAME==VERSION)
#   .whl_ma/isolated  protobuf==6.33.6 (Model Analyzer 1.58 needs protobuf < 7; installed apart, on its PYTHONPATH only)
#   .tvm_code   the commit measured: mkdir .tvm_code && git archive HEAD aitune_triton templates | tar -x -C .tvm_code
#               && git rev-parse --short HEAD > .tvm_code/COMMIT   (optional; default: the working tree)
#   run: bash benchmarks/run_tune_gpu.sh [tune_vs_model_analyzer.py options]
set -eo pipefail
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .whl/*.whl .whl_ma/*.whl
MA_PATH=()
if ls .whl_ma/isolated/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/ma_site \
    .whl_ma/isolated/*.whl
  MA_PATH=(--ma-pythonpath /tmp/ma_site)
fi
export PYTHONPATH=$PWD:/tmp/site
eval "$(bash .devbundle/device-env.sh)"
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor
if [ -d .tvm_code/aitune_triton ]; then export AITUNE_CODE=$PWD/.tvm_code; fi
{ date -u; nvidia-smi --query-gpu=index,name,driver_version,clocks.sm,power.draw --format=csv,noheader; nproc;
  python3 -c 'import torch, importlib.metadata as m; print("torch", torch.__version__, "model-analyzer",
  m.version("triton-model-analyzer"), "protobuf", m.version("protobuf"), "numba", m.version("numba"))'; } > "$OUT/stdout" 2>&1
rc=0
python3 benchmarks/tune_vs_model_analyzer.py --out "$OUT" "${MA_PATH[@]}" "$@" >> "$OUT/stdout" 2>&1 || rc=$?
tail -n 70 "$OUT/stdout"
exit $rc
