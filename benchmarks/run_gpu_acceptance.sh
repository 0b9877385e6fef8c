#!/usr/bin/env bash
# The GPU acceptance lane on a device-tool machine (results under $OUT): one 600 s call on a warm H100, two on a
# fresh one (below); about 12-15 minutes of device time, the machine start included.
# Carry: .devbundle (Triton + perf_analyzer: ../shared/tools/make-device-bundle.sh .venv .devbundle) and .whl
# (bash benchmarks/fetch_gpu_wheels.sh: Python 3.12 wheels of tritonclient and its deps, grpcio, protobuf,
# polygraphy, and numpy<2). The image brings python3.12, torch, torchvision, transformers, onnx and onnxruntime.
#   run: bash benchmarks/run_gpu_acceptance.sh [gpu_acceptance.py options, e.g. --models resnet50_fp16,cnn]
# A fresh machine needs two calls (measured: 9 first generates took 220-310 s, validate 230 s): call 1 with
# --generate-only, then at once, while the machine is warm, call 2 with --resume (see gpu_acceptance.py).
# Back in $OUT: env.txt, stdout, the JSON and table, and logs.tar.xz (the logs and validate's report).
# Where the copy has no .git, pass the commit along: AITUNE_COMMIT=<sha> bash benchmarks/run_gpu_acceptance.sh
set -eo pipefail
OUT=${OUT:-acceptance_out}
mkdir -p "$OUT"
[ -d .whl ] && [ -d .devbundle ] || { echo "carry .whl and .devbundle (see the header of $0)" >&2; exit 2; }
eval "$(bash .devbundle/device-env.sh)"  # unpacks Triton to /tmp/sp; its PYTHONPATH is replaced below
# Two environments, as a user with numpy 2 in their torch environment and numpy<2 (the package's pin for Triton
# 2.51) in their serving one would have: generate runs on the image's python (torch, transformers and the scipy
# stack built for numpy 2) plus the carried wheels; validate and serve run on a venv whose site-packages holds
# numpy<2 in front of the image's packages. The Python-backend stub ignores PYTHONPATH and imports from the venv of
# the python3 first on PATH, so only a venv puts numpy<2 in front of it (numpy 2 corrupts BYTES tensors in 2.51's
# stub); gpu_acceptance.py's --serve-python puts the venv first on PATH for those commands only.
IMAGE_PY=$(command -v python3)
IMAGE_SITE=$("$IMAGE_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
WHEELS=/tmp/lane-wheels
LANE=/tmp/lane-venv
case "$IMAGE_PY" in $LANE/*) echo "python3 on PATH is the lane's own ($IMAGE_PY): start from the image's PATH" >&2; exit 2;; esac
"$IMAGE_PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $WHEELS .whl/*.whl
if [ ! -x $LANE/bin/python3 ] && ! "$IMAGE_PY" -m venv --without-pip $LANE; then
  # no venv module on the base interpreter: lay out what `venv --without-pip` writes (pyvenv.cfg + a python3 link)
  BASE=$("$IMAGE_PY" -c 'import sys, os; print(os.path.realpath(sys._base_executable))')
  mkdir -p $LANE/bin "$LANE/lib/python3.$("$IMAGE_PY" -c 'import sys; print(sys.version_info.minor)')/site-packages"
  ln -sf "$BASE" $LANE/bin/python3
  printf 'home = %s\ninclude-system-site-packages = false\nversion = %s\n' "$(dirname "$BASE")" \
    "$("$IMAGE_PY" -c 'import platform; print(platform.python_version())')" > $LANE/pyvenv.cfg
fi
LANE_SITE=$($LANE/bin/python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for t in .whl/*.tar.xz; do [ -e "$t" ] && tar -C "$LANE_SITE" -xJf "$t"; done
# addsitedir, not a plain path line: the image's own .pth files (namespace packages) are read too
printf "import site; site.addsitedir('%s')\n" $WHEELS > "$LANE_SITE/za_wheels.pth"
printf "import site; site.addsitedir('%s')\n" "$IMAGE_SITE" > "$LANE_SITE/zz_image_site.pth"
export PYTHONPATH=$PWD:$WHEELS PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor
VERSIONS='import numpy, torch, torchvision, transformers, tritonclient, polygraphy; print(__import__("sys").executable, "torch", torch.__version__, "cuda", torch.version.cuda, "torchvision", torchvision.__version__, "transformers", transformers.__version__, "numpy", numpy.__version__)'
{ nvidia-smi --query-gpu=index,name,driver_version --format=csv,noheader; nproc;
  "$IMAGE_PY" -c "$VERSIONS" || true; PYTHONPATH=$PWD $LANE/bin/python3 -c "$VERSIONS" || true; } 2>&1 | tee "$OUT/env.txt"
rc=0
"$IMAGE_PY" benchmarks/gpu_acceptance.py --out "$OUT" --serve-python $LANE/bin/python3 "$@" > "$OUT/stdout" 2>&1 || rc=$?
# the device tool returns at most 8 files from $OUT: the logs and the validation report travel as one archive
tar -C "$OUT" -cJf "$OUT/logs.tar.xz" --exclude=inductor logs validation_report 2>/dev/null && rm -rf "$OUT/logs" "$OUT/validation_report"
rm -rf "$OUT/inductor"
tail -n 60 "$OUT/stdout"
exit $rc
