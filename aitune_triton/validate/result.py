"""What one check says: a ``CheckStatus`` and a one-line detail naming what was seen.

Standard library only, outside the ``checks`` package, so the report can read and render an old
``report.json`` without importing the checks' dependencies (numpy, protobuf, tritonclient, torch).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum


class CheckStatus(str, Enum):
    """A check's verdict; the values are what ``report.json`` holds."""

    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"
    WARN = "warn"  # a problem of the server, not of the model: reported, does not fail the run

    def __str__(self) -> str:  # "%s" and f-strings give "pass", as the report and the console show it
        return self.value


@dataclass(frozen=True)
class CheckResult:
    """One verdict: ``detail`` says what was seen, naming the tensor."""

    name: str
    status: CheckStatus
    detail: str = ""
    seconds: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", CheckStatus(self.status))

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status.value, "detail": self.detail,
                "seconds": round(self.seconds, 3)}

    @classmethod
    def from_dict(cls, d: dict) -> CheckResult:
        return cls(d["name"], CheckStatus(d["status"]), d.get("detail", ""), float(d.get("seconds", 0.0)))


def finished(name: str, status: CheckStatus, detail: str, t0: float) -> CheckResult:
    """A result timed from ``t0`` (``time.monotonic()`` when the check began)."""
    return CheckResult(name, status, detail, time.monotonic() - t0)
