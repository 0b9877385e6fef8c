"""What a tritonserver launch is made of: the argv, the environment, ports, the binary's flags and
version, and the guards that run before anything is launched. Nothing here starts a server."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import socket
import sys
from pathlib import Path

import pytest

from aitune_triton.errors import UserError
from aitune_triton.triton import launch, tools
from aitune_triton.triton.launch import (
    Ports,
    ServerOptions,
    build_command,
    build_environment,
    free_port,
    free_ports,
    resolve_ports,
)

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


def test_another_binary_gets_the_backends_dir_of_its_install_tree(tmp_path):
    """``PREFIX/bin/tritonserver`` serves with ``PREFIX/backends`` (the pip wheel's and the NGC
    container's layout), also through a symlink to it; ``--backend-directory`` wins over both, and a
    binary outside any such layout is left to Triton's own default."""
    prefix = tmp_path / "triton"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "backends" / "python").mkdir(parents=True)
    binary = prefix / "bin" / "tritonserver"
    binary.write_text("")
    cmd = build_command(tmp_path, ServerOptions(tritonserver=binary), PORTS, flags=frozenset())
    assert flag_values(cmd, "--backend-directory") == [str(prefix / "backends")]
    (tmp_path / "elsewhere").mkdir()
    link = tmp_path / "elsewhere" / "tritonserver"
    link.symlink_to(binary)
    assert launch.resolve_backend_directory(ServerOptions(tritonserver=link)) == prefix / "backends"
    mine = tmp_path / "my_backends"
    mine.mkdir()
    cmd = build_command(tmp_path, ServerOptions(tritonserver=link, backend_directory=mine), PORTS, flags=frozenset())
    assert flag_values(cmd, "--backend-directory") == [str(mine)]
    loose = tmp_path / "elsewhere" / "tritonserver-copy"
    loose.write_text("")
    assert launch.resolve_backend_directory(ServerOptions(tritonserver=loose)) is None


def test_a_backend_directory_that_is_not_a_directory_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"backend directory .*nowhere is not a directory; pass the folder that holds "
                                        r"one folder per backend"):
        ServerOptions(backend_directory=tmp_path / "nowhere")


