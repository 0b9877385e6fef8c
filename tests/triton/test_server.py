"""Server launcher: pure command/env building, and live runs of the embedded tritonserver 2.51."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import json
import os
import signal
import socket
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from aitune_triton.errors import UserError
from aitune_triton.triton import server as srv
from aitune_triton.triton import tools
from aitune_triton.triton.perf import PerfOptions, parse_csv, run_perf, write_input_data_json
from aitune_triton.triton.server import (
    Ports,
    RemoteServer,
    ServerError,
    ServerOptions,
    build_command,
    build_environment,
    free_port,
    free_ports,
    resolve_ports,
)
from aitune_triton.triton.server_api import Server, http_get

PORTS = Ports(http=18000, grpc=18001, metrics=18002)
FAKE = Path("/opt/triton/bin/tritonserver")


def flag_values(cmd: list[str], flag: str) -> list[str]:
    return [a.split("=", 1)[1] for a in cmd if a.startswith(flag + "=")]


# ---------------------------------------------------------------- command and environment


def test_build_command_defaults(tmp_path):
    cmd = build_command(tmp_path, ServerOptions(tritonserver=FAKE), PORTS, flags=frozenset())
    assert cmd[0] == str(FAKE)
    assert flag_values(cmd, "--model-repository") == [str(tmp_path.resolve())]
    assert flag_values(cmd, "--http-address") == ["127.0.0.1"]
    assert flag_values(cmd, "--grpc-address") == ["127.0.0.1"]
    assert flag_values(cmd, "--http-port") == ["18000"]
    assert flag_values(cmd, "--grpc-port") == ["18001"]
    assert flag_values(cmd, "--metrics-port") == ["18002"]
    assert flag_values(cmd, "--model-control-mode") == ["explicit"]
    assert flag_values(cmd, "--exit-on-error") == ["false"]
    assert flag_values(cmd, "--log-verbose") == ["0"]
    assert "--disable-auto-complete-config" in cmd
    assert not flag_values(cmd, "--load-model")
    # a custom binary keeps its own backends dir; flags it does not list are never passed
    assert not flag_values(cmd, "--backend-directory")
    assert not any(a.startswith("--allow-client-shm") for a in cmd)
    assert not flag_values(cmd, "--metrics-address")


def test_build_command_models_and_extras(tmp_path):
    opts = ServerOptions(
        tritonserver=FAKE, load_models=("a", "b"), log_verbose=1, exit_on_error=True,
        disable_auto_complete=False, extra_args=("--model-load-thread-count=1",),
    )
    cmd = build_command(tmp_path, opts, PORTS, flags=None, shm_prefix="pfx_")
    assert flag_values(cmd, "--load-model") == ["a", "b"]
    assert flag_values(cmd, "--log-verbose") == ["1"]
    assert flag_values(cmd, "--exit-on-error") == ["true"]
    assert "--disable-auto-complete-config" not in cmd
    assert flag_values(cmd, "--backend-config") == ["python,shm-region-prefix-name=pfx_"]
    assert flag_values(cmd, "--metrics-address") == ["127.0.0.1"]  # unknown flags: assume 2.4x+
    assert cmd[-1] == "--model-load-thread-count=1"


def test_allow_client_shm_only_when_the_binary_knows_it(tmp_path):
    opts = ServerOptions(tritonserver=FAKE)
    assert "--allow-client-shm=true" in build_command(tmp_path, opts, PORTS, flags=frozenset({"--allow-client-shm"}))
    assert "--allow-client-shm=true" not in build_command(tmp_path, opts, PORTS, flags=None)
    off = ServerOptions(tritonserver=FAKE, allow_client_shm=False)
    assert "--allow-client-shm=true" not in build_command(tmp_path, off, PORTS, flags=frozenset({"--allow-client-shm"}))


def test_user_shm_prefix_wins(tmp_path):
    opts = ServerOptions(tritonserver=FAKE, extra_args=("--backend-config=python,shm-region-prefix-name=mine_",))
    cmd = build_command(tmp_path, opts, PORTS, shm_prefix="ours_")
    assert flag_values(cmd, "--backend-config") == ["python,shm-region-prefix-name=mine_"]


def test_bundled_server_gets_the_venv_backends_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(tools, "bundled_tritonserver", lambda: Path("/bundled/tritonserver"))
    monkeypatch.setattr(tools, "backends_dir", lambda: tmp_path / "backends")
    cmd = build_command(tmp_path, ServerOptions(), PORTS)
    assert cmd[0] == "/bundled/tritonserver"
    assert flag_values(cmd, "--backend-directory") == [str(tmp_path / "backends")]


@pytest.mark.parametrize(
    "opts",
    [ServerOptions(model_control_mode="none", load_models=("a",)), ServerOptions(load_models=("*", "a"))],
)
def test_invalid_load_models(tmp_path, opts):
    with pytest.raises(ValueError):
        build_command(tmp_path, opts, PORTS, binary=FAKE)


def test_build_environment(monkeypatch):
    monkeypatch.setattr(tools, "libpython_dir", lambda: "/py/lib")
    venv_bin = str(Path(sys.prefix) / "bin")
    base = {"PATH": "/usr/bin:%s:/bin" % venv_bin, "LD_LIBRARY_PATH": "/other", "KEEP": "1"}
    env = build_environment(base)
    assert env["PATH"].split(os.pathsep) == [venv_bin, "/usr/bin", "/bin"]
    assert env["LD_LIBRARY_PATH"].split(os.pathsep) == ["/py/lib", "/other"]
    assert env["KEEP"] == "1"
    assert base["PATH"] == "/usr/bin:%s:/bin" % venv_bin  # not mutated
    monkeypatch.setattr(tools, "libpython_dir", lambda: None)
    assert "LD_LIBRARY_PATH" not in build_environment({"PATH": "/bin"})


def test_free_ports_are_distinct_and_bindable():
    ports = free_ports(3)
    assert len(set(ports)) == 3
    for port in ports + (free_port(),):
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_resolve_ports_keeps_fixed_ones():
    fixed = free_port()
    ports = resolve_ports(ServerOptions(grpc_port=fixed))
    assert ports.grpc == fixed
    assert len({ports.http, ports.grpc, ports.metrics}) == 3


def test_bundled_binary_flags_and_version():
    if importlib.util.find_spec("pytriton") is None:
        pytest.skip("nvidia-pytriton not installed")
    flags = srv.supported_flags(tools.bundled_tritonserver())
    assert {"--load-model", "--model-control-mode", "--backend-directory"} <= flags
    if srv.server_version() == "2.51.0":
        assert "--allow-client-shm" not in flags  # added in 2.68


def test_server_version_is_honest(monkeypatch, tmp_path):
    assert srv.server_version(Path("/bin/false")) is None  # not the bundled binary, no --version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "9.9.9")
    monkeypatch.setattr(tools, "bundled_tritonserver", lambda: Path("/bin/false"))
    assert srv.server_version() is None  # unknown wheel: no guess


def test_remote_server_interface():
    port = free_port()
    remote = RemoteServer("http://127.0.0.1:%d/" % port, grpc_url="127.0.0.1:%d" % (port + 1))
    assert remote.http_url == "127.0.0.1:%d" % port
    assert remote.grpc_url == "127.0.0.1:%d" % (port + 1)
    assert remote.log_tail() == "" and remote.log_path is None and remote.returncode is None
    assert not remote.owns_process and remote.describe() == "the Triton server at 127.0.0.1:%d" % port
    assert remote.stop() is None  # a no-op
    assert not remote.is_alive()
    with pytest.raises(ServerError, match="no Triton server"):
        remote.start()


def test_both_servers_satisfy_the_server_protocol(tmp_path):
    launched: Server = srv.TritonServer(tmp_path)  # mypy checks these assignments against the protocol
    remote: Server = RemoteServer("127.0.0.1:%d" % free_port())
    members = [name for name in vars(Server) if not name.startswith("_")]
    assert {"http_url", "owns_process", "returncode", "log_path", "load_model", "describe"} <= set(members)
    for server in (launched, remote):  # looked up without calling: an unstarted server has no address yet
        missing = [name for name in members if inspect.getattr_static(server, name, KeyError) is KeyError]
        assert not missing, (server, missing)
    assert isinstance(remote, Server) and not isinstance(object(), Server)
    assert launched.owns_process and not remote.owns_process
    # a launched server that has not started: no exit code yet, its address not known
    assert launched.returncode is None and launched.describe() == "tritonserver on %s" % tmp_path
    with pytest.raises(ServerError, match="has not been started"):
        print(launched.http_url)


def test_group_members_sees_this_process():
    members = srv.group_members(os.getpgid(0))
    assert os.getpid() in members


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
    assert s.is_ready()
    s.load_model("add")
    yield s
    s.stop()  # frees the stubs (~250 MB each) before other modules start theirs


@pytest.mark.live
def test_load_and_infer_http(server):
    import tritonclient.http as httpclient

    assert server.model_ready("add") and server.version() == srv.server_version()
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
    assert srv._proc_stat(pid) is None
    assert all(srv._proc_stat(p) is None for p in stubs)
    assert not srv.group_members(pid)
    assert not list(Path("/dev/shm").glob(s.shm_prefix + "*"))
    assert s.stop() == 0  # idempotent


@pytest.mark.live
def test_crash_cleanup_removes_own_leftovers(triton_server_factory, repo):
    s = triton_server_factory(repo, load_models=("add",))
    stubs = s.children()
    os.kill(s.pid, signal.SIGKILL)  # no shutdown: stubs and shared memory are left behind
    assert list(Path("/dev/shm").glob(s.shm_prefix + "*"))
    assert s.stop() == -signal.SIGKILL
    assert all(srv._proc_stat(p) is None for p in stubs)
    assert not list(Path("/dev/shm").glob(s.shm_prefix + "*"))


@pytest.mark.live
@pytest.mark.parametrize("exit_on_error", [False, True])
def test_broken_config_raises_with_log(triton_server_factory, repo, exit_on_error):
    t0 = time.monotonic()
    with pytest.raises(ServerError) as info:
        triton_server_factory(repo, load_models=("broken",), exit_on_error=exit_on_error, startup_timeout_s=60)
    assert time.monotonic() - t0 < 30
    message = str(info.value)
    assert "failed to read text proto" in message and "config.pbtxt" in message
    assert ("exited with code" in message) == exit_on_error


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
        srv.check_shell_safe(tmp_path / path)
    with pytest.raises(UserError, match="shell metacharacters"):
        srv.TritonServer(tmp_path / path).start()  # before anything is launched
    assert not list(tmp_path.rglob("PWNED"))


def test_plain_paths_and_names_pass(tmp_path):
    srv.check_shell_safe(tmp_path / "models-1.0" / "r_e+p@x", ("cnn", "cnn_trt", "a.b-c"))
    with pytest.raises(UserError, match="model name"):
        srv.check_shell_safe(tmp_path, ("ok", "bad$(x)"))


def test_command_carries_a_per_launch_id(tmp_path):
    ports = srv.Ports(1, 2, 3)
    cmd = srv.build_command(tmp_path, srv.ServerOptions(), ports, binary=Path("/bin/true"),
                            backend_directory=tmp_path, flags=frozenset({"--id"}), server_id="aitune-x")
    assert "--id=aitune-x" in cmd
    assert srv.TritonServer(tmp_path).server_id != srv.TritonServer(tmp_path).server_id


def test_ports_check_accepts_free_ports():
    srv.check_ports_free("127.0.0.1", dict(zip(("http", "grpc"), srv.free_ports(2), strict=True)))


def test_describe_exit():
    assert srv.describe_exit(-signal.SIGSEGV) == "crashed (SIGSEGV)"
    assert srv.describe_exit(1) == "exited with code 1"


def test_served_model_names_leave_out_hidden_dirs(tmp_path):
    for d in ("b", "a", ".aitune-staging-x", ".git"):
        (tmp_path / d).mkdir()
    (tmp_path / ".aitune.lock").write_text("")
    assert srv.served_model_names(tmp_path) == ("a", "b")
    assert srv.served_model_names(tmp_path / "missing") == ("*",)
