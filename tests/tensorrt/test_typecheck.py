"""aitune_triton/tensorrt/ type-checked against TensorRT's own API (no TensorRT can be installed here).

mypy reads the TensorRT 10.13 Python bindings from ``tensorrt-stubs`` and Polygraphy from its
source, so a misspelt engine method, a wrong argument type or an unknown Polygraphy keyword fails
this test. TensorRT enums that the builder resolves by name at build time (``TrtSymbol``, the
dtype table) are written out as attribute accesses and checked the same way.

``scripts/bootstrap.sh`` installs the stubs with ``pip install --no-deps --target .venv/typestubs``:
they depend on the full TensorRT wheel, and installed into site-packages their ``tensorrt/``
directory makes ``import tensorrt`` succeed as an empty namespace package, which breaks ModelOpt.
"""

import importlib.util
import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aitune_triton.tensorrt.plan import TRT_DTYPES
from aitune_triton.tensorrt.settings import HARDWARE_LEVELS, TrtSymbol, create_config_kwargs
from aitune_triton.tensorrt.config import TensorRTBackendConfig
from aitune_triton.profile_set import ProfileSet, TensorRTProfile

ROOT = Path(__file__).resolve().parents[2]
STUBS_PIN = "tensorrt-stubs==10.13.0.35.1"
# Lines of the published stubs that are not valid Python (pybind11-stubgen output): a parameter
# named `in`, and a required parameter after defaulted ones. Repaired in a copy; each must still
# be found, so a new stubs release that fixes them makes this test say so.
STUB_REPAIRS = (
    (", in: ", ", in_: "),
    ("power: Weights = None, channel_axis: int)", "power: Weights = None, channel_axis: int = ...)"),
)

pytestmark = pytest.mark.slow


def _stubs_dir() -> Path:
    candidates = [Path(os.environ["AITUNE_TENSORRT_STUBS"])] if os.environ.get("AITUNE_TENSORRT_STUBS") else []
    candidates.append(Path(sys.prefix) / "typestubs")
    for path in candidates:
        if (path / "tensorrt" / "__init__.pyi").is_file():
            return path
    pytest.fail("TensorRT type stubs not found in %s; install them with `pip install --no-deps --target "
                "%s/typestubs '%s'` (scripts/bootstrap.sh does)" % (", ".join(map(str, candidates)), sys.prefix,
                                                                    STUBS_PIN))


def _mypy_path(tmp: Path) -> Path:
    stubs = _stubs_dir()
    out = tmp / "mypy_path"
    out.mkdir()
    for package in ("tensorrt", "tensorrt_bindings"):
        shutil.copytree(stubs / package, out / package)
    bindings = out / "tensorrt_bindings" / "tensorrt.pyi"
    text = bindings.read_text()
    for old, new in STUB_REPAIRS:
        assert old in text, "tensorrt-stubs changed (%r is gone): revisit STUB_REPAIRS" % old
        text = text.replace(old, new)
    bindings.write_text(text)
    # Polygraphy has no py.typed marker: put its source on the path so its signatures are checked
    (out / "polygraphy").symlink_to(Path(importlib.util.find_spec("polygraphy").submodule_search_locations[0]))
    return out


def _config_kwargs() -> list[dict]:
    """``create_config_kwargs`` for settings that between them use every keyword it can produce."""
    profile = TensorRTProfile().add_input_shape("x", (1, 2), (2, 2), (4, 2))
    profiles = ProfileSet((profile,), "custom", 4)
    timing_cache = ROOT / "pyproject.toml"  # any existing file: load_timing_cache appears only then
    return [create_config_kwargs(TensorRTBackendConfig(workspace_size=1 << 20, compatibility_level=level,
                                                       optimization_level=3, version_compatible=True,
                                                       timing_cache=timing_cache), profiles)
            for level in HARDWARE_LEVELS]


def _create_config_calls() -> str:
    """``CreateConfig(**kwargs)`` hides the keywords from the checker: spell them out, split between
    CreateConfig's own parameters and those it passes on to ``_CreateConfigCommon``."""
    from polygraphy.backend.trt.config import CreateConfig

    keys = sorted({k for kw in _config_kwargs() for k in kw})
    own = set(inspect.signature(CreateConfig.__init__).parameters) - {"self", "kwargs"}
    call = "{}({})\n".format
    return ("from polygraphy.backend.trt.config import CreateConfig, _CreateConfigCommon\n"
            + call("CreateConfig", ", ".join("%s=None" % k for k in keys if k in own))
            + call("_CreateConfigCommon", ", ".join("%s=None" % k for k in keys if k not in own)))


def _symbols() -> set[tuple[str, str]]:
    """Every TensorRT enum member the package names in strings (resolved only at build time)."""
    found = set()

    def walk(value):
        if isinstance(value, TrtSymbol):
            found.add((value.enum, value.member))
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(k)
                walk(v)

    for kwargs in _config_kwargs():
        walk(kwargs)
    found |= {("DataType", member) for member in TRT_DTYPES}
    found |= {("TensorIOMode", "INPUT"), ("TensorIOMode", "OUTPUT")}  # engine_io_of compares modes with these
    return found


def test_tensorrt_package_typechecks_against_tensorrt_stubs(tmp_path):
    mypy_path = _mypy_path(tmp_path)
    symbols = _symbols()
    assert ("MemoryPoolType", "WORKSPACE") in symbols and ("HardwareCompatibilityLevel", "AMPERE_PLUS") in symbols
    checked = tmp_path / "tensorrt_symbols_used.py"
    checked.write_text("import tensorrt\n\n" + "".join("tensorrt.%s.%s\n" % s for s in sorted(symbols))
                       + _create_config_calls())
    assert "load_timing_cache=None" in checked.read_text() and "memory_pool_limits=None" in checked.read_text()
    env = {**os.environ, "MYPYPATH": str(mypy_path)}
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "tests/tensorrt/mypy.ini"),
                           "--cache-dir", str(ROOT / ".cache" / "mypy"), "aitune_triton/tensorrt/", str(checked)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success: no issues found" in proc.stdout


def test_no_type_ignores_in_the_tensorrt_package():
    ignores = [(p.name, n) for p in sorted((ROOT / "aitune_triton" / "tensorrt").glob("*.py"))
               for n, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"#\s*type:\s*ignore", line)]
    assert ignores == []