def test_a_missing_server_names_the_ways_to_get_one(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(tools.ToolMissing) as info:
        tools.triton_root()
    message = str(info.value)
    assert "pip install nvidia-pytriton" in message and "nvcr.io/nvidia/tritonserver" in message
    assert "make" not in message


@pytest.mark.parametrize(
    "opts,why",
    [(ServerOptions(model_control_mode="none", load_models=("a",)), "needs model_control_mode='explicit'"),
     (ServerOptions(load_models=("*", "a")), r"load_models=\('\*',\) must be the only entry")],
)
def test_invalid_load_models(tmp_path, opts, why):
    with pytest.raises(ValueError, match=why):
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
    flags = launch.supported_flags(tools.bundled_tritonserver())
    assert {"--load-model", "--model-control-mode", "--backend-directory"} <= flags
    if launch.server_version() == "2.51.0":
        assert "--allow-client-shm" not in flags  # added in 2.68


def test_server_version_is_honest(monkeypatch, tmp_path):
    assert launch.server_version(Path("/bin/false")) is None  # not the bundled binary, no --version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "9.9.9")
    monkeypatch.setattr(tools, "bundled_tritonserver", lambda: Path("/bin/false"))
    assert launch.server_version() is None  # unknown wheel: no guess


def test_plain_paths_and_names_pass(tmp_path):
    launch.check_shell_safe(tmp_path / "models-1.0" / "r_e+p@x", ("cnn", "cnn_trt", "a.b-c"))
    with pytest.raises(UserError, match="model name"):
        launch.check_shell_safe(tmp_path, ("ok", "bad$(x)"))


def test_ports_check_accepts_free_ports():
    launch.check_ports_free("127.0.0.1", dict(zip(("http", "grpc"), launch.free_ports(2), strict=True)))


def test_command_carries_a_per_launch_id(tmp_path):
    cmd = build_command(tmp_path, ServerOptions(), Ports(1, 2, 3), binary=Path("/bin/true"),
                        backend_directory=tmp_path, flags=frozenset({"--id"}), server_id="aitune-x")
    assert "--id=aitune-x" in cmd


def test_served_model_names_leave_out_hidden_dirs(tmp_path):
    for d in ("b", "a", ".aitune-staging-x", ".git"):
        (tmp_path / d).mkdir()
    (tmp_path / ".aitune.lock").write_text("")
    assert launch.served_model_names(tmp_path) == ("a", "b")
    assert launch.served_model_names(tmp_path / "missing") == ("*",)


def test_server_repository_arg_keeps_the_s3_url_and_absolutises_paths():
    from aitune_triton.triton.launch import is_s3_url, server_repository_arg

    assert server_repository_arg("s3://127.0.0.1:9000/b/p") == "s3://127.0.0.1:9000/b/p"
    assert server_repository_arg(Path("rel")) == str(Path("rel").resolve())
    assert is_s3_url("s3://b/p") and not is_s3_url(Path("s3:/b")) and not is_s3_url("S3://b")



def test_exit_timeout_is_passed_when_the_binary_knows_it(tmp_path):
    """Triton's own drain limit on SIGTERM (its default, 30 s, equalled the stop's grace: a false "ignored SIGTERM")."""
    assert flag_values(build_command(tmp_path, ServerOptions(tritonserver=FAKE), PORTS, flags=None),
                       "--exit-timeout-secs") == ["10"]
    assert flag_values(build_command(tmp_path, ServerOptions(tritonserver=FAKE, exit_timeout_s=3), PORTS,
                                     flags=frozenset({"--exit-timeout-secs"})), "--exit-timeout-secs") == ["3"]
    assert not flag_values(build_command(tmp_path, ServerOptions(tritonserver=FAKE), PORTS, flags=frozenset()),
                           "--exit-timeout-secs")


def test_a_too_low_open_file_limit_is_refused_before_launch():
    """Under `ulimit -n 64` validate failed after 159 s with the cause only in the log tail."""
    import resource

    from aitune_triton.errors import UserError
    from aitune_triton.triton.launch import check_open_files

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    check_open_files(needed=min(soft, 64))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    try:
        with pytest.raises(UserError, match=r"the open-file limit is 64 \(ulimit -n\), below the 256 tritonserver "
                                            r"and its stubs need; raise it \(ulimit -n 256"):
            check_open_files()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_an_s3_repository_is_not_judged_by_the_current_directory(tmp_path, monkeypatch):
    """``serve s3://...`` from a folder with a space was refused: the URL was resolved as a path under it."""
    odd = tmp_path / "my models"
    odd.mkdir()
    monkeypatch.chdir(odd)
    launch.check_shell_safe("s3://127.0.0.1:9000/bucket/repo/versions/x", ("cnn",))
    with pytest.raises(UserError, match=r"refusing to serve 'bad\$\(x\)': its model name contains shell"):
        launch.check_shell_safe("s3://bucket/repo", ("ok", "bad$(x)"))


@pytest.mark.parametrize("host, why", [("::1", "Address family for hostname not supported"),
                                       ("no-such-host.invalid", "Name or service not known"),
                                       ("192.0.2.1", "Cannot assign requested address")])
def test_a_host_this_machine_cannot_listen_on_names_host_not_a_port(host, why):
    """`serve --host ::1` said "http port 8000 on ::1 is not free ... pass another --http-port", and
    an unresolvable host made port picking raise gaierror ("internal error")."""
    message = r"^--host %s cannot be listened on here \(%s\); pass an IPv4 address" % (re.escape(host), why)
    with pytest.raises(UserError, match=message):
        launch.check_host(host)
    with pytest.raises(UserError, match=message):
        launch.check_ports_free(host, {"http": free_port()})


def test_a_busy_port_is_still_a_busy_port():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UserError, match=r"grpc port %d on 127.0.0.1 is not free \(Address already in use\); stop "
                                            r"what uses it or pass another --grpc-port" % port):
            launch.check_ports_free("127.0.0.1", {"grpc": port})


def test_serve_refuses_a_bad_host_in_one_line_before_anything_runs(tmp_path):
    from click.testing import CliRunner

    from aitune_triton.cli import main

    result = CliRunner().invoke(main, ["serve", str(tmp_path), "--host", "::1"])
    assert result.exit_code == 2, result.output
    assert "--host ::1 cannot be listened on here" in result.output and "--http-port" not in result.output
    assert "Traceback" not in result.output and "internal error" not in result.output


