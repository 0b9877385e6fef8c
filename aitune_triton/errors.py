"""Error types that map to the CLI's exit codes.

A ``UserError`` is something the user can fix (bad file, bad option): exit 2 with one line.
A ``ModelError`` is the model itself failing (export mismatch, NaN outputs): exit 1 with one line.
Anything else is a bug and shows a traceback.
"""

from __future__ import annotations


class AituneError(Exception):
    exit_code = 1


class UserError(AituneError):
    """A mistake in the user's input; the message names the problem and the fix."""

    exit_code = 2


class ModelError(AituneError):
    """The model (or a stage acting on it) failed; the message says which stage and why."""

    exit_code = 1
