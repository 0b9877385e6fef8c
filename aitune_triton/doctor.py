"""Environment check: what aitune-triton can use here, and what is missing for which step.

Every probe is guarded so that a broken or absent optional component becomes a row, never a
crash; heavy or side-effecting imports are avoided (modelopt is only located, not imported).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import platform
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger(__name__)

SETUP_HINT = "run scripts/bootstrap.sh"


@dataclass(frozen=True)
class DoctorRow:
    name: str
    ok: bool
    detail: str
    hint: str = ""
    required: bool = False


def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _python() -> DoctorRow:
    ok = sys.version_info >= (3, 10)
    return DoctorRow("python", ok, "%s (%s)" % (platform.python_version(), sys.executable),
                     "" if ok else "Python 3.10 or newer is needed", True)


def _torch() -> DoctorRow:
    import torch

    cuda = torch.version.cuda
    detail = "%s, %s" % (torch.__version__, "CUDA %s build" % cuda if cuda else "CPU build")
    return DoctorRow("torch", True, detail, "", True)


def _gpu() -> DoctorRow:
    import torch

    if not torch.cuda.is_available():
        hint = "no CUDA GPU visible: TensorRT steps are skipped, the CPU path still works"
        return DoctorRow("gpu", False, "none", hint, False)
    gpus = []
    for i in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(i)
        gpus.append("%d: %s (sm_%d%d)" % (i, torch.cuda.get_device_name(i), major, minor))
    return DoctorRow("gpu", True, "; ".join(gpus), "", False)


def _cpu() -> DoctorRow:
    """The instruction set an AOTInductor package generated here is compiled for (the serving hosts
    need it), and an AOTInductor load that crashed here before (generate skips the compile)."""
    import torch

    from aitune_triton.export import aoti_crashes
    from aitune_triton.runtime.aitune_runtime import cpu_flags_here, isa_flags

    flags = cpu_flags_here()
    detail = "%s, torch CPU capability %s; extensions: %s" % (
        platform.machine(), torch.backends.cpu.get_cpu_capability(),
        " ".join(isa_flags(flags)) if flags is not None else "unknown (no /proc/cpuinfo)")
    hint = "AOTInductor packages generated here need these; generate --portable for hosts with other CPUs"
    devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    crashes = [c for c in (aoti_crashes.lookup(aoti_crashes.HostKey.here(d)) for d in devices) if c]
    for crash in crashes:
        hint += "; AOTInductor load crashed here on %s before (%s), generate skips it: %s" % (
            crash.device, crash.when[:10], aoti_crashes.cache_path())
    return DoctorRow("cpu", True, detail, hint, False)


def _module_version(name: str, dist: str, required: bool, hint: str) -> Callable[[], DoctorRow]:
    def probe() -> DoctorRow:
        if importlib.util.find_spec(name) is None:
            return DoctorRow(name, False, "not installed", hint, required)
        module = importlib.import_module(name)
        version = getattr(module, "__version__", None) or _dist_version(dist) or "unknown version"
        return DoctorRow(name, True, version, "", required)

    probe.__name__ = name
    return probe


def _numpy() -> DoctorRow:
    """The numpy the Python-backend stub imports, judged by the rule validate and serve apply before
    launch (``launch.numpy2_breaks_bytes``): numpy 2 is only a problem under a Triton older than 2.52,
    and the bundled server is only asked its release when numpy is 2."""
    from aitune_triton.triton import launch

    version = launch.stub_numpy_version()
    if version is None:
        return DoctorRow("numpy", False, "not installed", 'the Python stub imports numpy: pip install "numpy<2"', False)
    triton = launch.server_version() if launch.numpy2_breaks_bytes(version, None) is not False else None
    verdict = launch.numpy2_breaks_bytes(version, triton)
    if verdict is False:
        return DoctorRow("numpy", True, version, "", False)
    cause = ("the bundled Triton %s's Python backend corrupts BYTES tensors under numpy 2, so validate and serve "
             "refuse raw-data pipelines on it" % triton if verdict else
             "if the server is older than Triton 2.52 (the bundled one's release is unknown), its Python backend "
             "corrupts BYTES tensors under numpy 2 (raw-data pipelines)")
    hint = "%s; %s" % (cause, launch.NUMPY2_FIX % sys.prefix)
    return DoctorRow("numpy", False, version, hint, False)


def _onnxruntime() -> DoctorRow:
    if importlib.util.find_spec("onnxruntime") is None:
        return DoctorRow("onnxruntime", False, "not installed", SETUP_HINT, True)
    import onnxruntime

    providers = ", ".join(onnxruntime.get_available_providers())
    return DoctorRow("onnxruntime", True, "%s (%s)" % (onnxruntime.__version__, providers), "", True)


def _tensorrt() -> DoctorRow:
    hint = "optional: pip install tensorrt (needs a GPU) for TensorRT plans"
    if importlib.util.find_spec("tensorrt") is None:
        return DoctorRow("tensorrt", False, "not installed", hint, False)
    try:
        import tensorrt
    except Exception as exc:  # a broken install (missing libnvinfer, wrong CUDA) is common
        return DoctorRow("tensorrt", False, "import failed: %s" % exc, hint, False)
    # a namespace package: only tensorrt-stubs (a dev tool) is installed
    if getattr(tensorrt, "__file__", None) is None and hasattr(tensorrt, "__path__"):
        return DoctorRow("tensorrt", False, "not installed (only its type stubs)", hint, False)
    return DoctorRow("tensorrt", True, tensorrt.__version__, "", False)


def _generate_path() -> DoctorRow:
    """Which of its two TensorRT paths ``generate`` takes here: build and check the plan (TensorRT
    imports as a builder and creates one, so a GPU is usable), or stage the checked ONNX, the config
    and build_plan.sh for a TensorRT/Triton container. The same test ``generate`` makes."""
    from aitune_triton.tensorrt.availability import build_status

    status = build_status()
    if status.available:
        return DoctorRow("generate path", True, "builds the TensorRT plan here and checks it against eager PyTorch "
                                                "(%s)" % status.reason, "", False)
    return DoctorRow("generate path", False, "stages ONNX + build_plan.sh for a TensorRT/Triton container (%s)"
                     % status.reason, "build the plan with `aitune-triton build-plan` where TensorRT and a GPU are",
                     False)


def _polygraphy() -> DoctorRow:
    version = _dist_version("polygraphy") if importlib.util.find_spec("polygraphy") else None
    return DoctorRow("polygraphy", version is not None, version or "not installed",
                     "" if version else "optional: pip install polygraphy", False)


def _modelopt() -> DoctorRow:
    # located only: importing modelopt takes 8-15 s
    found = importlib.util.find_spec("modelopt") is not None
    version = _dist_version("nvidia-modelopt") if found else None
    return DoctorRow("modelopt", found, version or ("installed" if found else "not installed"),
                     "" if found else "optional: pip install nvidia-modelopt (INT8/FP8 quantization)", False)


def _tritonclient() -> DoctorRow:
    missing = [m for m in ("tritonclient.http", "tritonclient.grpc") if _find(m) is None]
    version = _dist_version("tritonclient")
    if missing:
        return DoctorRow("tritonclient", False, "missing %s" % ", ".join(missing),
                         "pip install 'tritonclient[http,grpc]'", True)
    return DoctorRow("tritonclient", True, version or "installed", "", True)


def _find(name: str):
    try:
        return importlib.util.find_spec(name)
    except ModuleNotFoundError:
        return None


def _tritonserver() -> DoctorRow:
    from aitune_triton.triton import launch, tools

    try:
        path = tools.bundled_tritonserver()
    except tools.ToolMissing as exc:
        return DoctorRow("tritonserver", False, str(exc), tools.GET_TRITONSERVER, True)
    version = launch.server_version(path)
    return DoctorRow("tritonserver", True, "%s (%s)" % (version or "version unknown", path), "", True)


def _stub() -> DoctorRow:
    from aitune_triton.triton import tools

    name = "python backend stub"
    try:
        stub = tools.bundled_stub()
    except tools.ToolMissing as exc:
        return DoctorRow(name, False, str(exc), tools.GET_TRITONSERVER, True)
    if not stub.exists():
        return DoctorRow(name, False, "no stub for Python %s in nvidia-pytriton" % tools.python_version(),
                         "use a Python version that nvidia-pytriton ships a stub for (3.8-3.13)", True)
    libdir = tools.libpython_dir()
    missing = _unresolved_libs(stub)
    if missing:
        return DoctorRow(name, False, "%s cannot load %s" % (stub, ", ".join(missing)),
                         "install the shared libpython of this Python (e.g. libpython%s)" % tools.python_version(),
                         True)
    detail = "Python %s, %s; libpython %s" % (tools.python_version(), stub, libdir or "static (system libpython used)")
    return DoctorRow(name, True, detail, "", True)


def _unresolved_libs(binary) -> list[str]:
    """Libraries ``ldd`` cannot find for ``binary`` in the environment the server would get."""
    from aitune_triton.triton.launch import build_environment

    try:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=30, env=build_environment())
    except (OSError, subprocess.TimeoutExpired):
        return []  # no ldd: nothing to say
    return [line.split("=>")[0].strip() for line in out.stdout.splitlines() if "not found" in line]


def _perf_analyzer() -> DoctorRow:
    from aitune_triton.triton import tools

    info = tools.perf_analyzer_version()
    if info.path is None:
        return DoctorRow("perf_analyzer", False, "not found", "python -m aitune_triton.triton.tools install", True)
    if info.version is None:
        return DoctorRow("perf_analyzer", False, "%s does not run" % info.path,
                         "check libb64.so.0d and libcudart.so.12 (python -m aitune_triton.triton.tools install)", True)
    return DoctorRow("perf_analyzer", True, "%s (%s)" % (info.version, info.path), "", True)


PROBES: tuple[tuple[str, bool, Callable[[], DoctorRow]], ...] = (
    ("python", True, _python),
    ("torch", True, _torch),
    ("gpu", False, _gpu),
    ("cpu", False, _cpu),
    ("numpy", False, _numpy),
    ("onnx", True, _module_version("onnx", "onnx", True, SETUP_HINT)),
    ("onnxruntime", True, _onnxruntime),
    ("tensorrt", False, _tensorrt),
    ("polygraphy", False, _polygraphy),
    ("generate path", False, _generate_path),
    ("modelopt", False, _modelopt),
    ("tritonclient", True, _tritonclient),
    ("tritonserver", True, _tritonserver),
    ("python backend stub", True, _stub),
    ("perf_analyzer", True, _perf_analyzer),
)


def collect() -> list[DoctorRow]:
    """One row per component; ``required`` rows are what generate + validate need."""
    rows = []
    for name, required, probe in PROBES:
        try:
            rows.append(probe())
        except Exception as exc:  # a doctor must report, not crash
            log.debug("doctor probe %s failed", name, exc_info=True)
            rows.append(DoctorRow(name, False, "%s: %s" % (type(exc).__name__, exc), SETUP_HINT, required))
    return rows


def exit_code(rows: list[DoctorRow]) -> int:
    return 0 if all(r.ok for r in rows if r.required) else 1


def render(rows: list[DoctorRow], console=None) -> None:
    from aitune_triton.console import make_console
    from rich.table import Table
    from rich.text import Text

    console = console or make_console()
    table = Table(title="aitune-triton doctor")
    table.add_column("component")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    table.add_column("hint", overflow="fold")
    for row in rows:
        if row.ok:
            status = "[green]ok[/green]"
        elif row.required:
            status = "[red]MISSING[/red]"
        else:
            status = "[yellow]optional[/yellow]"
        # detail and hint quote versions, paths and exceptions: plain text, never markup
        table.add_row(Text(row.name), status, Text(row.detail), Text(row.hint))
    console.print(table)
    console.print("required components: %s" % ("all present" if exit_code(rows) == 0 else "[red]some missing[/red]"))
