"""The integrity check against the real CLI and the embedded Triton 2.51: what Triton or the stub
would load beyond the hashed artifacts (a symlinked package shadowing ``aitune_runtime.py``, a
config naming a file outside the repository, a backend typo, a version directory Triton reads
under another name, a manifest without hashes, a config symlinked to a private file) is refused
before the server sees the model, and ``serve`` refuses modified code as ``validate`` does.

One repository is generated for the module (examples/cnn, ExportedProgram fallback: no compile);
each test works on its own copy. Every payload writes a marker file if it ever runs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.live, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "aitune_triton.cli"]
SECRET = "TOPSECRET-first-token"


@pytest.fixture(scope="module")
def generated(tmp_path_factory, triton_server_factory) -> Path:
    from aitune_triton.api import generate

    repo = tmp_path_factory.mktemp("integrity") / "repo"
    generate(ROOT / "examples" / "cnn" / "model.py", repo,
             overrides={"fallback_format": "export", "backends": ("python",)})
    return repo


@pytest.fixture
def repo(generated, tmp_path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(generated, copy)
    return copy


def clone_model(repo: Path, dst: str) -> Path:
    shutil.copytree(repo / "cnn", repo / dst)
    config = repo / dst / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "cnn"', 'name: "%s"' % dst))
    return repo / dst


def payloads(tmp_path: Path) -> tuple[Path, Path]:
    """(folder outside the repository with evil.py, a package and a 0600 secret; the marker they write)."""
    marker = tmp_path / "PAYLOAD-RAN"
    outside = tmp_path / "x"
    (outside / "pkg").mkdir(parents=True)
    code = "open(%r, 'a').write('ran\\n')\n" % str(marker)
    (outside / "evil.py").write_text(code + "class TritonPythonModel:\n    def execute(self, requests):\n"
                                     "        return []\n")
    (outside / "pkg" / "__init__.py").write_text(code)
    (outside / "secret.txt").write_text(SECRET + " more\n")
    (outside / "secret.txt").chmod(0o600)
    return outside, marker


def test_models_that_would_load_unchecked_files_are_refused_before_the_server_sees_them(repo, tmp_path):
    outside, marker = payloads(tmp_path)
    (clone_model(repo, "symdir") / "1" / "aitune_runtime").symlink_to(outside / "pkg")
    cfg = clone_model(repo, "evilcfg") / "config.pbtxt"
    # repo/evilcfg/1/../../../x/evil.py is tmp_path/x/evil.py
    cfg.write_text(cfg.read_text() + 'default_model_filename: "../../../x/evil.py"\n')
    for name, backend in (("typo", "pyhton"), ("wrongbe", "onnxruntime")):
        cfg = clone_model(repo, name) / "config.pbtxt"
        cfg.write_text(cfg.read_text().replace('backend: "python"', 'backend: "%s"' % backend))
    shutil.copytree(repo / "cnn" / "1", clone_model(repo, "ver3") / " 3")
    nofiles = clone_model(repo, "nofiles")
    (nofiles / "1" / "aitune_runtime.py").write_text((outside / "evil.py").read_text())
    manifest = json.loads((nofiles / "manifest.json").read_text())
    (nofiles / "manifest.json").write_text(json.dumps({**manifest, "files": {}}))
    cfglink = clone_model(repo, "cfglink") / "config.pbtxt"
    cfglink.unlink()
    cfglink.symlink_to(outside / "secret.txt")
    refused = ("symdir", "evilcfg", "typo", "wrongbe", "ver3", "nofiles", "cfglink")

    report_dir = tmp_path / "report"
    t0 = time.monotonic()
    proc = subprocess.run(CLI + ["validate", str(repo), "--no-perf", "--report", str(report_dir)],
                          capture_output=True, text=True, timeout=900)
    elapsed = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "FAILED" in out and "Traceback" not in out, out
    report = json.loads((report_dir / "report.json").read_text())
    models = {m["name"]: {c["name"]: c for c in m["checks"]} for m in report["models"]}
    assert all(c["status"] == "pass" or c["status"] == "skip" for c in models["cnn"].values()), models["cnn"]
    assert models["cnn"]["load"]["status"] == "pass"  # the control: an untouched copy serves
    for name in refused:  # one failed integrity check each, nothing loaded (no 120 s load timeout)
        assert list(models[name]) == ["integrity"] and models[name]["integrity"]["status"] == "fail", models[name]
    detail = {name: models[name]["integrity"]["detail"] for name in refused}
    assert "1/aitune_runtime is a symlink" in detail["symdir"]
    assert "default_model_filename '../../../x/evil.py' is not a file name inside the version directory" \
        in detail["evilcfg"]
    assert "config.pbtxt names backend 'pyhton', but the model was generated for the 'python' backend" \
        in detail["typo"]
    assert "names backend 'onnxruntime'" in detail["wrongbe"]
    assert "directory ' 3' is read by Triton as version 3" in detail["ver3"]
    assert "records no artifact hashes" in detail["nofiles"]
    assert "config.pbtxt is a symlink" in detail["cfglink"]
    assert SECRET not in (report_dir / "report.json").read_text() + out
    log = (report_dir / "tritonserver.log").read_text()
    assert not any("'%s'" % name in log for name in refused)  # never handed to the server
    assert not marker.exists()
    assert elapsed < 600


def test_serve_and_tune_refuse_modified_code_before_starting_a_server(repo, tmp_path):
    _, marker = payloads(tmp_path)
    runtime = repo / "cnn" / "1" / "aitune_runtime.py"
    runtime.write_text(runtime.read_text() + "\nopen(%r, 'a').write('ran')\n" % str(marker))
    for command in (["serve", str(repo)], ["tune", str(repo), "--model", "cnn"]):
        t0 = time.monotonic()
        proc = subprocess.run(CLI + command, capture_output=True, text=True, timeout=120)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 1 and "Traceback" not in out, out
        assert "refusing to load %s: 1/aitune_runtime.py does not match its recorded SHA-256" % (repo / "cnn") in out
        assert time.monotonic() - t0 < 60 and "Triton is ready" not in out
    assert not marker.exists()
