"""Raw data in, answers out, as a user runs it: ``generate`` the text and image pipeline examples (hooks ->
``<name>_pre``/``_post`` + the ensemble), ``validate`` it on the embedded Triton (raw requests over
HTTP and gRPC against the recorded answers), and a plain tritonclient call with raw text whose
answer is the in-process hooks + eager model's; bad raw rows fail their own request only."""
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.live
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "text_pipeline" / "model.py"
IMAGE_EXAMPLE = ROOT / "examples" / "image_pipeline" / "model.py"
CLI = [sys.executable, "-m", "aitune_triton.cli"]
PIPELINE = "text_pipeline_pipeline"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "model_repository"
    for example, recorded in ((EXAMPLE, 5), (IMAGE_EXAMPLE, 4)):
        proc = subprocess.run(CLI + ["generate", str(example), "--out", str(out), "--backend", "python",
                                     "--fallback-format", "export"], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        name = example.parent.name
        assert "%s_pipeline (ensemble, ready): raw data -> pre -> %s -> post (%d raw samples recorded)" % (
            name, name, recorded) in proc.stderr
    return out


def _example(path=EXAMPLE):
    spec = importlib.util.spec_from_file_location("%s_example" % path.parent.name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _eager_answer(module, text: str) -> tuple[bytes, float]:
    feed = {k: torch.from_numpy(v)[None] for k, v in module.get_preprocess()(text.encode()).items()}
    with torch.inference_mode():
        logits = module.get_model()(**feed)[0].numpy()
    answer = module.get_postprocess()({"output_0": logits})
    return answer["label"].encode(), float(answer["score"])


def test_validate_checks_the_pipeline_with_raw_requests(repo, tmp_path):
    proc = subprocess.run(CLI + ["validate", str(repo), "--no-perf", "--model", PIPELINE, "--model",
                                 "image_pipeline_pipeline", "--report", str(tmp_path / "report")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [m["name"] for m in report["models"]] == [PIPELINE, "image_pipeline_pipeline"]
    raw = {"load": "pass", "ready": "pass", "raw_answers_http": "pass", "raw_answers_grpc": "pass",
           "raw_bad_input": "pass"}
    text, image = ({c["name"]: c for c in model["checks"]} for model in report["models"])
    assert {n: c["status"] for n, c in text.items()} == raw
    # the final check sends a model's tensors: with only pipelines in the run it is reported as skipped
    assert {n: c["status"] for n, c in image.items()} == {**raw, "oversized_shape": "skip"}
    assert image["oversized_shape"]["detail"].endswith("add --model image_pipeline to have it checked")
    detail = image["raw_bad_input"]["detail"]
    assert "undecodable bytes refused" in detail and "UnidentifiedImageError" in detail


def test_validate_runs_the_final_check_on_the_model_when_its_pipeline_comes_last(repo, tmp_path):
    proc = subprocess.run(CLI + ["validate", str(repo), "--no-perf", "--model", "text_pipeline", "--model", PIPELINE,
                                 "--report", str(tmp_path / "report")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [m["name"] for m in report["models"]] == ["text_pipeline", PIPELINE]  # as asked, though run model last
    model, pipe = ({c["name"]: c["status"] for c in m["checks"]} for m in report["models"])
    assert model["oversized_shape"] in ("pass", "warn") and "oversized_shape" not in pipe
    assert proc.stderr.index("%s: loading" % PIPELINE) < proc.stderr.index("text_pipeline: loading")


def test_raw_text_in_label_out_and_bad_rows_fail_alone(repo, triton_server_factory):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    server = triton_server_factory(repo, load_models=(PIPELINE,))
    client = httpclient.InferenceServerClient(server.http_url)
    texts = ["a wonderful story and great music", "cold food, slow service"]

    def ask(rows):
        raw = httpclient.InferInput("raw", [len(rows), 1], "BYTES")
        raw.set_data_from_numpy(np.array([[r] for r in rows], dtype=object))
        result = client.infer(PIPELINE, [raw])
        return result.as_numpy("label")[:, 0].tolist(), result.as_numpy("score")[:, 0].tolist()

    module = _example()
    labels, scores = ask([t.encode() for t in texts])
    expected = [_eager_answer(module, t) for t in texts]
    assert labels == [e[0] for e in expected]
    np.testing.assert_allclose(scores, [e[1] for e in expected], rtol=1e-4)
    with pytest.raises(InferenceServerException, match="row 0 is empty; send non-empty raw data"):
        ask([b""])
    with pytest.raises(InferenceServerException, match="pre hook failed on row 1: UnicodeDecodeError"):
        ask([texts[0].encode(), b"\xff\xfe"])
    assert ask([texts[1].encode()])[0] == [expected[1][0]]  # the server keeps serving
    # the composing models were loaded with the ensemble; the model stays callable on its own
    assert {m["name"] for m in client.get_model_repository_index() if m.get("state") == "READY"} == \
        {PIPELINE, "text_pipeline", "text_pipeline_pre", "text_pipeline_post"}


def test_png_bytes_in_top3_labels_out(repo, triton_server_factory):
    import tritonclient.grpc as grpcclient

    server = triton_server_factory(repo, load_models=("image_pipeline_pipeline",))
    client = grpcclient.InferenceServerClient(server.grpc_url)
    module = _example(IMAGE_EXAMPLE)
    png = module.get_raw_samples()[1]
    raw = grpcclient.InferInput("raw", [1, 1], "BYTES")
    raw.set_data_from_numpy(np.array([[png]], dtype=object))
    result = client.infer("image_pipeline_pipeline", [raw])
    feed = {k: torch.from_numpy(v)[None] for k, v in module.get_preprocess()(png).items()}
    with torch.inference_mode():
        expected = module.get_postprocess()({"output_0": module.get_model()(**feed)[0].numpy()})
    assert [v.decode() for v in result.as_numpy("labels")[0]] == expected["labels"]
    np.testing.assert_allclose(result.as_numpy("scores")[0], expected["scores"], rtol=1e-4)


def test_perf_of_the_pipeline_reports_time_in_pre_model_post(repo, tmp_path):
    proc = subprocess.run(CLI + ["validate", str(repo), "--model", PIPELINE, "--concurrency", "2",
                                 "--perf-stability", "100",
                                 "--perf-request-count", "100", "--report", str(tmp_path / "report")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [model] = json.loads((tmp_path / "report" / "report.json").read_text())["models"]
    checks = {c["name"]: c for c in model["checks"]}
    assert checks["perf"]["status"] == "pass"
    steps = checks["step_times"]
    assert steps["status"] == "pass"
    assert re.fullmatch(r"per request \(queue \+ compute\): pre [0-9.]+ ms / model [0-9.]+ ms / post [0-9.]+ ms; "
                        r"\d+ requests", steps["detail"]), steps["detail"]


@pytest.fixture(scope="module")
def numpy2_python(tmp_path_factory):
    """A venv whose Python (and so the stub of a server it launches) imports numpy 2, with this
    environment's other packages behind it. Needs no network: numpy 2 comes from $AITUNE_NUMPY2_SITE
    (``pip install --target DIR "numpy>=2,<2.3"``); without it the test skips."""
    import os
    import sysconfig

    site = os.environ.get("AITUNE_NUMPY2_SITE")
    if not site or not Path(site).is_dir():
        pytest.skip('no numpy 2 to test with: set AITUNE_NUMPY2_SITE to a folder holding numpy>=2 for this Python '
                    '(pip install --target DIR "numpy>=2,<2.3")')
    venv = tmp_path_factory.mktemp("numpy2") / "np2"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    here = dict.fromkeys((sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]))
    (Path(purelib) / "aitune_numpy2.pth").write_text("\n".join([site, *here]) + "\n")
    version = subprocess.run([str(python), "-c", "import numpy; print(numpy.__version__)"], capture_output=True,
                             text=True, timeout=120).stdout.strip()
    if not version.split(".")[0].isdigit() or int(version.split(".")[0]) < 2:
        pytest.skip("%s does not give this Python numpy 2 (got %r)" % (site, version))
    return python


def test_validate_refuses_a_bytes_pipeline_under_numpy2_in_one_line(numpy2_python, repo, tmp_path):
    """The 2.51 stub corrupts BYTES tensors under numpy 2 (it died at the first request, every request
    then "Stub process ... is not healthy"): the server is refused before it starts, with the fixes."""
    import os

    proc = subprocess.run([str(numpy2_python), "-m", "aitune_triton.cli", "validate", str(repo), "--no-perf",
                           "--model", "image_pipeline_pipeline", "--report", str(tmp_path / "report")],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    assert errors[0].startswith("error: refusing to start tritonserver: Python-backend model image_pipeline_pre "), out
    assert "BYTES input 'raw'" in errors[0] and "Triton 2.51.0" in errors[0] and "numpy 2." in errors[0]
    assert 'pip install "numpy<2"' in errors[0] and "--tritonserver" in errors[0]
    assert "Traceback" not in out and not (tmp_path / "report" / "tritonserver.log").exists()