def test_flags_that_cannot_be_read_are_unknown_not_empty_and_not_kept(tmp_path):
    """A failed or timed-out `tritonserver --help` gave frozenset(), which the cache kept: every later
    launch then dropped --id and --exit-timeout-secs as flags the binary did not know."""
    binary = tmp_path / "bin" / "tritonserver"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\necho 'Usage: tritonserver [options]'\necho '  --id <string>'\n"
                      "echo '  --exit-timeout-secs <integer>'\nexit 1\n")
    binary.chmod(0o644)  # cannot run yet
    assert launch.supported_flags(binary) is None
    cmd = build_command(tmp_path, ServerOptions(tritonserver=binary), PORTS, flags=launch.supported_flags(binary),
                        server_id="aitune-x")
    assert "--id=aitune-x" in cmd and flag_values(cmd, "--exit-timeout-secs") == ["10"]
    binary.chmod(0o755)  # same mtime: a cached failure would still answer
    assert launch.supported_flags(binary) == frozenset({"--id", "--exit-timeout-secs"})


# ---------------------------------------------------------------- numpy 2 and BYTES tensors (Triton < 2.52)


@pytest.mark.parametrize("numpy, triton, expected", [
    ("1.26.4", "2.51.0", False),   # the pinned numpy: fine everywhere
    ("1.26.4", None, False),
    (None, "2.51.0", False),       # no numpy: nothing to misread
    ("2.2.6", "2.51.0", True),     # the 2.51 stub's pybind11 2.10 misreads numpy 2 dtypes
    ("2.0.0rc1", "2.41.0", True),
    ("2.2.6", "2.52.0", False),    # fixed in 24.11 (python_backend #384)
    ("2.2.6", "2.60.0", False),
    ("2.2.6", None, None),         # unknown release: a warning, not a refusal
    ("2.2.6", "unknown", None),
])
def test_the_numpy2_bytes_rule(numpy, triton, expected):
    assert launch.numpy2_breaks_bytes(numpy, triton) is expected


def _config(repo: Path, name: str, text: str) -> None:
    (repo / name).mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text('name: "%s"\n%s' % (name, text))


PRE = 'backend: "python"\ninput { name: "raw" data_type: TYPE_STRING dims: [1] }\n' \
      'output { name: "x" data_type: TYPE_FP32 dims: [3] }\n'
POST = 'backend: "python"\ninput { name: "y" data_type: TYPE_FP32 dims: [3] }\n' \
       'output { name: "label" data_type: TYPE_STRING dims: [1] }\n'
MODEL = 'backend: "python"\ninput { name: "x" data_type: TYPE_FP32 dims: [3] }\n' \
        'output { name: "y" data_type: TYPE_FP32 dims: [3] }\n'
ENSEMBLE = 'platform: "ensemble"\nensemble_scheduling {\n' + "".join(
    '  step { model_name: "%s" model_version: -1 }\n' % m for m in ("p_pre", "p", "p_post")) + "}\n"


@pytest.fixture
def pipeline_repo(tmp_path):
    repo = tmp_path / "repo"
    for name, text in (("p_pre", PRE), ("p_post", POST), ("p", MODEL), ("p_pipeline", ENSEMBLE),
                       ("onnx_strings", 'backend: "onnxruntime"\n' + PRE.split("\n", 1)[1]),
                       ("packed", PRE + 'parameters { key: "EXECUTION_ENV_PATH" value: { string_value: '
                                        '"$$TRITON_MODEL_DIRECTORY/python_env.tar.gz" } }\n')):
        _config(repo, name, text)
    (repo / "broken").mkdir()
    (repo / "broken" / "config.pbtxt").write_text("backend: {{{")
    return repo


def test_python_models_with_bytes_are_found_through_their_ensemble(pipeline_repo):
    assert launch.bytes_python_models(pipeline_repo, ("p_pipeline",)) == {"p_pre": "input 'raw'",
                                                                           "p_post": "output 'label'"}
    assert launch.bytes_python_models(pipeline_repo, ("p_post",)) == {"p_post": "output 'label'"}
    # numeric Python models, other backends, a packed environment (its own numpy), unreadable or absent configs
    assert launch.bytes_python_models(pipeline_repo, ("p", "onnx_strings", "packed", "broken", "missing")) == {}
    assert launch.bytes_python_models("s3://bucket/repo", ("p_pipeline",)) == {}


