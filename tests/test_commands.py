"""The Python API without the CLI: each command of ``aitune_triton`` called directly, with typed
options and results. Servers are real (an attached ``url`` where nothing answers needs none); S3
is moto's server (``s3_endpoint``)."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import pytest

import aitune_triton
from aitune_triton.not_given import NOT_GIVEN
from aitune_triton.errors import ServerError, UserError
from aitune_triton.triton.launch import free_port
from aitune_triton.triton.object_storage import S3Location, client

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "model_repository"
REPORT = ROOT / "tests" / "deploy" / "data" / "validate_report.json"


@pytest.fixture
def repo(tmp_path) -> Path:
    """A copy of the committed reference repository (the cnn example's fallback)."""
    copy = tmp_path / "repo"
    shutil.copytree(REFERENCE, copy)
    return copy


def test_the_package_exports_every_command_lazily_and_validate_and_tune_stay_subpackages():
    for name in ("generate", "validate", "tune", "serve", "push", "plan", "deploy_k8s", "pack_env", "build_plan"):
        assert callable(getattr(aitune_triton, name)), name
    assert set(aitune_triton.__all__) >= {"GenerateOptions", "ValidateOptions", "TuneOptions", "ServeOptions",
                                          "PlanOptions", "DeployK8sOptions", "ServerTarget"}
    for name in aitune_triton.__all__:
        assert getattr(aitune_triton, name) is not None, name
    import aitune_triton.validate.harness as harness  # the subpackage is still a package

    assert harness.validate_repository and aitune_triton.validate.__name__ == "aitune_triton.validate"


def test_generate_options_are_overrides_that_keep_what_was_not_given():
    options = aitune_triton.GenerateOptions(backends=("python",), max_batch_size=None, tensorrt={"precision": "fp16"},
                                            force=True)
    assert options.overrides() == {"backends": ("python",), "max_batch_size": None,
                                   "tensorrt": {"precision": "fp16"}}
    assert aitune_triton.GenerateOptions().name is NOT_GIVEN


def test_validate_against_a_url_where_nothing_answers_reports_the_server_and_writes_the_default_report(repo):
    options = aitune_triton.ValidateOptions(url="127.0.0.1:%d" % free_port(), perf=False)
    report = aitune_triton.validate(repo, options)
    assert report.exit_code == 1 and "no Triton server answers" in report.server.error
    written = json.loads((repo.parent / "repo_validation_report" / "report.json").read_text())
    assert written["server"]["mode"] == "url"


def test_tune_refuses_a_missing_repository_and_an_s3_repository_with_a_url(tmp_path):
    with pytest.raises(UserError, match="model repository .*nope does not exist"):
        aitune_triton.tune(tmp_path / "nope", "cnn")
    with pytest.raises(UserError, match="tune --url needs the local repository"):
        aitune_triton.tune("s3://bucket/prefix", "cnn", server=aitune_triton.ServerTarget(url="127.0.0.1:1"))


def test_tune_attached_to_a_url_where_nothing_answers_is_a_server_error(repo):
    target = aitune_triton.ServerTarget(url="127.0.0.1:%d" % free_port())
    with pytest.raises(ServerError, match="no Triton server answers"):
        aitune_triton.tune(repo, "cnn", aitune_triton.TuneOptions(instances=(1,), delays_us=(0,)), target)



def test_tune_takes_the_repository_lock_before_it_reads_the_model_or_starts_a_server(repo):
    """A generate --force of the model under way (it holds the lock until its commit): tune refuses
    with one line before its integrity check or a server reads the model that is being replaced,
    else it would search the old config and record the old manifest over the new model."""
    from aitune_triton.triton.repository import stage_models

    heard: list[str] = []
    with stage_models(repo, ["cnn"], force=True) as staged:
        shutil.copytree(repo / "cnn", staged.dir("cnn"), dirs_exist_ok=True)
        with pytest.raises(UserError, match="^another aitune-triton run is writing to .*; wait for it to finish$"):
            aitune_triton.tune(repo, "cnn", aitune_triton.TuneOptions(instances=(1,), delays_us=(0,)),
                               progress=heard.append)
    assert heard == []  # no server was started (or attached) before the lock


def test_server_target_refuses_contradictions():
    with pytest.raises(UserError, match="give only one"):
        aitune_triton.ServerTarget(url="127.0.0.1:8000", tritonserver=Path("/bin/tritonserver"))
    with pytest.raises(UserError, match="pass --url too"):
        aitune_triton.ServerTarget(grpc_url="127.0.0.1:8001")


def test_plan_reads_the_report_and_writes_the_plan(repo, tmp_path):
    out = tmp_path / "plan.json"
    result = aitune_triton.plan(repo, "cnn", aitune_triton.PlanOptions(target_rps=2000, p99_ms=30, report=REPORT,
                                                                        out=out))
    assert result.replicas == 3 and result.operating_point.concurrency == 8
    assert json.loads(out.read_text())["replicas"] == 3
    with pytest.raises(UserError, match="plan works on a local repository"):
        aitune_triton.plan("s3://bucket/x", "cnn", aitune_triton.PlanOptions(target_rps=1, p99_ms=1))


def test_deploy_k8s_writes_schema_checked_manifests(repo, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text('{"model": "cnn", "replicas": 4, "gpus_per_replica": 0, "p99_ms": 25.0}')
    result = aitune_triton.deploy_k8s(repo, aitune_triton.DeployK8sOptions(out=tmp_path / "k8s", replicas="auto",
                                                                          plan_file=plan, pvc="models"))
    assert result.spec.replicas == 4 and result.spec.gpus == 0 and result.spec.server_repository == "/models"
    assert sorted(p.name for p in result.files) == ["deployment.yaml", "hpa.yaml", "prometheus-adapter-values.yaml",
                                                    "service.yaml"]
    assert "deployment.yaml: Deployment/cnn" in result.checked  # the Kubernetes objects, schema-checked
    with pytest.raises(UserError, match="--replicas must be a number or 'auto'"):
        aitune_triton.deploy_k8s(repo, aitune_triton.DeployK8sOptions(out=tmp_path / "b", replicas="many", pvc="m"))


def test_push_then_every_command_opens_the_pushed_version(repo, tmp_path, s3_endpoint):
    base = S3Location.parse("s3://%s/api-test/team/cnn" % s3_endpoint)
    client(base).create_bucket(Bucket=base.bucket)
    pushed = aitune_triton.push(repo, base.url)
    assert pushed.files > 0 and pushed.repository.url.startswith(base.url + "/versions/")
    again = aitune_triton.push(repo, base.url)
    assert again.previous == pushed.version
    result = aitune_triton.deploy_k8s(base.url, aitune_triton.DeployK8sOptions(out=tmp_path / "k8s"))
    assert result.spec.server_repository == again.repository.url  # the version the pointer names
    with pytest.raises(UserError, match="push works on a local repository"):
        aitune_triton.push(base.url, base.url)


def test_pack_env_and_build_plan_refuse_what_they_cannot_do_here(repo, tmp_path):
    with pytest.raises(UserError, match="pack-env works on a local repository"):
        aitune_triton.pack_env("s3://bucket/x", "cnn")
    with pytest.raises(UserError, match="does not exist"):
        aitune_triton.pack_env(tmp_path / "nope", "cnn")
    with pytest.raises(UserError, match="TensorRT is not available here|no staged TensorRT model"):
        aitune_triton.build_plan(repo)


@pytest.mark.live
def test_serve_yields_the_urls_of_a_ready_server_and_stops_it(repo, tmp_path):
    options = aitune_triton.ServeOptions(http_port=None, grpc_port=None, metrics_port=None)
    try:
        with aitune_triton.serve(repo, options) as running:
            urls = running.urls
            assert urls.repository == str(repo) and urls.version is None
            with urllib.request.urlopen("http://%s/v2/models/cnn/ready" % urls.http, timeout=10) as answer:
                assert answer.status == 200
            running.wait(timeout_s=0.1)  # still serving: returns without an error
            server = running.server
    except ServerError as exc:
        if "not found" in str(exc):
            pytest.skip("no tritonserver here: %s" % exc)
        raise
    assert server.returncode is not None and not server.children()


def test_the_python_api_examples_use_only_exported_names():
    """docs/python-api.md shows every command; the README's short example uses a few."""
    import ast
    import re

    page = (ROOT / "docs" / "python-api.md").read_text()
    block = re.search(r"# Python API\n.*?```python\n(.*?)```", page, re.S).group(1)
    ast.parse(block)
    used = set(re.findall(r"\bat\.(\w+)", block))
    assert used >= {"generate", "validate", "tune", "serve", "push", "plan", "deploy_k8s", "pack_env", "build_plan"}
    assert used <= set(aitune_triton.__all__)
    readme = re.search(r"## Python API\n.*?```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    ast.parse(readme)
    assert set(re.findall(r"\bat\.(\w+)", readme)) <= set(aitune_triton.__all__)


def test_serve_takes_the_startup_timeout_like_validate_and_tune(monkeypatch):
    """ServeOptions.startup_timeout_s existed but `serve` had no --startup-timeout; a bad value is
    one line before anything is opened."""
    import contextlib

    from click.testing import CliRunner

    import aitune_triton.commands as commands
    from aitune_triton.cli import main

    seen = []

    @contextlib.contextmanager
    def fake_serve(repo, options, progress=None, notify=None):
        seen.append(options.startup_timeout_s)
        raise UserError("stop here")
        yield

    monkeypatch.setattr(commands, "serve", fake_serve)
    result = CliRunner().invoke(main, ["serve", "no-such-repo", "--startup-timeout", "600"])
    assert result.exit_code == 2 and seen == [600.0], result.output
    monkeypatch.undo()
    result = CliRunner().invoke(main, ["serve", "no-such-repo", "--startup-timeout", "0"])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        "error: the start-up timeout must be > 0, got 0.0"], result.output


def test_tune_of_an_s3_repository_keeps_its_reports_in_a_lasting_folder(repo, tmp_path, s3_endpoint, monkeypatch):
    """The reports of an s3:// REPO were written into the temporary download and the CLI printed
    /tmp/aitune-s3-... paths deleted on return; they are now copied to ./<name>_tune_report/<model>,
    and --export-model-analyzer (a config naming the deleted download) is refused up front."""
    import dataclasses

    import aitune_triton.commands as commands

    @dataclasses.dataclass(frozen=True)
    class Searched:  # the fields of TuneResult that tune reads on this path: nothing was chosen, nothing pushed
        reports: dict
        chosen: None = None

    downloads = []

    def search_writing_reports(local, model, options, server, progress):
        downloads.append(local)
        where = local / model / "tuning"
        where.mkdir()
        (where / "tune_report.json").write_text("{}")
        (where / "tune_report.md").write_text("# tuned\n")
        return Searched({"json": where / "tune_report.json", "markdown": where / "tune_report.md"})

    base = S3Location.parse("s3://%s/tune-report-test/team/cnn" % s3_endpoint)
    client(base).create_bucket(Bucket=base.bucket)
    aitune_triton.push(repo, base.url)
    monkeypatch.setattr(commands, "_tune_local", search_writing_reports)
    monkeypatch.chdir(tmp_path)
    outcome = aitune_triton.tune(base.url, "cnn")
    lasting = Path("cnn_tune_report") / "cnn"
    assert outcome.result.reports == {"json": lasting / "tune_report.json", "markdown": lasting / "tune_report.md"}
    assert (tmp_path / lasting / "tune_report.md").read_text() == "# tuned\n" and not downloads[0].exists()
    with pytest.raises(UserError, match="^--export-model-analyzer writes a config naming the local model repository, "
                                        "and an s3:// REPO is tuned in a temporary download deleted afterwards"):
        aitune_triton.tune(base.url, "cnn", aitune_triton.TuneOptions(export_model_analyzer=tmp_path / "ma.yaml"))
    assert len(downloads) == 1
