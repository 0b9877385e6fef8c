#!/usr/bin/env bash
# The GPU acceptance lane on a device-tool machine, in one call (results under $OUT; 8-10 minutes on an H100: give
# it the whole 600 s call and about 12 minutes of device time, the machine start included).
# Carry: .devbundle (Triton + perf_analyzer: ../shared/tools/make-device-bundle.sh .venv .devbundle) and .whl
# (bash benchmarks/fetch_gpu_wheels.sh: Python 3.12 wheels of tritonclient and its deps, grpcio, protobuf,
# polygraphy). The image brings python3.12, torch, torchvision, transformers, onnx and onnxruntime.
#   run: bash benchmarks/run_gpu_acceptance.sh [gpu_acceptance.py options, e.g. --models resnet50_fp16,cnn]
# A fresh machine needs two calls (measured: 9 first generates took 220-310 s, validate 230 s): call 1 with
# --generate-only, then at once, while the machine is warm, call 2 with --resume (see gpu_acceptance.py).
# Back in $OUT: env.txt, stdout, the JSON and table, and logs.tar.xz (the logs and validate's report).
# Where the copy has no .git, pass the commit along: AITUNE_COMMIT=<sha> bash benchmarks/run_gpu_acceptance.sh
set -eo pipefail
OUT=${OUT:-acceptance_out}
mkdir -p "$OUT"
[ -d .whl ] && [ -d .devbundle ] || { echo "carry .whl and .devbundle (see the header of $0)" >&2; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
for t in .whl/*.tar.xz; do [ -e "$t" ] && tar -C /tmp/site -xJf "$t"; done  # numpy<2, as the package pins it
eval "$(bash .devbundle/device-env.sh)"
export PYTHONPATH=$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}  # the carried grpcio/protobuf before the image's
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor
{ nvidia-smi --query-gpu=index,name,driver_version --format=csv,noheader; nproc;
  python3 -c 'import numpy, torch, torchvision, transformers, tritonclient, polygraphy; print("torch", torch.__version__, "cuda", torch.version.cuda, "torchvision", torchvision.__version__, "transformers", transformers.__version__, "numpy", numpy.__version__)' || true; } 2>&1 | tee "$OUT/env.txt"
rc=0
python3 benchmarks/gpu_acceptance.py --out "$OUT" "$@" > "$OUT/stdout" 2>&1 || rc=$?
# the device tool returns at most 8 files from $OUT: the logs and the validation report travel as one archive
tar -C "$OUT" -cJf "$OUT/logs.tar.xz" --exclude=inductor logs validation_report 2>/dev/null && rm -rf "$OUT/logs" "$OUT/validation_report"
rm -rf "$OUT/inductor"
tail -n 60 "$OUT/stdout"
exit $rc