def _versions(monkeypatch, numpy: str | None, triton: str | None) -> list:
    asked: list = []
    monkeypatch.setattr(launch, "stub_numpy_version", lambda: numpy)

    def server_version(path=None):
        asked.append(path)
        return triton

    monkeypatch.setattr(launch, "server_version", server_version)
    return asked


def test_numpy2_with_bytes_under_an_old_triton_is_refused_in_one_line(pipeline_repo, monkeypatch):
    from aitune_triton.errors import StubIncompatible

    _versions(monkeypatch, "2.2.6", "2.51.0")
    with pytest.raises(StubIncompatible) as info:
        launch.check_numpy_bytes(pipeline_repo, ("p", "p_pipeline"))
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == 2 and isinstance(info.value, UserError)
    assert message.startswith("refusing to start tritonserver: Python-backend model p_pre (and 1 more) has a BYTES "
                              "input 'raw', and the Python backend of Triton 2.51.0 (older than 2.52 / 24.11) "
                              "corrupts BYTES tensors under numpy 2.2.6; ")
    assert 'pip install "numpy<2"' in message and "--tritonserver" in message and sys.prefix in message


@pytest.mark.parametrize("numpy, triton, names", [
    ("1.26.4", "2.51.0", ("p_pipeline",)),  # numpy 1
    ("2.2.6", "2.52.0", ("p_pipeline",)),   # a fixed release
    ("2.2.6", "2.51.0", ("p", "onnx_strings", "packed")),  # no BYTES in a Python model this environment runs
    ("2.2.6", "2.51.0", ()),
])
def test_what_the_stub_serves_right_passes(pipeline_repo, monkeypatch, numpy, triton, names):
    asked = _versions(monkeypatch, numpy, triton)
    launch.check_numpy_bytes(pipeline_repo, names)
    assert launch.numpy_bytes_problem(pipeline_repo, names) is None
    if numpy.startswith("1") or not names:
        assert asked == []  # the binary is not asked its version when nothing depends on it


def test_an_unknown_release_warns_instead_of_refusing(pipeline_repo, monkeypatch, caplog):
    asked = _versions(monkeypatch, "2.2.6", None)
    binary = Path("/opt/tritonserver/bin/tritonserver")
    with caplog.at_level("WARNING", logger=launch.log.name):
        launch.check_numpy_bytes(pipeline_repo, ("p_pre",), binary)
    assert asked == [binary]
    assert "p_pre has a BYTES input 'raw'" in caplog.text and "release cannot be read" in caplog.text


def test_the_stubs_numpy_is_this_environments_not_pythonpaths(tmp_path, monkeypatch):
    """The stub ignores PYTHONPATH (a numpy 1.26 there does not save a numpy 2 venv's stub): a numpy
    reachable only through it is not the stub's; one on this environment's path (a .pth) is."""
    fake = tmp_path / "site"
    (fake / "numpy-9.9.0.dist-info").mkdir(parents=True)
    (fake / "numpy-9.9.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: numpy\nVersion: 9.9.0\n")
    here = importlib.metadata.version("numpy")
    monkeypatch.syspath_prepend(str(fake))
    monkeypatch.setenv("PYTHONPATH", str(fake))
    assert importlib.metadata.version("numpy") == "9.9.0"  # what a plain metadata lookup would say
    assert launch.stub_numpy_version() == here
    monkeypatch.delenv("PYTHONPATH")
    assert launch.stub_numpy_version() == "9.9.0"


def test_the_server_refuses_before_launching_anything(pipeline_repo, tmp_path, monkeypatch):
    import subprocess

    from aitune_triton.errors import StubIncompatible
    from aitune_triton.triton.server import TritonServer

    binary = tmp_path / "bin" / "tritonserver"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\nexit 1\n")
    binary.chmod(0o755)
    asked = _versions(monkeypatch, "2.2.6", "2.51.0")
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("launched"))
    # validate starts the server empty and names what it loads later; serve/tune load at start-up
    for options in (ServerOptions(tritonserver=binary, loaded_later=("p_pipeline",)),
                    ServerOptions(tritonserver=binary, load_models=("*",)),
                    ServerOptions(tritonserver=binary, model_control_mode="poll")):
        with pytest.raises(StubIncompatible, match=r"model p_p(re|ost) \(and 1 more\) .* Triton 2.51.0"):
            TritonServer(pipeline_repo, options).start()
    assert asked == [binary] * 3
