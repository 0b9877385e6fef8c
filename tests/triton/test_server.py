"""TritonServer: process groups and exit descriptions, launch refusals, and live runs of the embedded
tritonserver 2.51 (load, infer, perf_analyzer, shutdown and crash cleanup, start-up failures)."""

from __future__ import annotations

import json
import os
import signal
import socket
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from aitune_triton.errors import UserError
from aitune_triton.triton import launch
from aitune_triton import procs
from aitune_triton.triton import server as srv
from aitune_triton.triton import tools
from aitune_triton.triton.perf import PerfOptions, parse_csv, run_perf, write_input_data_json
from aitune_triton.errors import ServerError
from aitune_triton.triton.server_api import http_get


# ---------------------------------------------------------------- live: the real server

ADD_MODEL = textwrap.dedent(
    '''
    import torch
    import torch.utils.dlpack
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                t = pb_utils.get_input_tensor_by_name(request, "IN")
                x = torch.utils.dlpack.from_dlpack(t.to_dlpack())
                y = (x + 1.0).contiguous()
                out = pb_utils.Tensor.from_dlpack("OUT", torch.utils.dlpack.to_dlpack(y))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            return responses
    '''
)


def add_config(name: str, max_batch_size: int = 8) -> dict:
    return {
        "name": name,
        "backend": "python",
        "max_batch_size": max_batch_size,
        "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [4]}],
        "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [4]}],
        "dynamic_batching": {"max_queue_delay_microseconds": 100},
        "instance_group": [{"kind": "KIND_CPU", "count": 1}],
    }


def write_add_model(repo: Path, name: str) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.py").write_text(ADD_MODEL)
    (repo / name / "config.pbtxt").write_text(textwrap.dedent(
        f'''
        name: "{name}"
        backend: "python"
        max_batch_size: 8
        input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ 4 ] }} ]
        output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] }} ]
        dynamic_batching {{ max_queue_delay_microseconds: 100 }}
        instance_group [ {{ kind: KIND_CPU count: 1 }} ]
        '''
    ))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    write_add_model(root, "add")
    write_add_model(root, "add_cfg")
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.py").write_text(ADD_MODEL)
    (root / "broken" / "config.pbtxt").write_text('name: "broken"\nbackend: "python"\nmax_batch_size: "eight"\n')
    return root


@pytest.fixture(scope="module")
def server(triton_server_factory, repo):
    """Explicit mode, nothing loaded at start (ready at once), then "add" loaded over HTTP."""
    s = triton_server_factory(repo)
    assert http_get(s.http_url, "/v2/health/ready")[0] == 200
    s.load_model("add")
    yield s
    s.stop()  # frees the stubs (~250 MB each) before other modules start theirs


