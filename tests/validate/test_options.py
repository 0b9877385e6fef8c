"""ValidateOptions' checks and the CLI's concurrency parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from aitune_triton.errors import UserError
from aitune_triton.validate.options import ValidateOptions, parse_concurrency


def test_options_and_concurrency_parsing():
    assert parse_concurrency("1,2,4,8") == (1, 2, 4, 8)
    assert parse_concurrency("1:8:2") == (1, 3, 5, 7)
    assert parse_concurrency("2:4") == (2, 3, 4)
    for bad, why in (("", "gives no positive values"), ("a,b", "is not a comma list"), ("0,1", "gives no positive")):
        with pytest.raises(UserError, match="concurrency %r %s" % (bad, why)):
            parse_concurrency(bad)
    with pytest.raises(UserError, match="give only one"):
        ValidateOptions(url="127.0.0.1:8000", tritonserver=Path("/x/tritonserver"))
    with pytest.raises(UserError, match="shared memory"):
        ValidateOptions(shared_memory="cuda")
    with pytest.raises(UserError, match="concurrency"):
        ValidateOptions(concurrency=())
    assert ValidateOptions(concurrency=[1, 2]).concurrency == (1, 2)


def test_defaults_come_from_the_one_defaults_module():
    """The CLI shows ``aitune_triton.defaults`` in --help; the dataclasses behind it must agree."""
    from aitune_triton import defaults
    from aitune_triton.triton.launch import ServerOptions
    from aitune_triton.triton.perf import PerfOptions
    from aitune_triton.validate.checks.target import Endpoint

    opts = ValidateOptions()
    assert (opts.concurrency, opts.request_timeout_s, opts.startup_timeout_s, opts.perf_request_count,
            opts.perf_stability_pct) == (defaults.VALIDATE_CONCURRENCY, defaults.REQUEST_TIMEOUT_S,
                                         defaults.STARTUP_TIMEOUT_S, defaults.PERF_REQUEST_COUNT,
                                         defaults.PERF_STABILITY_PCT)
    assert isinstance(opts.perf_stability_pct, float)  # the CLI's --perf-stability is a float too
    perf = PerfOptions()
    assert (perf.measurement_request_count, perf.stability_percentage) == (defaults.PERF_REQUEST_COUNT,
                                                                           defaults.PERF_STABILITY_PCT)
    server = ServerOptions()
    assert (server.host, server.startup_timeout_s) == (defaults.LOOPBACK, defaults.STARTUP_TIMEOUT_S)
    assert Endpoint.__dataclass_fields__["timeout_s"].default == defaults.REQUEST_TIMEOUT_S


def test_a_backend_directory_is_for_a_launched_server_only(tmp_path):
    with pytest.raises(UserError, match="--backend-directory is for a server validate launches"):
        ValidateOptions(url="localhost:8000", backend_directory=tmp_path)
    assert ValidateOptions(tritonserver=tmp_path / "tritonserver", backend_directory=tmp_path).backend_directory \
        == tmp_path
