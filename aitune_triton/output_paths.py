"""Checks that an output path the user gave (``validate --report``, ``tune --report``,
``tune --export-model-analyzer``) can be written, made before any server starts.

A path under a file (``/dev/null/x``) or under a read-only directory otherwise surfaces minutes
later as an ``OSError`` from deep inside a run, after the server has started and the measurements
are done. These checks create nothing, so a run refused for another reason leaves no empty
directory behind. Standard library only: the option dataclasses import it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from aitune_triton.errors import UserError


def _nearest_existing(path: Path) -> Path:
    """``path`` itself or its closest ancestor that exists (``.`` or ``/`` at worst)."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _creatable_under(path: Path) -> str | None:
    """Why ``path`` (which does not exist) cannot be created, or None when it can."""
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        return "%s is not a directory" % base
    if not os.access(base, os.W_OK | os.X_OK):
        return "%s is not writable" % base
    return None


def check_output_dir(path: Path | str, what: str) -> None:
    """UserError naming ``path`` unless it is a writable directory or can be created as one;
    ``what`` says what goes there ("the validation report")."""
    path = Path(path)
    if path.exists():
        why = None if path.is_dir() else "it is a file, not a directory"
        if why is None and not os.access(path, os.W_OK | os.X_OK):
            why = "it is not writable"
    else:
        why = _creatable_under(path)
    if why:
        raise UserError("cannot write %s to %s: %s; pass a directory that can be created or written"
                        % (what, path, why))


def check_output_file(path: Path | str, what: str, create_parents: bool = True) -> None:
    """UserError naming ``path`` unless a file can be written there: ``path`` is not a directory,
    and its directory exists (or, with ``create_parents``, can be created, as the writer will)."""
    path = Path(path)
    if path.is_dir():
        why: str | None = "it is a directory"
    elif path.exists():
        why = None if os.access(path, os.W_OK) else "it is not writable"
    elif not create_parents and not path.parent.exists():
        why = "No such file or directory (%s)" % path.parent
    else:
        why = _creatable_under(path)
    if why:
        raise UserError("cannot write %s to %s: %s; pass a file path in a directory that can be created or written"
                        % (what, path, why))


def inside_repository(path: Path | str, repo: Path | str) -> bool:
    """Whether ``path`` (existing or not) is inside the local model repository ``repo``."""
    repo_real = Path(repo).resolve()
    return Path(path).resolve() == repo_real or Path(path).resolve().is_relative_to(repo_real)


def check_outside_repository(path: Path | str, repo: Path | str, what: str) -> None:
    """UserError unless ``path`` is outside ``repo``: files written into a model directory are
    artifacts the integrity check refuses (or models Triton tries to load)."""
    if Path(repo).is_dir() and inside_repository(path, repo):
        raise UserError("cannot write %s to %s: it is inside the model repository %s, where it would change the "
                        "models; pass a path outside it" % (what, path, repo))


_RESOURCE = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
             errno.EROFS: "read-only filesystem", errno.EACCES: "permission denied", errno.EPERM: "permission denied",
             errno.EMFILE: "too many open files for this process (raise `ulimit -n`)",
             errno.ENFILE: "too many open files on the system"}


# the OSErrors that mean a resource ran out or is read-only, not a bug
RESOURCE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EMFILE, errno.ENFILE})


def resource_error(exc: OSError, what: str, path: Path | str) -> UserError:
    """One line for an OSError while writing ``what`` at ``path``, naming the resource that ran out
    (disk space, quota, a read-only filesystem, file descriptors)."""
    why = _RESOURCE.get(exc.errno or 0, exc.strerror or str(exc))
    return UserError("cannot write %s to %s: %s" % (what, path, why))
