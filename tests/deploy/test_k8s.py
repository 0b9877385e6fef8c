"""Kubernetes manifests: golden files for the examples, every object checked against the
Kubernetes OpenAPI schemas (kubernetes-validate, bundled schemas, offline), the image choice, and
the CLI's one-line errors. Regenerate the golden files with AITUNE_UPDATE_GOLDEN=1."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from aitune_triton.cli import main
from aitune_triton.deploy import k8s
from aitune_triton.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "k8s"
S3_VERSION = "s3://minio.models.svc:9000/models/team/cnn/versions/20261130T120000Z-0123abcd"
IMAGE = ("nvcr.io/nvidia/tritonserver:24.10-py3", "no TensorRT plan; Triton 2.51 (24.10) is the release the "
         "repository was validated on; Python-backend models need torch installed in the image")

EXAMPLES = {
    "s3-deployment": dict(name="cnn", repository="s3://minio.models.svc:9000/models/team/cnn",
                          server_repository=S3_VERSION, replicas=3, gpus=1, queue_target_us=3000),
    "pvc-deployment-cpu": dict(name="cnn", repository="model_repository", server_repository="/models", replicas=2,
                               gpus=0, pvc="triton-models", cpu="2", memory="8Gi"),
    "s3-kserve": dict(name="cnn", repository="s3://minio.models.svc:9000/models/team/cnn",
                      server_repository=S3_VERSION, replicas=2, gpus=1, kserve=True),
    "pvc-kserve": dict(name="cnn", repository="model_repository", server_repository="/models", replicas=1, gpus=1,
                       pvc="triton-models", kserve=True),
}


def _spec(example: str) -> k8s.DeploySpec:
    return k8s.DeploySpec(image=IMAGE[0], image_reason=IMAGE[1], **EXAMPLES[example])


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_manifests_match_golden_and_the_kubernetes_schema(example):
    files = k8s.render(_spec(example))
    folder = GOLDEN / example
    if os.environ.get("AITUNE_UPDATE_GOLDEN"):
        k8s.write(files, folder)
    assert sorted(files) == sorted(p.name for p in folder.iterdir())
    for name, text in files.items():
        assert text == (folder / name).read_text(), "%s/%s differs from the golden file" % (example, name)
    checked = k8s.check(files)
    kinds = {c.split(": ")[1].split("/")[0] for c in checked}
    if EXAMPLES[example].get("kserve"):
        assert "InferenceService" in kinds
    else:
        assert kinds == {"Deployment", "Service", "HorizontalPodAutoscaler"}


def test_deployment_content_that_operations_rely_on():
    docs = {d["kind"]: d for name, text in k8s.render(_spec("s3-deployment")).items()
            for d in yaml.safe_load_all(text) if d and "kind" in d}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "--model-repository=%s" % S3_VERSION in container["args"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}} in pod["volumes"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]}
    assert env == dict.fromkeys(("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"),
                                "aitune-s3-credentials")
    metric = docs["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["pods"]
    assert metric["metric"]["name"] == k8s.METRIC and metric["target"]["averageValue"] == "3000"
    assert docs["Service"]["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("broken, where", [
    (("replicas: 3", "replicas: three"), "spec/replicas"),
    (("periodSeconds: 5", "periodSeconds: 5\n            timeoutSecond: 1"), "timeoutSecond"),
])
def test_the_schema_check_catches_a_broken_manifest(broken, where):
    files = k8s.render(_spec("s3-deployment"))
    files["deployment.yaml"] = files["deployment.yaml"].replace(*broken)
    with pytest.raises(UserError, match="deployment.yaml: Deployment fails the Kubernetes 1.37.0 schema"):
        k8s.check(files)


def test_image_follows_the_plan_tensorrt_or_the_validated_release():
    built = {"name": "m", "tensorrt": {"status": "built", "stamp": {"tensorrt_version": "10.6.0.26"}}}
    assert k8s.choose_image([built], "2.51.0")[0] == "nvcr.io/nvidia/tritonserver:24.11-py3"
    assert k8s.choose_image([{"name": "m", "tensorrt": {"status": "pending"}}], "2.51.0")[0].endswith(":24.10-py3")
    with pytest.raises(UserError, match="no known Triton container ships TensorRT 9.9"):
        k8s.choose_image([{"name": "m", "tensorrt": {"status": "built", "stamp": {"tensorrt_version": "9.9.1"}}}],
                         None)
    other = {"name": "n", "tensorrt": {"status": "built", "stamp": {"tensorrt_version": "10.9.0"}}}
    with pytest.raises(UserError, match="different TensorRT versions"):
        k8s.choose_image([built, other], None)


@pytest.mark.parametrize("field, value, message", [
    ("name", "Bad_Name", "not a valid Kubernetes name"),
    ("replicas", 0, r"--replicas must be an integer in \[1, 10000\]"),
    ("memory", "16GB", "not a Kubernetes quantity"),
    ("max_replicas", 1, "--max-replicas 1 is below --replicas 3"),
])
def test_bad_spec_values_are_one_line_errors(field, value, message):
    with pytest.raises(UserError, match=message):
        k8s.DeploySpec(image=IMAGE[0], image_reason=IMAGE[1], **{**EXAMPLES["s3-deployment"], field: value})


def test_deploy_cli_from_a_local_repository_on_a_pvc(tmp_path):
    out = tmp_path / "k8s"
    result = CliRunner().invoke(main, ["deploy", "k8s", str(ROOT / "model_repository"), "--pvc", "triton-models",
                                       "--replicas", "2", "--gpus-per-replica", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["deployment.yaml", "hpa.yaml", "prometheus-adapter-values.yaml",
                                                     "service.yaml"]
    assert "tritonserver:24.10-py3" in (out / "deployment.yaml").read_text()
    for args, message in [([], "push it .* or pass --pvc CLAIM"),
                          (["--pvc", "x", "--replicas", "auto"], "--replicas auto takes the count from --plan")]:
        bad = CliRunner().invoke(main, ["deploy", "k8s", str(ROOT / "model_repository"), "--out", str(tmp_path / "b")]
                                 + args)
        assert bad.exit_code == 2, bad.output
        assert len(bad.output.strip().splitlines()) == 1 and __import__("re").search(message, bad.output)
    assert not (tmp_path / "b").exists()


def test_deploy_cli_from_object_storage_pins_the_pushed_version(tmp_path, s3_endpoint):
    from aitune_triton.deploy import storage as st
    from aitune_triton.triton import object_storage as obs

    base = obs.S3Location.parse("s3://%s/deploy-test/team/cnn" % s3_endpoint)
    obs.client(base).create_bucket(Bucket=base.bucket)
    pushed = st.push(ROOT / "model_repository", base)
    plan = tmp_path / "plan.json"
    plan.write_text('{"model": "cnn", "replicas": 4, "gpus_per_replica": 1, "p99_ms": 25.0}')
    out = tmp_path / "k8s"
    result = CliRunner().invoke(main, ["deploy", "k8s", base.url, "--replicas", "auto", "--plan", str(plan),
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    deployment = yaml.safe_load((out / "deployment.yaml").read_text())
    assert deployment["spec"]["replicas"] == 4
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--model-repository=%s" % pushed.repository.url in args
    hpa = yaml.safe_load((out / "hpa.yaml").read_text())
    assert hpa["spec"]["minReplicas"] == 4 and hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "2500"


def test_deploy_cli_refuses_a_zero_queue_target_and_a_plan_of_another_model(tmp_path):
    """--queue-target-us 0 became the default (``or``) while -5 was refused; the plan's model was
    read but never checked, so the plan of another model was applied silently."""
    plan = tmp_path / "plan.json"
    plan.write_text('{"model": "resnet", "replicas": 4, "gpus_per_replica": 1, "p99_ms": 25.0}')
    common = ["deploy", "k8s", str(ROOT / "model_repository"), "--pvc", "triton-models", "--out", str(tmp_path / "k")]
    for args, message in ((["--queue-target-us", "0"], r"error: --queue-target-us must be an integer in \[1, "
                                                         r"1000000000\], got 0"),
                          (["--replicas", "auto", "--plan", str(plan)],
                           r"error: .*plan.json is the plan of model 'resnet', which .*model_repository does not "
                           r"hold \(it has: cnn\); plan this repository")):
        result = CliRunner().invoke(main, common + args)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and __import__("re").match(message, lines[0]), result.output
    assert not (tmp_path / "k").exists()
    plan.write_text(plan.read_text().replace("resnet", "cnn"))
    result = CliRunner().invoke(main, common + ["--replicas", "auto", "--plan", str(plan)])
    assert result.exit_code == 0, result.output


def test_deploy_cli_unwritable_out_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(main, ["deploy", "k8s", str(ROOT / "model_repository"), "--pvc", "triton-models",
                                       "--out", str(tmp_path / "file" / "k8s")])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        "error: cannot write the manifests into %s: Not a directory" % (tmp_path / "file" / "k8s")]


INJECTED_SECRET = "x:1\napiVersion: v1\nkind: Secret\nmetadata: {name: stolen}\nstringData: {k: v}\n# "


@pytest.mark.parametrize("field, value, message", [
    ("image", "nvcr.io/nvidia/tritonserver:24.10-py3\n" + INJECTED_SECRET, "is not a container image reference"),
    ("image", "nvcr.io/x:1 y", "is not a container image reference"),
    ("memory", "16Gi\n", "not a Kubernetes quantity"),
    ("name", "cnn\n", "not a valid Kubernetes name"),
    ("pvc", "triton-models\n", "not a valid claim name"),
    ("secret", "s3\n", "not a valid Secret name"),
    ("replicas", 10 ** 303, r"--replicas must be an integer in \[1, 10000\]"),
    ("replicas", "3", r"--replicas must be an integer"),
    ("gpus", 10 ** 6, r"--gpus-per-replica must be an integer in \[0, 64\]"),
])
def test_values_with_line_breaks_or_absurd_sizes_are_refused(field, value, message):
    with pytest.raises(UserError, match=message):
        k8s.DeploySpec(**{"image": IMAGE[0], "image_reason": IMAGE[1], **EXAMPLES["s3-deployment"], field: value})


def test_every_template_value_is_escaped_so_no_object_can_be_added():
    """Values the spec does not restrict (the reason, the repository, labels) are written as YAML
    strings: line breaks in them add no object."""
    spec = dataclasses.replace(_spec("s3-deployment"), image_reason="reason\n" + INJECTED_SECRET,
                               repository="s3://minio.models.svc:9000/models/team/cnn\n" + INJECTED_SECRET,
                               labels={"team\nkind: Secret": "a\n" + INJECTED_SECRET})
    files = k8s.render(spec)
    kinds = [d["kind"] for text in files.values() for d in yaml.safe_load_all(text) if d and "kind" in d]
    assert "Secret" not in kinds and kinds.count("Deployment") == 1
    assert "stolen" not in yaml.safe_dump([d for t in files.values() for d in yaml.safe_load_all(t) if d and
                                           "kind" in d and d["kind"] == "Secret"])


@pytest.mark.parametrize("args, message", [
    (["--pvc", "triton-models\n"], "--pvc 'triton-models\\\\n' is not a valid claim name"),
    (["--pvc", "triton-models", "--name", "cnn\n"], "'cnn\\\\n' is not a valid Kubernetes name"),
    (["--pvc", "triton-models", "--image", "nvcr.io/x:1\nkind: Secret"], "is not a container image reference"),
    (["--pvc", "triton-models", "--replicas", "9" * 303], r"--replicas must be an integer in \[1, 10000\]"),
])
def test_deploy_cli_values_with_line_breaks_are_one_line_errors(tmp_path, args, message):
    out = tmp_path / "k8s"
    result = CliRunner().invoke(main, ["deploy", "k8s", str(ROOT / "model_repository"), "--out", str(out)] + args)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert __import__("re").search(message, result.output) and "YAML" not in result.output, result.output
    assert not out.exists()
