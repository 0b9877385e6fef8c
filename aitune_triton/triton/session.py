"""The one server lifecycle of ``validate``, ``tune`` and ``serve``: attach to a running Triton
(``url``) or launch the embedded one on the repository, start it, and stop it afterwards only if
it was launched here (a server someone else runs is never stopped).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from aitune_triton import defaults
from aitune_triton.errors import UserError
from aitune_triton.triton.launch import ServerOptions
from aitune_triton.triton.server import TritonServer
from aitune_triton.triton.server_api import RemoteServer, Server


def grpc_for(url: str) -> str | None:
    """Triton's default pairing: the gRPC port is the HTTP port + 1 (None when ``url`` has no port)."""
    match = re.match(r"^(?:[a-z]+://)?([^/:]+):(\d+)", url)
    return "%s:%d" % (match.group(1), int(match.group(2)) + 1) if match else None


@dataclass(frozen=True)
class ServerTarget:
    """Which server a command talks to: the running one at ``url`` (``grpc_url`` defaults to its
    HTTP port + 1), or else the embedded tritonserver (``tritonserver``: another binary;
    ``backend_directory``: another backends folder) launched on the repository and stopped
    afterwards."""

    url: str | None = None
    grpc_url: str | None = None
    tritonserver: Path | None = None
    startup_timeout_s: float = defaults.STARTUP_TIMEOUT_S
    backend_directory: Path | None = None  # the launched server's backends folder (default: the embedded one's)

    def __post_init__(self) -> None:
        if self.url and self.tritonserver:
            raise UserError("--url attaches to a running server and --tritonserver launches one; give only one")
        if self.url and self.backend_directory:
            raise UserError("--backend-directory is for a server this command launches; a server at --url has its "
                            "own")
        if self.grpc_url and not self.url:
            raise UserError("--grpc-url names the gRPC endpoint of the server given with --url; pass --url too")
        if not self.startup_timeout_s > 0:
            raise UserError("the start-up timeout must be > 0, got %r" % self.startup_timeout_s)

    @property
    def attached(self) -> bool:
        return bool(self.url)


def server_for(repo: Path | str, target: ServerTarget, options: ServerOptions | None = None,
               log_path: Path | None = None, notify: Callable[[str], None] | None = None) -> Server:
    """The server ``target`` names, not started yet: a ``RemoteServer`` for a ``url``, else a
    ``TritonServer`` for ``repo`` (``options`` refine the launch; ``target`` names the binary and
    the start-up timeout; ``notify(line)`` hears what a launched server says while it stops)."""
    if target.url:
        return RemoteServer(target.url, target.grpc_url or grpc_for(target.url))
    options = dataclasses.replace(options or ServerOptions(), startup_timeout_s=target.startup_timeout_s,
                                  tritonserver=target.tritonserver or (options.tritonserver if options else None),
                                  backend_directory=target.backend_directory or
                                  (options.backend_directory if options else None))
    return TritonServer(repo, options, log_path=log_path, notify=notify)


def stop_if_launched(server: Server | None) -> None:
    """Stop a server this process launched; one someone else runs is left as it is."""
    if server is not None and server.owns_process:
        server.stop()


@contextlib.contextmanager
def running_server(repo: Path | str, target: ServerTarget, options: ServerOptions | None = None,
                   log_path: Path | None = None, notify: Callable[[str], None] | None = None) -> Iterator[Server]:
    """``server_for`` started, and stopped on the way out if it was launched here."""
    server = server_for(repo, target, options, log_path, notify)
    try:
        server.start()
        yield server
    finally:
        stop_if_launched(server)
