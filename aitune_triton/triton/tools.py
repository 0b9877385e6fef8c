"""Find (and, where missing, provision) the real Triton components this tool drives.

* ``tritonserver`` comes from PyPI's ``nvidia-pytriton`` wheel. It is located with
  ``importlib.util.find_spec`` so that pytriton's own ``__init__`` (and its extra deps) never runs.
* The Python-backend stub must match the interpreter that runs the models; it is linked into a
  writable backends dir inside the venv (never inside site-packages).
* ``perf_analyzer`` comes from the ``tritonclient==2.48.0`` manylinux wheel (the 2.60 wheels need
  glibc 2.38), with ``libb64.so.0d`` (Debian ``libb64-0d``, unpacked without root) and
  ``libcudart.so.12`` (``nvidia-cuda-runtime-cu12``) put on ``LD_LIBRARY_PATH`` by a wrapper.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from aitune_triton.errors import ToolMissing  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

PERF_ANALYZER_WHEEL = "tritonclient==2.48.0"
# the ways a user gets a server, for every message about a missing one
GET_TRITONSERVER = ("`pip install nvidia-pytriton` (bundles tritonserver), or run inside NVIDIA's Triton container "
                    "(nvcr.io/nvidia/tritonserver:<yy.mm>-py3) and pass "
                    "--tritonserver /opt/tritonserver/bin/tritonserver")


def python_version() -> str:
    return "%d.%d" % sys.version_info[:2]


def venv_dir() -> Path:
    """The environment whose packages the Python-backend stub must see."""
    return Path(sys.prefix)


def triton_root() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ToolMissing("no embedded tritonserver (nvidia-pytriton is not installed): %s" % GET_TRITONSERVER)
    return Path(list(spec.submodule_search_locations)[0]) / "tritonserver"


def bundled_tritonserver() -> Path:
    path = triton_root() / "bin" / "tritonserver"
    if not path.exists():
        raise ToolMissing("tritonserver binary missing from nvidia-pytriton at %s; reinstall it: %s"
                          % (path, GET_TRITONSERVER))
    return path


def bundled_stub(version: str | None = None) -> Path:
    return triton_root() / "python_backend_stubs" / (version or python_version()) / "triton_python_backend_stub"


def backends_dir() -> Path:
    """A writable backends dir whose python backend uses the stub for this interpreter.

    Symlinks (not copies) keep the stub's RPATH to ``nvidia_pytriton.libs`` working.
    """
    target = venv_dir() / "triton" / "backends" / "python"
    src = triton_root() / "backends" / "python"
    stub = bundled_stub()
    if not stub.exists():
        raise ToolMissing("no Python-backend stub for Python %s in nvidia-pytriton" % python_version())
    wanted = {
        "libtriton_python.so": src / "libtriton_python.so",
        "triton_python_backend_utils.py": src / "triton_python_backend_utils.py",
        "triton_python_backend_stub": stub,
    }
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name, real in wanted.items():
            link = target / name
            if link.is_symlink() and Path(os.readlink(link)) == real:
                continue
            if link.exists() or link.is_symlink():
                link.unlink()
            link.symlink_to(real)
    except OSError as exc:
        raise ToolMissing("cannot prepare the backends dir %s: %s" % (target, exc)) from exc
    return target.parent


def libpython_dir() -> str | None:
    """LIBDIR of this interpreter when it is built shared, so the stub embeds the same Python."""
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return sysconfig.get_config_var("LIBDIR")
    return None


def cudart_dir() -> Path | None:
    spec = importlib.util.find_spec("nvidia.cuda_runtime") if importlib.util.find_spec("nvidia") else None
    if spec is None or not spec.submodule_search_locations:
        return None
    lib = Path(list(spec.submodule_search_locations)[0]) / "lib"
    return lib if (lib / "libcudart.so.12").exists() else None


def find_perf_analyzer() -> Path | None:
    """perf_analyzer from $PERF_ANALYZER, this venv, or PATH."""
    env = os.environ.get("PERF_ANALYZER")
    if env and Path(env).exists():
        return Path(env)
    local = venv_dir() / "bin" / "perf_analyzer"
    if local.exists():
        return local
    found = shutil.which("perf_analyzer")
    return Path(found) if found else None


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


def _install_libb64(dest: Path) -> None:
    if (dest / "libb64.so.0d").exists():
        return
    system = glob.glob("/usr/lib/x86_64-linux-gnu/libb64.so.0d") + glob.glob("/usr/lib/*/libb64.so.0d")
    if system:
        return
    with tempfile.TemporaryDirectory() as tmp:
        try:
            _run(["apt-get", "download", "libb64-0d"], cwd=tmp)
        except subprocess.CalledProcessError:
            if os.geteuid() != 0:
                raise ToolMissing("libb64-0d (for perf_analyzer) could not be downloaded; "
                                  "run `sudo apt-get update` and retry") from None
            _run(["apt-get", "update", "-qq"])  # empty package lists on a fresh image
            _run(["apt-get", "download", "libb64-0d"], cwd=tmp)
        deb = glob.glob(os.path.join(tmp, "libb64-0d_*.deb"))[0]
        _run(["dpkg", "-x", deb, os.path.join(tmp, "x")])
        lib = glob.glob(os.path.join(tmp, "x", "usr", "lib", "*", "libb64.so.0d*"))
        for f in lib:
            shutil.copy2(os.path.realpath(f), dest / "libb64.so.0d")


def install_perf_analyzer() -> Path:
    """Extract perf_analyzer 2.48 from the tritonclient wheel into the venv behind a wrapper."""
    venv = venv_dir()
    libexec = venv / "libexec"
    libexec.mkdir(exist_ok=True)
    binary = libexec / "perf_analyzer"
    if not binary.exists():
        with tempfile.TemporaryDirectory() as tmp:
            _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                  "--platform", "manylinux1_x86_64", "--python-version", python_version(),
                  PERF_ANALYZER_WHEEL, "-d", tmp])
            wheel = glob.glob(os.path.join(tmp, "tritonclient-2.48.0-*.whl"))[0]
            with zipfile.ZipFile(wheel) as z:
                binary.write_bytes(z.read("tritonclient-2.48.0.data/data/bin/perf_analyzer"))
        binary.chmod(0o755)
    _install_libb64(libexec)
    libs = [str(libexec)]
    cudart = cudart_dir()
    if cudart:
        libs.append(str(cudart))
    wrapper = venv / "bin" / "perf_analyzer"
    wrapper.write_text(
        "#!/bin/sh\n"
        'LD_LIBRARY_PATH="%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "%s" "$@"\n' % (":".join(libs), binary)
    )
    wrapper.chmod(0o755)
    return wrapper


@dataclass(frozen=True)
class ToolVersion:
    path: Path | None
    version: str | None


def perf_analyzer_version(path: Path | None = None) -> ToolVersion:
    path = path or find_perf_analyzer()
    if path is None:
        return ToolVersion(None, None)
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ToolVersion(path, None)
    text = (out.stdout + out.stderr).strip()
    if out.returncode != 0 or "Version" not in text:
        return ToolVersion(path, None)
    return ToolVersion(path, text.splitlines()[0].split("Version")[-1].strip())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["install"]:
        print("usage: python -m aitune_triton.triton.tools install", file=sys.stderr)
        return 2
    print("backends:", backends_dir())
    if find_perf_analyzer() is None or not (venv_dir() / "bin" / "perf_analyzer").exists():
        if shutil.which("perf_analyzer") is None:
            print("perf_analyzer:", install_perf_analyzer())
    info = perf_analyzer_version()
    print("perf_analyzer:", info.path, info.version)
    return 0 if info.version else 1


if __name__ == "__main__":
    sys.exit(main())
