"""What a check gets: the model directory's claims (``ModelTarget``) and clients to the server
(``Session``), every request bounded by a timeout so a wedged server cannot hang a run."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from aitune_triton import defaults
from aitune_triton.errors import UserError
from aitune_triton.reference_data import REFERENCE, ReferenceCase, load_reference
from aitune_triton.triton.manifest import Manifest


def parse_config_file(path: Path) -> model_config_pb2.ModelConfig:
    """A config.pbtxt as Triton's ModelConfig; UserError naming the file, line and column otherwise."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError("cannot read %s: %s" % (path, exc)) from None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        where = "line %s, column %s" % (exc.GetLine(), exc.GetColumn()) if exc.GetLine() else "somewhere"
        reason = re.sub(r"^\d+:\d+ : ", "", str(exc))
        raise UserError("%s does not parse as a Triton ModelConfig at %s: %s" % (path, where, reason)) from None


@dataclass(frozen=True)
class ModelTarget:
    """What a model directory claims: its config as written, its manifest, its reference cases."""

    name: str
    model_dir: Path
    manifest: Manifest
    config: model_config_pb2.ModelConfig
    reference: tuple[ReferenceCase, ...]

    @classmethod
    def load(cls, model_dir: Path) -> ModelTarget:
        """Raises UserError/ModelError/OSError with the file named when something is missing or broken."""
        model_dir = Path(model_dir)
        manifest = Manifest.load(model_dir)
        config = parse_config_file(model_dir / "config.pbtxt")
        reference = tuple(load_reference(model_dir / REFERENCE))
        return cls(model_dir.name, model_dir, manifest, config, reference)

    @property
    def kind(self) -> str:
        """"pipeline" for a raw-data ensemble (checked with raw requests), "model" otherwise."""
        return "pipeline" if self.manifest.pipeline.get("role") == "pipeline" else "model"

    @property
    def max_batch_size(self) -> int:
        return int(self.config.max_batch_size)

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 0

    @property
    def inputs(self) -> dict[str, model_config_pb2.ModelInput]:
        return {t.name: t for t in self.config.input}

    @property
    def outputs(self) -> dict[str, model_config_pb2.ModelOutput]:
        return {t.name: t for t in self.config.output}


@dataclass(frozen=True)
class Endpoint:
    """Where the server answers; ``timeout_s`` bounds every request so a wedged server cannot hang a run."""

    http_url: str
    grpc_url: str | None
    timeout_s: float = defaults.REQUEST_TIMEOUT_S


class Session:
    """One HTTP and one gRPC client, both with timeouts; close() when done."""

    def __init__(self, endpoint: Endpoint):
        import tritonclient.grpc as grpcclient
        import tritonclient.http as httpclient

        self.endpoint = endpoint
        self.timeout_s = endpoint.timeout_s
        self.http = httpclient.InferenceServerClient(
            endpoint.http_url, connection_timeout=endpoint.timeout_s, network_timeout=endpoint.timeout_s)
        self.grpc = grpcclient.InferenceServerClient(endpoint.grpc_url) if endpoint.grpc_url else None

    def close(self) -> None:
        for client in (self.http, self.grpc):
            if client is not None:
                try:
                    client.close()
                except Exception:  # noqa: BLE001 - closing a client of a dead server may raise anything
                    pass

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
