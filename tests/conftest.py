"""Shared fixtures. Live fixtures skip (not fail) where the embedded Triton stack is absent."""

from __future__ import annotations

from pathlib import Path

import pytest


def triton_stack_missing() -> str | None:
    """Why live tests cannot run here, or None."""
    from aitune_triton.triton import tools

    try:
        tools.bundled_tritonserver()
    except tools.ToolMissing as exc:
        return str(exc)
    if not tools.bundled_stub().exists():
        return "no Python-backend stub for Python %s" % tools.python_version()
    return None


@pytest.fixture(scope="session")
def triton_server_factory(tmp_path_factory):
    """``start(repo, **ServerOptions fields) -> TritonServer`` (started); all stopped at session end.

    Each server logs to its own file under pytest's tmp dir so a failure's log survives the run.
    """
    reason = triton_stack_missing()
    if reason:
        pytest.skip(reason)
    from aitune_triton.triton.server import ServerOptions, TritonServer

    started: list[TritonServer] = []

    def start(repo: Path, **options) -> TritonServer:
        log_path = tmp_path_factory.mktemp("triton-log") / "tritonserver.log"
        server = TritonServer(repo, ServerOptions(**options), log_path=log_path)
        started.append(server)
        return server.start()

    yield start
    for server in reversed(started):
        server.stop()
