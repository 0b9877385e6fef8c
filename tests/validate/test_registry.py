"""The check registry: run order, unique names, every check module's checks registered, and the
harness running exactly what the registry holds (gates, own-server needs, deaths)."""

from __future__ import annotations

import inspect
import pkgutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from aitune_triton.triton.launch import free_port
from aitune_triton.triton.server_api import RemoteServer
from aitune_triton.validate import checks, harness
from aitune_triton.validate.checks import registry
from aitune_triton.validate.checks.registry import Check, CheckContext
from aitune_triton.validate.result import CheckResult, CheckStatus

PER_MODEL = ["ready", "metadata", "accuracy_http", "accuracy_grpc", "edge_shapes", "envelope_bounds", "bad_requests",
             "dynamic_batching", "version_stamp"]
PIPELINE = ["ready", "raw_answers_http", "raw_answers_grpc", "raw_bad_input"]
# modules that hold what the checks share rather than checks
SHARED = {"registry", "target", "wire"}


def test_run_order_and_needs():
    assert [c.name for c in registry.registered(final=False, target="model")] == PER_MODEL
    assert [c.name for c in registry.registered(final=False, target="pipeline")] == PIPELINE
    assert [c.name for c in registry.registered(final=True, target="model")] == ["oversized_shape"]
    assert [c.name for c in registry.registered(final=True, target="pipeline")] == []
    everything = registry.registered()
    assert [c.order for c in everything] == sorted(c.order for c in everything)
    assert [c.name for c in everything if c.gate] == ["ready"]  # first: nothing else is asked of a model not ready
    assert everything[0].name == "ready"
    assert [c.name for c in everything if c.needs_grpc] == ["accuracy_grpc", "raw_answers_grpc"]
    oversized = everything[-1]
    assert oversized.final and oversized.needs_own_server and "did not start" in oversized.why


def test_names_and_orders_are_unique():
    everything = registry.registered()
    assert len({c.name for c in everything}) == len(everything)
    assert len({c.order for c in everything}) == len(everything)
    with pytest.raises(ValueError, match="'ready' is registered twice"):
        registry.register(Check("ready", 12345, lambda ctx: CheckResult("ready", CheckStatus.PASS)))
    with pytest.raises(ValueError, match="'metadata' and 'new' share order 20"):
        registry.register(Check("new", 20, lambda ctx: CheckResult("new", CheckStatus.PASS)))
    with pytest.raises(ValueError, match="gives no reason"):
        Check("x", 1, lambda ctx: CheckResult("x", CheckStatus.PASS), needs_own_server=True)
    assert "new" not in {c.name for c in registry.registered()}


def test_every_check_function_is_registered():
    """Each ``check_*`` function of a check module names a registered check, and each check module
    registers something: a new check cannot be written and forgotten."""
    names = {c.name for c in registry.registered()}
    modules = {c.run.__module__ for c in registry.registered()}
    for info in pkgutil.iter_modules(checks.__path__):
        if info.name in SHARED:
            continue
        module = getattr(checks, info.name)
        assert module.__name__ in modules, "%s registers no check" % module.__name__
        functions = [name for name, f in inspect.getmembers(module, inspect.isfunction)
                     if name.startswith("check_") and f.__module__ == module.__name__]
        assert functions, module.__name__
        for name in functions:
            assert any(n.startswith(name[len("check_"):]) for n in names), "%s.%s is not registered" % (
                module.__name__, name)


def _recording(name: str, status: CheckStatus, ran: list[str]) -> Check:
    def run(ctx: CheckContext) -> CheckResult:
        ran.append(name)
        return CheckResult(name, status, "%s ran" % name)
    return run


@pytest.fixture
def messages() -> list[str]:
    return []


@pytest.fixture
def attached_run(messages) -> harness._Run:
    """A run attached (not launched) to an address where nothing answers; progress goes to ``messages``."""
    run = harness._Run(Path("."), harness.ValidateOptions(perf=False), progress=messages.append)
    run._server = RemoteServer("127.0.0.1:%d" % free_port())
    return run


def test_the_harness_runs_exactly_the_registered_checks(attached_run, messages, monkeypatch):
    ran: list[str] = []
    fakes = {c.name: c for c in (
        Check("first", 1, _recording("first", CheckStatus.PASS, ran), gate=True),
        Check("second", 2, _recording("second", CheckStatus.SKIP, ran)),
        Check("third", 3, _recording("third", CheckStatus.PASS, ran)),
        Check("last", 4, _recording("last", CheckStatus.WARN, ran), final=True, needs_own_server=True,
              why="only on a server the run started"),
    )}
    monkeypatch.setattr(registry, "_REGISTRY", fakes)
    ctx = CheckContext(SimpleNamespace(name="m"), session=None)
    results, ready = attached_run._checks(ctx, registry.registered(final=False))
    assert ready and ran == ["first", "second", "third"]
    assert [(r.name, r.status) for r in results] == [("first", "pass"), ("second", "skip"), ("third", "pass")]
    assert messages == ["m: first", "m: second", "m: third"]
    # a check that needs a server the run started is not run on an attached one
    final, _ = attached_run._checks(ctx, registry.registered(final=True))
    assert final == [CheckResult("last", CheckStatus.SKIP, "only on a server the run started")]
    assert ran == ["first", "second", "third"]


def test_a_failed_gate_skips_the_rest_and_a_dead_server_stops_the_run(attached_run):
    ran: list[str] = []
    gate = Check("gate", 1, _recording("gate", CheckStatus.FAIL, ran), gate=True)
    after = Check("after", 2, _recording("after", CheckStatus.PASS, ran))
    ctx = CheckContext(SimpleNamespace(name="m"), session=None)
    results, ready = attached_run._checks(ctx, (gate, after))
    # nothing answers at the address: the failure is followed by the liveness probe, which finds it gone
    assert not ready and ran == ["gate"] and [r.name for r in results] == ["gate"]
    assert attached_run.dead.startswith("tritonserver stopped answering during check 'gate' of m (127.0.0.1:")
    assert attached_run._checks(ctx, (after,)) == ([], False)  # after a death nothing runs


def test_run_check_turns_exceptions_into_failures(affine):
    def boom(ctx: CheckContext) -> CheckResult:
        raise ConnectionRefusedError("[Errno 111] Connection refused")

    result = registry.run_check(Check("ready", 10, boom), CheckContext(affine, session=None))
    assert result.status == CheckStatus.FAIL
    assert result.detail == "ConnectionRefusedError: [Errno 111] Connection refused"
