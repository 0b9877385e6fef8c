#!/usr/bin/env bash
# Download into .whl/ the Python 3.12 wheels that the package imports at run time and the GPU image lacks.
#
# The GPU image has python3.12, torch (cu130), torchvision, transformers, onnx, onnxruntime, numpy, click, jinja2,
# rich, PyYAML, psutil and an older grpcio/protobuf. It lacks tritonclient (the HTTP client needs geventhttpclient ->
# gevent -> greenlet, zope.event, zope.interface; brotli, certifi; python-rapidjson; ml_dtypes), polygraphy, and tritonclient's
# generated gRPC/protobuf code needs grpcio and protobuf at least as new as the ones it was generated with, so those
# two travel too (pinned to this checkout's venv). The benchmark drivers install them with
#   python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl
# numpy travels too: the image's numpy 2 breaks BYTES tensors in the bundled Triton 2.51 Python-backend stub (its
# pybind11 predates numpy 2), and the package pins numpy<2. Its wheel (18 MB) would take the carried paths over the
# device tool's 64 MiB, so it travels as numpy-cp312.tar.xz (8 MB: the wheel's files without numpy's own tests),
# which the drivers unpack into /tmp/site.
# Every wheel is fetched with --no-deps for the GPU machine's platform, so nothing here depends on this host.
#   usage: bash benchmarks/fetch_gpu_wheels.sh [DEST]   (default .whl; about 20 MB; .whl/ is git-ignored)
set -euo pipefail
DEST=${1:-.whl}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$DEST"
version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
# pinned to what this checkout's tests run against, so the GPU lane runs the same client code
PINNED=(tritonclient grpcio protobuf polygraphy gevent geventhttpclient greenlet zope.event zope.interface brotli
        python-rapidjson certifi urllib3 ml_dtypes)
SPECS=()
for name in "${PINNED[@]}"; do SPECS+=("$name==$(version "$name")"); done
fetch=(download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3
       --abi none)
common=("${fetch[@]}" -d "$DEST")
# tritonclient's pure-Python wheel (py3-none-any): the manylinux one adds a 15 MB perf_analyzer the bundle carries
"$PY" -m pip "${common[@]}" --platform any "${SPECS[0]}"
"$PY" -m pip "${common[@]}" --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any \
  "${SPECS[@]:1}"
NUMPY="numpy==$(version numpy)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m pip "${fetch[@]}" -d "$work" --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 "$NUMPY"
"$PY" - "$work" <<'PY'
import pathlib, sys, zipfile
work = pathlib.Path(sys.argv[1])
wheel, = work.glob("numpy-*.whl")
with zipfile.ZipFile(wheel) as zf:
    zf.extractall(work / "site", [n for n in zf.namelist() if "/tests/" not in n])
PY
tar -C "$work/site" -cJf "$DEST/numpy-cp312.tar.xz" .
ls -la "$DEST"
du -sh "$DEST"
