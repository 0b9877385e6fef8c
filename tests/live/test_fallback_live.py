"""The generated Python-backend fallback served by the real embedded Triton 2.51.

Four models in one server: cnn, encoder (int64 ids + mask, dynamic sequence, dict outputs) and a
bfloat16 MLP as ExportedPrograms, multi_io (int32 / bool inputs, int64 / bool outputs, batch-only
tensors) as an AOTInductor package. Outputs over HTTP and gRPC are compared with eager PyTorch.
"""

from __future__ import annotations

import json
import queue
import shutil
import textwrap
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch

from aitune_triton.numerics import tolerance_for
from aitune_triton.errors import ServerError
from aitune_triton.export.fallback_artifact import FallbackArtifact
from aitune_triton.export.torch_export import build_fallback, compare
from aitune_triton.source import ModelSource, load_model_source
from aitune_triton.spec import IOSpec, TensorSpec, call_with_feed, flatten_outputs, record_spec
from aitune_triton.profile_set import ProfileMode
from aitune_triton.tensorrt.profiles import derive_profiles
from aitune_triton.triton.python_model import write_python_model

pytestmark = pytest.mark.live

ROOT = Path(__file__).resolve().parents[2]
TRITON_TYPES = {"float32": "FP32", "float16": "FP16", "bfloat16": "BF16", "int64": "INT64", "int32": "INT32",
                "int8": "INT8", "uint8": "UINT8", "bool": "BOOL"}
BF16_MODEL = '''
import torch


def get_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    return model.to(torch.bfloat16).eval()


def get_samples():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, 8, generator=g).to(torch.bfloat16) for b in (1, 2, 4)]
'''
# name -> (model.py, fallback format)
MODELS = {
    "cnn": (ROOT / "examples" / "cnn" / "model.py", "export"),
    "encoder": (ROOT / "examples" / "encoder" / "model.py", "export"),
    "multi_io": (ROOT / "examples" / "multi_io" / "model.py", "aoti"),
    "bf16": (None, "export"),
}


@dataclass(frozen=True)
class Served:
    source: ModelSource
    spec: IOSpec
    max_batch: int
    artifact: FallbackArtifact


def tensor_config(t: TensorSpec, ragged: bool) -> str:
    dims = list(t.triton_dims())
    reshape = "" if dims else " reshape: { shape: [ ] }"
    return '{ name: "%s" data_type: TYPE_%s dims: [ %s ]%s%s }' % (
        t.name, TRITON_TYPES[t.dtype], ", ".join(map(str, dims or [1])), reshape,
        " allow_ragged_batch: true" if ragged else "")


def minimal_config(name: str, spec: IOSpec, max_batch: int, ragged: bool = False) -> str:
    """Just enough config.pbtxt for these tests (the real one comes from aitune_triton.triton.render)."""
    return textwrap.dedent("""\
        name: "%s"
        backend: "python"
        max_batch_size: %d
        input [ %s ]
        output [ %s ]
        dynamic_batching { max_queue_delay_microseconds: 20000 }
        instance_group [ { count: 1 kind: KIND_CPU } ]
        parameters { key: "TORCH_NUM_THREADS" value { string_value: "1" } }
        """) % (name, max_batch, ", ".join(tensor_config(t, ragged) for t in spec.inputs),
                ", ".join(tensor_config(t, False) for t in spec.outputs))


def build_model(repo: Path, name: str, path: Path, fmt: str) -> Served:
    src = load_model_source(path)
    spec = record_spec(src.model, src.samples, src.outputs)
    profiles = derive_profiles(spec, src.samples, ProfileMode.SINGLE)
    version = repo / name / "1"
    art = build_fallback(src.path, src.model, spec, src.samples, src.outputs, profiles, version, preferred=fmt,
                         timeout_s=300)
    assert art.format == fmt, art.skipped
    write_python_model(version, spec, art, profiles.max_batch_size)
    (repo / name / "config.pbtxt").write_text(minimal_config(name, spec, profiles.max_batch_size,
                                                             ragged=name == "encoder"))
    return Served(src, spec, profiles.max_batch_size, art)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def live(tmp_path_factory, triton_server_factory, monkeypatch_module):
    """(server, models). The AOTInductor compile overlaps the server's start-up with the other
    models (stubs importing torch): on 2 cores that keeps the module well under two minutes."""
    monkeypatch_module.setenv("TORCHINDUCTOR_CACHE_DIR", str(ROOT / ".cache" / "inductor"))
    repo = tmp_path_factory.mktemp("fallback-repo")
    bf16_src = tmp_path_factory.mktemp("bf16-src") / "model.py"
    bf16_src.write_text(BF16_MODEL)
    models = {}
    for name, (path, fmt) in MODELS.items():
        if fmt != "aoti":
            models[name] = build_model(repo, name, path or bf16_src, fmt)
    # the server starts in this thread: its parent-death signal fires when the thread that started it
    # exits, so the compile (whose children finish before their thread does) is the one in the pool
    with ThreadPoolExecutor(1) as pool:
        compiling = pool.submit(lambda: {name: build_model(repo, name, path, fmt)
                                         for name, (path, fmt) in MODELS.items() if fmt == "aoti"})
        server = triton_server_factory(repo, load_models=tuple(models), startup_timeout_s=240)
        late = compiling.result()
    for name, served in late.items():
        server.load_model(name)
        models[name] = served
    yield server, models
    server.stop()


