"""One error tree; every error the CLI can print derives from ``AituneError``.

Exception tree::

    AituneError                 root: message + optional log_path + details; exit code 1
    ├── UserError               a mistake in the user's input (bad file, bad option): exit 2, one line
    │   └── StubIncompatible    the Python stub would mis-serve a model in this environment (numpy 2 + BYTES)
    ├── ModelError              the model, or a stage acting on it, failed (export mismatch, NaN): exit 1
    │   └── CandidateFailed     one fallback format could not be built or did not match eager
    ├── ServerError             Triton failed to start, died or refused a request
    ├── PerfError               perf_analyzer failed for a reason other than stability
    └── ToolMissing             a required external component is not installed: exit 2

The CLI prints the first line of the message, then the log path and the details (each on its own
line), for every error in the tree. Anything outside the tree is a bug and shows a traceback only
with ``--debug``; without it the CLI prints one line naming the exception type.
"""

from __future__ import annotations


class AituneError(Exception):
    """Root of the tree. ``log_path`` points at a file with the full output of the failing step;
    ``details`` is extra text (a table, a tool's output) printed below the message."""

    exit_code = 1

    def __init__(self, message: str = "", log_path: "str | None" = None, details: "str | None" = None):
        super().__init__(message)
        self.message = message
        self.log_path = None if log_path is None else str(log_path)
        self.details = details


class UserError(AituneError):
    """A mistake in the user's input; the message names the problem and the fix."""

    exit_code = 2


class StubIncompatible(UserError):
    """A launched server's Python-backend stub would corrupt a model's tensors with the packages of
    this environment (numpy 2 under a Triton release older than 2.52): refused before launch, with
    the fixes in the one line."""


class ModelError(AituneError):
    """The model (or a stage acting on it) failed; the message says which stage and why."""

    exit_code = 1


class CandidateFailed(ModelError):
    """One format could not be built or did not match eager; the message is the recorded reason."""


class ServerError(AituneError):
    """Triton failed to start, died, or refused a request; the message quotes Triton itself."""

    exit_code = 1


class PerfError(AituneError):
    """perf_analyzer failed for a reason other than stability; ``partial`` holds points already measured."""

    exit_code = 1

    def __init__(self, message: str, partial: object = None, log_path: "str | None" = None,
                 details: "str | None" = None):
        super().__init__(message, log_path=log_path, details=details)
        self.partial = partial


class ToolMissing(AituneError):
    """A required external component is not installed; the message says how to get it."""

    exit_code = 2
