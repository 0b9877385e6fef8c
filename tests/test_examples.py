"""The examples and the committed model_repository/: every example generates, the README's
model.py example works as written, and the committed repository never drifts from the code."""
import json
import re
from pathlib import Path

import pytest

from aitune_triton.api import generate

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "model_repository"
# fields that legitimately vary between machines and runs
VOLATILE = {("versions",), ("artifact", "max_errors"), ("tensorrt", "onnx_check"), ("tensorrt", "reason")}


def _normalise_manifest(d: dict) -> dict:
    d = json.loads(json.dumps(d))
    d["files"] = sorted(d.get("files", {}))  # which artifacts are sealed; their hashes vary with the compile
    for path in VOLATILE:
        node = d
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    return d


def _text(path: Path, repo: Path) -> str:
    return path.read_text().replace(str(repo), "REPO").replace("model_repository", "REPO")


def _files(repo: Path) -> list[Path]:
    """The repository's files; bytecode a server's stub may leave and generate's logs are not part of it."""
    return sorted(rel for rel in (p.relative_to(repo) for p in repo.rglob("*") if p.is_file())
                  if "__pycache__" not in rel.parts and rel.parts[1:2] != ("logs",))


def test_the_committed_repository_holds_no_machine_code():
    """CI and newcomers may have any x86-64 CPU: no AOTInductor package (code for one host's ISA)."""
    data = json.loads((COMMITTED / "cnn" / "1" / "aitune_model.json").read_text())
    assert data["format"] == "export" and data["requirements"]["cpu_flags"] == []
    assert not list(COMMITTED.rglob("*.aoti.pt2")) and not list(COMMITTED.rglob("*.so"))


def _runtime_data(path: Path) -> dict:
    d = json.loads(path.read_text())
    d.pop("sha256")  # the artifact's bytes may differ per run
    d["requirements"].pop("python")
    return d


def test_committed_repository_matches_the_code(tmp_path):
    """As `make reference` writes it: portable, so it loads on any x86-64 host CI or a newcomer has, and
    with a declared max_batch_size (a measured one depends on the machine)."""
    out = tmp_path / "model_repository"
    generate(ROOT / "examples" / "cnn" / "model.py", out, {"portable": True, "max_batch_size": 8})
    committed, fresh = _files(COMMITTED), _files(out)
    assert committed == fresh
    for rel in fresh:
        if rel.suffix in (".pbtxt", ".sh", ".py", ".md"):
            assert _text(COMMITTED / rel, COMMITTED) == _text(out / rel, out), \
                "%s drifted; run `make reference`" % rel
        elif rel.name == "aitune_model.json":
            assert _runtime_data(COMMITTED / rel) == _runtime_data(out / rel), "%s drifted" % rel
        elif rel.name == "manifest.json":
            a = _normalise_manifest(json.loads((COMMITTED / rel).read_text()))
            b = _normalise_manifest(json.loads((out / rel).read_text()))
            assert json.loads(_text_json(a)) == json.loads(_text_json(b)), "%s drifted" % rel


def _text_json(d: dict) -> str:
    return re.sub(r'"[^"]*model_repository', '"REPO', json.dumps(d, sort_keys=True))


@pytest.mark.parametrize("example", ["encoder", "multi_io", "custom_profiles"])
def test_examples_generate(tmp_path, example):
    result = generate(ROOT / "examples" / example / "model.py", tmp_path / "repo",
                      {"fallback_format": "export"})
    ready = [m for m in result.models if m.status == "ready"]
    assert ready and all((m.path / "config.pbtxt").exists() for m in ready)


def test_readme_model_example_generates(tmp_path):
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Your model.py\n\n```python\n(.*?)```", readme, re.S).group(1)
    model_py = tmp_path / "readme_model" / "model.py"
    model_py.parent.mkdir()
    model_py.write_text(block)
    result = generate(model_py, tmp_path / "repo", {"fallback_format": "export"})
    names = {m.name: m for m in result.models}
    assert names["classifier"].status == "ready" and names["classifier_trt"].status == "pending"
    config = (tmp_path / "repo" / "classifier" / "config.pbtxt").read_text()
    assert "max_batch_size: 16" in config and "count: 2" in config