@pytest.fixture(scope="module")
def server(live):
    return live[0]


@pytest.fixture(scope="module")
def models(live):
    return live[1]


# ----------------------------------------------------------------------------- requests


def make_feed(name: str, batch: int, seed: int, seq: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if name == "cnn":
        return {"image": torch.randn(batch, 3, 32, 32, generator=g)}
    if name == "encoder":
        mask = torch.ones(batch, seq, dtype=torch.int64)
        mask[batch // 2:, seq - 3:] = 0
        return {"input_ids": torch.randint(0, 1000, (batch, seq), generator=g), "attention_mask": mask}
    if name == "multi_io":
        return {"features": torch.randn(batch, 4, generator=g),
                "category": torch.randint(0, 16, (batch,), generator=g, dtype=torch.int32),
                "valid": torch.rand(batch, generator=g) > 0.3}
    return {"input": torch.randn(batch, 8, generator=g).to(torch.bfloat16)}


def eager(served: Served, feed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        return dict(flatten_outputs(call_with_feed(served.source.model, served.spec, feed)))


def wire(t: TensorSpec, value: torch.Tensor) -> np.ndarray:
    """The client-side array: bfloat16 as ``ml_dtypes.bfloat16`` (tritonclient >= 2.67 wants that),
    rank-1 batched tensors as [B, 1] (config dims [1] reshaped to [])."""
    if value.dtype == torch.bfloat16:
        arr = value.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    else:
        arr = value.numpy()
    return arr.reshape(-1, 1) if arr.ndim == 1 else arr


def from_wire(arr: np.ndarray) -> torch.Tensor:
    if arr.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(np.array(arr).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.array(arr))


def inputs_for(client_mod, served: Served, feed):
    inputs = []
    for t in served.spec.inputs:
        arr = wire(t, feed[t.name])
        inp = client_mod.InferInput(t.name, list(arr.shape), TRITON_TYPES[t.dtype])
        if client_mod.__name__.endswith("http"):
            inp.set_data_from_numpy(arr, binary_data=True)
        else:
            inp.set_data_from_numpy(arr)
        inputs.append(inp)
    return inputs


def outputs_for(client_mod, served: Served):
    if client_mod.__name__.endswith("http"):
        return [client_mod.InferRequestedOutput(t.name, binary_data=True) for t in served.spec.outputs]
    return [client_mod.InferRequestedOutput(t.name) for t in served.spec.outputs]


def check_result(served: Served, result, expected: dict[str, torch.Tensor]) -> None:
    for t in served.spec.outputs:
        got = from_wire(result.as_numpy(t.name)).reshape(expected[t.name].shape)
        want = expected[t.name]
        why = compare(got.to(want.dtype), want, tolerance_for(t.dtype))
        assert why is None, "%s: %s" % (t.name, why)


@pytest.fixture(scope="module")
def clients(server):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    http = httpclient.InferenceServerClient(server.http_url)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    yield httpclient, http, grpcclient, grpc
    grpc.close()
    http.close()


def stats(server, name: str) -> dict:
    with urllib.request.urlopen("http://%s/v2/models/%s/stats" % (server.http_url, name), timeout=10) as r:
        return json.loads(r.read())["model_stats"][0]


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", list(MODELS))
def test_outputs_match_eager_over_http_and_grpc(name, models, clients):
    httpclient, http, grpcclient, grpc = clients
    served = models[name]
    top = served.max_batch
    for batch in sorted({1, max(1, top // 2), top}):
        feed = make_feed(name, batch, seed=batch)
        expected = eager(served, feed)
        for mod, client in ((httpclient, http), (grpcclient, grpc)):
            result = client.infer(name, inputs_for(mod, served, feed), outputs=outputs_for(mod, served))
            check_result(served, result, expected)


def _fire(grpcclient, grpc, served: Served, name: str, feeds: list) -> list:
    """Send every feed at once as gRPC async requests; (result, error) per feed, in order."""
    done: queue.Queue = queue.Queue()
    for i, feed in enumerate(feeds):
        grpc.async_infer(name, inputs_for(grpcclient, served, feed),
                         callback=lambda result, error, i=i: done.put((i, result, error)),
                         outputs=outputs_for(grpcclient, served))
    answers = {}
    for _ in feeds:
        i, result, error = done.get(timeout=60)
        answers[i] = (result, error)
    return [answers[i] for i in range(len(feeds))]


def test_concurrent_requests_are_batched_and_answered_in_order(models, clients, server):
    _, _, grpcclient, grpc = clients
    served = models["cnn"]
    before = stats(server, "cnn")
    feeds = [make_feed("cnn", 1, seed=100 + i) for i in range(16)]
    for feed, (result, error) in zip(feeds, _fire(grpcclient, grpc, served, "cnn", feeds), strict=True):
        assert error is None, error
        check_result(served, result, eager(served, feed))
    after = stats(server, "cnn")
    inferences = int(after["inference_count"]) - int(before.get("inference_count", 0))
    executions = int(after["execution_count"]) - int(before.get("execution_count", 0))
    assert inferences == 16
    assert executions < inferences, after["batch_stats"]


def test_mixed_sequence_lengths_and_a_failing_request(models, clients):
    """Ragged batching hands requests of several sequence lengths to one execute(); the model
    groups them by shape, and one request whose forward fails (token id beyond the vocabulary)
    gets its own error while the others are answered."""
    _, _, grpcclient, grpc = clients
    served = models["encoder"]
    feeds = [make_feed("encoder", 1 + i % 2, seed=200 + i, seq=(8, 12, 16)[i % 3]) for i in range(12)]
    feeds[5] = dict(feeds[5], input_ids=feeds[5]["input_ids"] + 5000)
    answers = _fire(grpcclient, grpc, served, "encoder", feeds)
    for i, (feed, (result, error)) in enumerate(zip(feeds, answers, strict=True)):
        if i == 5:
            assert error is not None and "forward failed" in str(error)
            continue
        assert error is None, error
        check_result(served, result, eager(served, feed))


def test_bad_requests_get_errors_and_the_next_one_succeeds(models, clients):
    from tritonclient.utils import InferenceServerException

    httpclient, http, _, _ = clients
    cnn, encoder = models["cnn"], models["encoder"]
    inp = httpclient.InferInput("image", [1, 3, 32, 32], "FP64")
    inp.set_data_from_numpy(np.zeros((1, 3, 32, 32), np.float64), binary_data=True)
    with pytest.raises(InferenceServerException, match="FP64"):
        http.infer("cnn", [inp])
    inp = httpclient.InferInput("image", [1, 3, 31, 32], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 3, 31, 32), np.float32), binary_data=True)
    with pytest.raises(InferenceServerException, match="shape"):
        http.infer("cnn", [inp])
    # dynamic axes are -1 in the config, so the model.py itself refuses a sequence beyond its range
    with pytest.raises(InferenceServerException, match="axis 1 is 20, the model takes 8..16"):
        http.infer("encoder", inputs_for(httpclient, encoder, make_feed("encoder", 1, seed=7, seq=20)))
    for name, served in (("cnn", cnn), ("encoder", encoder)):
        feed = make_feed(name, 2, seed=8)
        result = http.infer(name, inputs_for(httpclient, served, feed), outputs=outputs_for(httpclient, served))
        check_result(served, result, eager(served, feed))


def _copy_model(server, src: str, dst: str) -> Path:
    repo = Path(server.repo)
    shutil.copytree(repo / src, repo / dst, ignore=shutil.ignore_patterns("__pycache__"))
    config = repo / dst / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "%s"' % src, 'name: "%s"' % dst))
    return repo / dst / "1"


def test_a_tampered_artifact_or_a_wrong_torch_is_refused_before_loading(server):
    """The runtime checks the artifact's SHA-256 and the stub's torch before deserialising anything,
    and fails the load with one line naming the problem and the fix."""
    version = _copy_model(server, "cnn", "cnn_tampered")
    artifact = version / "model.export.pt2"
    artifact.write_bytes(artifact.read_bytes()[:-16])
    with pytest.raises(ServerError, match=r"artifact model.export.pt2 in \S+ does not match its recorded SHA-256 "
                                          r"\(expected [0-9a-f]{12}\.\.\., found [0-9a-f]{12}\.\.\.\)"):
        server.load_model("cnn_tampered", timeout_s=240)
    version = _copy_model(server, "multi_io", "multi_io_other_torch")
    data = json.loads((version / "aitune_model.json").read_text())
    data["requirements"].update(torch="9.9.0", torch_min="9.9.0")
    (version / "aitune_model.json").write_text(json.dumps(data))
    with pytest.raises(ServerError, match=r"model multi_io_other_torch needs torch 9\.9\.0 \(its AOTInductor package "
                                          r"loads only with the torch that compiled it\) but the stub has torch "
                                          r"\S+: serve it from a Triton `-pyt-python-py3` image .* pack-env"):
        server.load_model("multi_io_other_torch", timeout_s=240)


def test_stubs_leave_no_bytecode_in_the_repository(server, models):
    """The repository may be a committed directory: the server's stubs run with PYTHONDONTWRITEBYTECODE."""
    assert not sorted(Path(server.repo).rglob("__pycache__"))
