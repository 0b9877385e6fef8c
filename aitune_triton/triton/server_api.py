"""The server interface validate and tune work against, and the server they attach to.

``Server`` is what a run needs from a Triton server, whether this process launched it
(``aitune_triton.triton.server.TritonServer``) or someone else runs it (``RemoteServer``): its
endpoints, its health and version, model load/unload, and what is known about its process.
``owns_process`` tells them apart where it matters: only a server the run started has its models
loaded and unloaded by the run, is stopped at the end, and has a log and an exit code to report.

Standard library only (tritonclient is imported when a model is loaded), so importing the
protocol costs nothing.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from aitune_triton.errors import ServerError


@runtime_checkable
class Server(Protocol):
    """A Triton server as validate and tune use it. ``returncode`` and ``log_path`` are None where
    unknown (a server someone else runs)."""

    @property
    def http_url(self) -> str: ...

    @property
    def grpc_url(self) -> str | None: ...

    @property
    def owns_process(self) -> bool: ...

    @property
    def returncode(self) -> int | None: ...

    @property
    def log_path(self) -> Path | None: ...

    def start(self) -> Server: ...

    def stop(self) -> int | None: ...

    def is_live(self) -> bool: ...

    def model_ready(self, name: str) -> bool: ...

    def version(self) -> str | None: ...

    def repository_index(self) -> list[dict]: ...

    def load_model(self, name: str, config_json: str | None = None, timeout_s: float = 300.0) -> None: ...

    def unload_model(self, name: str, timeout_s: float = 120.0) -> None: ...

    def log_tail(self, n: int = 20) -> str: ...

    def describe(self) -> str: ...


# local servers must never be reached through an http_proxy from the environment
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, path: str, timeout: float = 2.0, data: bytes | None = None) -> tuple[int | None, bytes]:
    """(status, body); status None when nothing answers. POSTs when ``data`` is given."""
    req = urllib.request.Request("http://%s%s" % (url, path), data=data, method="POST" if data is not None else "GET")
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, ValueError):
        return None, b""


def strip_scheme(url: str) -> str:
    return re.sub(r"^[a-z]+://", "", url).rstrip("/")


class ServerAPI:
    """Operations shared by launched and attached servers, over the HTTP endpoint a subclass names."""

    @property
    def http_url(self) -> str:
        raise NotImplementedError

    def _error(self, message: str) -> ServerError:
        """The error for a failed operation; a launched server adds its log path and a log excerpt."""
        return ServerError(message)

    def is_live(self) -> bool:
        return http_get(self.http_url, "/v2/health/live")[0] == 200

    def model_ready(self, name: str) -> bool:
        return http_get(self.http_url, "/v2/models/%s/ready" % name)[0] == 200

    def version(self) -> str | None:
        status, body = http_get(self.http_url, "/v2")
        return json.loads(body).get("version") if status == 200 else None

    def repository_index(self) -> list[dict]:
        status, body = http_get(self.http_url, "/v2/repository/index", data=b"{}")
        if status != 200:
            raise ServerError("repository index failed (HTTP %s): %s" % (status, body.decode(errors="replace")))
        return json.loads(body)

    def log_tail(self, n: int = 20) -> str:
        """The server log's last ``n`` lines (a launched server's; none for an attached one)."""
        return ""

    def load_reason(self, name: str) -> str:
        """Triton's own reason a model did not load: its repository index entry, else the server log's
        last error line naming it (a config Triton refuses fails the load with only "failed to poll
        from model repository"; the cause is in the log)."""
        try:
            entry = next((m for m in self.repository_index() if m.get("name") == name), {})
        except (ServerError, ValueError):
            entry = {}
        reason = str(entry.get("reason") or "")
        if reason and reason != "unloaded":
            return reason
        quoted = "'%s'" % name
        for line in reversed(self.log_tail(400).splitlines()):
            if quoted in line and line[:1] == "E":  # Triton's error lines: "E1206 21:00:00.1 pid file.cc:12] text"
                return line.split("] ", 1)[-1].strip()[:500]
        return ""

    def _client(self, timeout_s: float) -> Any:
        import tritonclient.http as httpclient  # gevent-based; only imported when needed

        return httpclient.InferenceServerClient(self.http_url, connection_timeout=timeout_s, network_timeout=timeout_s)

    def load_model(self, name: str, config_json: str | None = None, timeout_s: float = 300.0) -> None:
        """Load (or reload) a model; ``config_json`` overrides its config.pbtxt for this load."""
        from tritonclient.utils import InferenceServerException

        client = self._client(timeout_s)
        try:
            client.load_model(name, config=config_json)
        except InferenceServerException as exc:
            message = exc.message() or ""
            reason = self.load_reason(name)
            if reason and reason not in message:
                message = "%s: %s" % (message, reason) if message else reason
            raise self._error("loading model %r failed: %s" % (name, message)) from exc
        except Exception as exc:  # noqa: BLE001 - a timeout or a dropped connection (gevent raises several kinds)
            raise self._error("loading model %r did not finish within %.0f s (%s: %s)"
                              % (name, timeout_s, type(exc).__name__, exc)) from exc
        finally:
            close_quietly(client)

    def unload_model(self, name: str, timeout_s: float = 120.0) -> None:
        from tritonclient.utils import InferenceServerException

        client = self._client(timeout_s)
        try:
            client.unload_model(name)
        except InferenceServerException as exc:
            raise self._error("unloading model %r failed: %s" % (name, exc.message())) from exc
        except Exception as exc:  # noqa: BLE001 - see load_model
            raise self._error("unloading model %r did not finish within %.0f s (%s: %s)"
                              % (name, timeout_s, type(exc).__name__, exc)) from exc
        finally:
            close_quietly(client)


def close_quietly(client: Any) -> None:
    try:
        client.close()
    except Exception:  # noqa: BLE001 - closing a client of a wedged server may raise anything
        pass


class RemoteServer(ServerAPI):
    """A server someone else runs: same interface, but it is never started or stopped here."""

    def __init__(self, http_url: str, grpc_url: str | None = None, metrics_url: str | None = None):
        self._http_url = strip_scheme(http_url)
        self._grpc_url = strip_scheme(grpc_url) if grpc_url else None
        self.metrics_url = strip_scheme(metrics_url) if metrics_url else None

    @property
    def http_url(self) -> str:
        return self._http_url

    @property
    def grpc_url(self) -> str | None:
        return self._grpc_url

    @property
    def owns_process(self) -> bool:
        """Someone else's: never loaded into, unloaded, stopped or read from here."""
        return False

    @property
    def returncode(self) -> int | None:
        return None  # not a child of this process: unknown

    @property
    def log_path(self) -> Path | None:
        return None

    def describe(self) -> str:
        return "the Triton server at %s" % self.http_url

    def start(self) -> RemoteServer:
        if not self.is_live():
            raise ServerError("no Triton server answers at %s" % self.http_url)
        return self

    def stop(self) -> int | None:
        """Not ours to stop."""
        return None

    def log_tail(self, n: int = 20) -> str:
        return ""

    def __enter__(self) -> RemoteServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