@pytest.mark.live
def test_load_and_infer_http(server):
    import tritonclient.http as httpclient

    assert server.model_ready("add") and server.version() == launch.server_version()
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        inp = httpclient.InferInput("IN", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        result = client.infer("add", [inp], outputs=[httpclient.InferRequestedOutput("OUT", binary_data=True)])
    finally:
        client.close()
    np.testing.assert_array_equal(result.as_numpy("OUT"), x + 1)


@pytest.mark.live
def test_infer_grpc(server):
    import tritonclient.grpc as grpcclient

    x = np.linspace(-1, 1, 4, dtype=np.float32).reshape(1, 4)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        inp = grpcclient.InferInput("IN", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("add", [inp])
    finally:
        client.close()
    np.testing.assert_array_equal(result.as_numpy("OUT"), x + 1)


@pytest.mark.live
def test_perf_analyzer_concurrency_1(server, tmp_path):
    if tools.find_perf_analyzer() is None:
        pytest.skip("perf_analyzer not installed")
    data = write_input_data_json([{"IN": np.ones((1, 4), np.float32)}, {"IN": np.zeros((1, 4), np.float32)}],
                                 tmp_path / "input.json")
    opts = PerfOptions(concurrency=(1,), measurement_request_count=100, stability_percentage=50, input_data=data)
    result = run_perf("add", server.grpc_url, opts, workdir=tmp_path)
    if not result.rows:
        # a busy 2-core box can keep perf_analyzer from stabilising; one retry with larger windows
        opts = PerfOptions(concurrency=(1,), measurement_request_count=300, stability_percentage=80, input_data=data)
        result = run_perf("add", server.grpc_url, opts, workdir=tmp_path)
    assert result.unstable == () and len(result.rows) == 1, result.stdout_tail
    row = result.rows[0]
    assert row.concurrency == 1 and row.throughput > 0
    assert 0 < row.p50_ms <= row.p99_ms
    assert parse_csv(result.csv_paths[0]) == [row]


@pytest.mark.live
def test_load_with_config_override_then_unload(server):
    server.load_model("add_cfg", config_json=json.dumps(add_config("add_cfg", max_batch_size=4)))
    status, body = http_get(server.http_url, "/v2/models/add_cfg/config")
    assert status == 200 and json.loads(body)["max_batch_size"] == 4
    server.unload_model("add_cfg")
    deadline = time.monotonic() + 30
    while server.model_ready("add_cfg") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not server.model_ready("add_cfg")


@pytest.mark.live
def test_load_errors_quote_triton(server):
    with pytest.raises(ServerError, match="failed to load 'nosuch'"):
        server.load_model("nosuch")


@pytest.mark.live
def test_shutdown_leaves_no_process(triton_server_factory, repo):
    s = triton_server_factory(repo, load_models=("add",))
    pid = s.pid
    stubs = s.children()
    assert "triton_python_b" in stubs.values()  # comm is cut to 15 characters
    assert list(Path("/dev/shm").glob(s.shm_prefix + "*"))
    assert s.stop() == 0
    assert procs.proc_stat(pid) is None
    assert all(procs.proc_stat(p) is None for p in stubs)
    assert not procs.group_members(pid)
    assert not list(Path("/dev/shm").glob(s.shm_prefix + "*"))
    assert s.stop() == 0  # idempotent


@pytest.mark.live
def test_crash_cleanup_removes_own_leftovers(triton_server_factory, repo):
    s = triton_server_factory(repo, load_models=("add",))
    stubs = s.children()
    os.kill(s.pid, signal.SIGKILL)  # no shutdown: stubs and shared memory are left behind
    assert list(Path("/dev/shm").glob(s.shm_prefix + "*"))
    assert s.stop() == -signal.SIGKILL
    assert all(procs.proc_stat(p) is None for p in stubs)
    assert not list(Path("/dev/shm").glob(s.shm_prefix + "*"))


@pytest.mark.live
@pytest.mark.parametrize("exit_on_error", [False, True])
def test_broken_config_raises_with_log(triton_server_factory, repo, exit_on_error):
    t0 = time.monotonic()
    with pytest.raises(ServerError, match="exited with code" if exit_on_error else "failed to load") as info:
        triton_server_factory(repo, load_models=("broken",), exit_on_error=exit_on_error, startup_timeout_s=60)
    assert time.monotonic() - t0 < 30
    error = info.value
    assert ("exited with code" in str(error)) == exit_on_error
    # Triton's own log lines are the details, with the log's path: the CLI prints both below the message
    assert error.log_path and "--- last lines of %s ---\n" % error.log_path in error.details
    message = "%s\n%s" % (error, error.details)
    assert "failed to read text proto" in message and "config.pbtxt" in message


@pytest.mark.live
@pytest.mark.parametrize("which", ["http_port", "metrics_port"])
def test_busy_fixed_port_raises(triton_server_factory, tmp_path, which):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # refused before launch: a server started anyway would have its probes answered by the port's owner
        with pytest.raises(UserError, match=r"%s port %d on 127.0.0.1 is not free \(Address already in use\)"
                           % (which.split("_")[0], port)):
            triton_server_factory(tmp_path, startup_timeout_s=30, **{which: port})


# ---------------------------------------------------------------- launch guards (issue 14)


@pytest.mark.parametrize("path", ["inj$(touch PWNED)/repo", "it's/repo", "back`tick`/repo", "a b/repo", "x;y/repo"])
def test_shell_syntax_in_the_repository_path_is_refused(tmp_path, path):
    with pytest.raises(UserError, match="contains shell metacharacters .* passes unquoted to a shell"):
        launch.check_shell_safe(tmp_path / path)
    with pytest.raises(UserError, match="shell metacharacters"):
        srv.TritonServer(tmp_path / path).start()  # before anything is launched
    assert not list(tmp_path.rglob("PWNED"))


def test_each_launch_has_its_own_id(tmp_path):
    assert srv.TritonServer(tmp_path).server_id != srv.TritonServer(tmp_path).server_id


def test_describe_exit():
    assert srv.describe_exit(-signal.SIGSEGV) == "crashed (SIGSEGV)"
    assert srv.describe_exit(1) == "exited with code 1"


@pytest.mark.parametrize("tail, expected", [
    ('I1206 21:42:33.848062 30535 http_server.cc:248] "Timeout 25: Found 7 HTTP service connections"',
     "7 open HTTP connection(s) to close (up to 25 s more)"),
    ('I1206 21:56:12.987301 9439 server.cc:321] "Timeout 10: Found 2 model versions that have in-flight inferences"',
     "2 model version(s) to finish their requests in flight (up to 10 s more)"),
    ('I1206 21:56:12.987301 9439 server.cc:321] "Timeout 10: Found 0 model versions that have in-flight inferences"',
     None),
    ('I1206 21:56:13.987542 9439 server.cc:345] "Timeout 9: Found 1 live models and 0 in-flight non-inference '
     'requests"', None),
])
def test_draining_reads_what_a_stopping_server_waits_for(tmp_path, tail, expected):
    log = tmp_path / "tritonserver.log"
    log.write_text('Signal (15) received.\n%s\n' % tail)
    assert srv.TritonServer(tmp_path, log_path=log).draining() == expected


@pytest.mark.live
def test_an_earlier_launchs_clash_in_the_log_does_not_fail_this_one(triton_server_factory, tmp_path):
    """The log is appended to: a retry after a port clash (or a reused log path) found the first
    attempt's "already in use" line and failed with "tritonserver failed after start-up"."""
    log = tmp_path / "tritonserver.log"
    log.write_text('E0101 00:00:00.000000 1 main.cc:245] "failed to start Metrics service: Unavailable - Socket '
                   '\'127.0.0.1:8002\' already in use"\n')
    (tmp_path / "repo").mkdir()
    with srv.TritonServer(tmp_path / "repo", launch.ServerOptions(startup_timeout_s=60), log_path=log) as s:
        assert http_get(s.metrics_url, "/metrics")[0] == 200
        assert s.error_lines() == [] and "already in use" not in s.log_tail(1000)
    assert "already in use" in log.read_text()  # appended to, not overwritten


def test_a_binary_that_cannot_run_is_a_one_line_server_error(tmp_path):
    """Popen failing (a tritonserver without the execute bit) reached the user as "internal error:
    PermissionError", with the log file left open."""
    binary = tmp_path / "bin" / "tritonserver"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o644)
    (tmp_path / "repo").mkdir()
    server = srv.TritonServer(tmp_path / "repo", launch.ServerOptions(tritonserver=binary),
                              log_path=tmp_path / "tritonserver.log")
    with pytest.raises(ServerError, match=r"^cannot run .*/bin/tritonserver \(Permission denied\); it must be an "
                                          r"executable tritonserver: fix its permissions or name another with "
                                          r"--tritonserver$"):
        server.start()
    assert server._log_file is None and server.pid is None


@pytest.mark.live
def test_a_ctrl_c_while_the_server_starts_leaves_no_process(triton_server_factory, tmp_path, monkeypatch):
    """A signal between Popen returning and the watchdog being armed unwound before the cleanup's
    ``try``: the server's group ran on. Here SIGINT lands just as Popen returns."""
    import subprocess

    real_popen, started = subprocess.Popen, []

    def popen_then_ctrl_c(*args, **kwargs):
        proc = real_popen(*args, **kwargs)
        if not started and any(str(a).startswith("--model-repository=") for a in args[0]):  # the server
            started.append(proc)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)  # the handler runs here, before Popen would have returned
        return proc

    monkeypatch.setattr(subprocess, "Popen", popen_then_ctrl_c)
    (tmp_path / "repo").mkdir()
    server = srv.TritonServer(tmp_path / "repo", launch.ServerOptions(startup_timeout_s=60),
                              log_path=tmp_path / "tritonserver.log")
    try:
        with pytest.raises(KeyboardInterrupt):
            server.start()
        assert started and started[0].returncode is not None  # stopped and reaped
        assert not procs.group_members(started[0].pid)
    finally:
        if started and started[0].poll() is None:
            procs.reap_group(started[0].pid)
            started[0].wait()


@pytest.mark.live
def test_a_server_killed_during_start_up_is_described_by_its_signal(triton_server_factory, tmp_path, monkeypatch):
    """The start-up failure said "exited with code -9" for a server ended by SIGKILL."""
    import subprocess

    real_popen = subprocess.Popen

    def popen_then_kill(*args, **kwargs):
        proc = real_popen(*args, **kwargs)
        if any(str(a).startswith("--model-repository=") for a in args[0]):  # the server
            os.kill(proc.pid, signal.SIGKILL)
        return proc

    monkeypatch.setattr(subprocess, "Popen", popen_then_kill)
    (tmp_path / "repo").mkdir()
    server = srv.TritonServer(tmp_path / "repo", launch.ServerOptions(startup_timeout_s=60),
                              log_path=tmp_path / "tritonserver.log")
    with pytest.raises(ServerError, match=r"^tritonserver crashed \(SIGKILL\) during start-up$"):
        server.start()
    assert server.returncode == -signal.SIGKILL
