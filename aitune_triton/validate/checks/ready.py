"""``ready``: the server says the model is ready. The gate: when it fails, nothing else is asked."""

from __future__ import annotations

import time

from aitune_triton.validate.checks.registry import Check, register
from aitune_triton.validate.result import CheckResult, CheckStatus, finished
from aitune_triton.validate.checks.target import ModelTarget, Session


def check_ready(target: ModelTarget, session: Session) -> CheckResult:
    t0 = time.monotonic()
    if session.http.is_model_ready(target.name):
        return finished("ready", CheckStatus.PASS, "model %s is ready" % target.name, t0)
    return finished("ready", CheckStatus.FAIL, "model %s is not ready on the server" % target.name, t0)


register(Check("ready", 10, lambda ctx: check_ready(ctx.target, ctx.session), gate=True,
               targets=("model", "pipeline")))
