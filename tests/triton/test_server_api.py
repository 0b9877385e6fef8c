"""The interface validate and tune use (``Server``), satisfied by the launched and the attached server."""

from __future__ import annotations

import inspect

import pytest

from aitune_triton.errors import ServerError
from aitune_triton.triton.launch import free_port
from aitune_triton.triton.server import TritonServer
from aitune_triton.triton.server_api import RemoteServer, Server


def test_remote_server_interface():
    port = free_port()
    remote = RemoteServer("http://127.0.0.1:%d/" % port, grpc_url="127.0.0.1:%d" % (port + 1))
    assert remote.http_url == "127.0.0.1:%d" % port
    assert remote.grpc_url == "127.0.0.1:%d" % (port + 1)
    assert remote.log_tail() == "" and remote.log_path is None and remote.returncode is None
    assert not remote.owns_process and remote.describe() == "the Triton server at 127.0.0.1:%d" % port
    assert remote.stop() is None  # a no-op
    assert not remote.is_live()
    with pytest.raises(ServerError, match="no Triton server"):
        remote.start()


def test_both_servers_satisfy_the_server_protocol(tmp_path):
    launched: Server = TritonServer(tmp_path)  # mypy checks these assignments against the protocol
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
