"""``pack-env`` on the real embedded Triton: the model loads from its packed environment
(``EXECUTION_ENV_PATH`` tarball), while the same model bound to a bare venv without torch fails
with the runtime's one-line message. Packing torch is the slow part (~300 MB, about a minute)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import numpy as np
import pytest

from aitune_triton.errors import ServerError, UserError
from aitune_triton.triton.manifest import load_reference
from aitune_triton.triton.pack_env import ENV_FILE, ENV_VALUE, pack_env

pytestmark = [pytest.mark.live, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    repo = tmp_path_factory.mktemp("packed-repo")
    shutil.copytree(ROOT / "model_repository" / "cnn", repo / "cnn", ignore=shutil.ignore_patterns("__pycache__"))
    return repo, pack_env(repo, "cnn")


def test_the_tarball_is_relocatable_and_holds_what_the_stub_needs(packed):
    repo, env = packed
    assert env.path == repo / "cnn" / ENV_FILE and env.size_bytes > 100e6
    print("\npack-env: %.0f MB in %.1f s: %s" % (env.size_bytes / 1e6, env.seconds, ", ".join(env.distributions)))
    assert {d.split("==")[0] for d in env.distributions} >= {"torch", "numpy"}
    py = "python%d.%d" % sys.version_info[:2]
    with tarfile.open(env.path) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert all(not (m.issym() or m.islnk() or m.name.startswith("/") or ".." in m.name) for m in members.values())
    for need in ("bin/python3", "bin/activate", "lib/lib%s.so.1.0" % py, "lib/%s/os.py" % py,
                 "lib/%s/site-packages/torch/__init__.py" % py, "lib/%s/site-packages/numpy/__init__.py" % py):
        assert need in members, need
    assert not any(n.startswith("lib/%s/site-packages/torch/include/" % py) for n in members)
    assert "lib/%s/site-packages/torch/bin/torch_shm_manager" % py in members  # import torch checks it
    assert ENV_VALUE in (repo / "cnn" / "config.pbtxt").read_text()
    with pytest.raises(UserError, match=r"packs this interpreter's environment \(Python 3\.\d+\), not 2\.7"):
        pack_env(repo, "cnn", python="2.7")


def test_the_model_serves_from_its_packed_environment(packed, triton_server_factory, tmp_path):
    repo, _ = packed
    bare = tmp_path / "bare-venv"  # a Python with no torch, as in a stock tritonserver image
    base_python = Path(sysconfig.get_config_var("BINDIR")) / ("python%d.%d" % sys.version_info[:2])
    subprocess.run([str(base_python), "-m", "venv", "--without-pip", str(bare)], check=True)
    import numpy  # the stub's own utilities import numpy (stock images have it): linked in, torch is not

    site = bare / "lib" / ("python%d.%d" % sys.version_info[:2]) / "site-packages"
    for name in ("numpy", "numpy.libs"):
        source = Path(numpy.__file__).parent.parent / name
        if source.exists():
            (site / name).symlink_to(source)
    shutil.copytree(repo / "cnn", repo / "cnn_bare", ignore=shutil.ignore_patterns(ENV_FILE, "__pycache__"))
    config = repo / "cnn_bare" / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "cnn"', 'name: "cnn_bare"').replace(ENV_VALUE, str(bare)))
    extracted_before = set(Path("/tmp").glob("python_env_*"))  # where the python backend extracts the tarball
    server = triton_server_factory(repo, load_models=("cnn",), startup_timeout_s=300)
    try:
        _serve_and_refuse(server, repo)
    finally:
        server.stop()
        # the 2.51 backend leaves its ~900 MB extraction behind: remove ours
        for path in set(Path("/tmp").glob("python_env_*")) - extracted_before:
            if any("aitune-triton pack-env" in a.read_text()[:200] for a in path.glob("*/bin/activate")):
                shutil.rmtree(path, ignore_errors=True)


def _serve_and_refuse(server, repo: Path) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_url, network_timeout=120)
    case = load_reference(repo / "cnn" / "reference.npz")[0]
    inputs = []
    for name, value in case.inputs.items():
        inp = httpclient.InferInput(name, list(value.shape), "FP32")
        inp.set_data_from_numpy(value, binary_data=True)
        inputs.append(inp)
    result = client.infer("cnn", inputs)
    for name, expected in case.outputs.items():
        np.testing.assert_allclose(result.as_numpy(name), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ServerError, match=r"model cnn_bare needs a torch whose torch\.export schema major is \d+ "
                                          r"\(e\.g\. torch 2\.\d+\) but the stub's Python 3\.\d+\.\d+ has no torch: "
                                          r".*`aitune-triton pack-env REPO --model cnn_bare`"):
        server.load_model("cnn_bare", timeout_s=240)
