"""The checks a validation run performs, in order, with what each needs from the run.

Each check module registers its checks at import (``aitune_triton.validate.checks`` imports
them all); the harness runs ``registered()`` and reads a check's needs from its entry rather
than from its name:

* ``gate``: when it fails the model is not servable, so the checks after it are skipped;
* ``needs_grpc``: skipped where the server has no gRPC endpoint;
* ``final``: run once per run, on its last model and after perf, because it may bring the
  server down (nothing can follow it);
* ``needs_own_server``: only sent to a server the run started; elsewhere skipped with ``why``.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from typing import Callable

from aitune_triton.validate.result import CheckResult, CheckStatus
from aitune_triton.validate.checks.target import ModelTarget, Session
from aitune_triton.validate.checks.wire import short

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckContext:
    """What a check is run with: the model's claims, clients to the server, and the run's settings."""

    target: ModelTarget
    session: Session
    batching_in_flight: int = 16


@dataclass(frozen=True)
class Check:
    """A registered check; ``order`` places it in a run (lower first)."""

    name: str
    order: int
    run: Callable[[CheckContext], CheckResult]
    gate: bool = False
    needs_grpc: bool = False
    final: bool = False
    needs_own_server: bool = False
    why: str = ""  # the skip detail where needs_own_server is not met
    # the models it applies to: "model" (a served model's tensors), "pipeline" (a raw-data ensemble)
    targets: tuple[str, ...] = ("model",)

    def __post_init__(self) -> None:
        if self.needs_own_server and not self.why:
            raise ValueError("check %r needs its own server but gives no reason to show when skipped" % self.name)


_REGISTRY: dict[str, Check] = {}


def register(check: Check) -> Check:
    """Add ``check`` to the run; names and orders are unique."""
    if check.name in _REGISTRY:
        raise ValueError("check %r is registered twice" % check.name)
    clash = next((c.name for c in _REGISTRY.values() if c.order == check.order), None)
    if clash:
        raise ValueError("checks %r and %r share order %d" % (clash, check.name, check.order))
    _REGISTRY[check.name] = check
    return check


def registered(final: bool | None = None, target: str | None = None) -> tuple[Check, ...]:
    """The registered checks in run order; ``final`` selects the per-model (False) or the final (True)
    ones, ``target`` those applying to that kind of model (``ModelTarget.kind``)."""
    checks = sorted(_REGISTRY.values(), key=lambda c: c.order)
    return tuple(c for c in checks if (final is None or c.final == final) and (target is None or target in c.targets))


def run_check(check: Check, ctx: CheckContext) -> CheckResult:
    """Run one check; an exception (a refused connection, a timeout, a bug) becomes a failure."""
    t0 = time.monotonic()
    if check.needs_grpc and ctx.session.grpc is None:
        return CheckResult(check.name, CheckStatus.SKIP, "no gRPC endpoint", 0.0)
    try:
        return check.run(ctx)
    except Exception as exc:  # noqa: BLE001 - reported, with the traceback in the debug log
        log.debug("check %s of %s raised:\n%s", check.name, ctx.target.name, traceback.format_exc())
        return CheckResult(check.name, CheckStatus.FAIL, "%s: %s" % (type(exc).__name__, short(exc, 400)),
                           time.monotonic() - t0)
