"""Atomic writes of model directories into a Triton model repository.

Model directories are built in a staging dir beside the repository (never inside it, where
Triton would try to load it) and renamed into place only when complete. A lock file beside the
repository serialises concurrent ``generate`` runs; a run that was killed leaves at most a
staging dir beside the repository, which the next run removes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

from aitune_triton.config import validate_model_name
from aitune_triton.errors import UserError

log = logging.getLogger(__name__)

STAGING_PREFIX = ".aitune-staging-"


def _side_path(repo: Path, suffix: str) -> Path:
    return repo.parent / (".%s%s" % (repo.name, suffix))


def check_repository_path(repo: Path) -> Path:
    repo = Path(repo).absolute()
    if repo.exists() and not repo.is_dir():
        raise UserError("%s is a file, not a directory; pass --out a directory for the model repository" % repo)
    parent = repo.parent
    if not parent.exists():
        raise UserError("%s does not exist; create it or pass another --out" % parent)
    probe = repo if repo.exists() else parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError("%s is not writable; pass --out a directory you can write to" % probe)
    return repo


@contextlib.contextmanager
def repository_lock(repo: Path, wait_s: float = 0.0) -> Iterator[None]:
    """An exclusive lock on the repository (a lock file beside it, so the repository itself stays untouched)."""
    lock_path = _side_path(repo, ".aitune.lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError("cannot create lock file %s: %s" % (lock_path, exc.strerror)) from None
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise UserError("another aitune-triton run is writing to %s; wait for it to finish" % repo) from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)


def _remove_stale_staging(repo: Path) -> None:
    for stale in repo.parent.glob(".%s%s*" % (repo.name, STAGING_PREFIX)):
        log.info("removing staging dir %s left by an interrupted run", stale)
        shutil.rmtree(stale, ignore_errors=True)


class StagedModels:
    """Model directories being written; ``dir(name)`` gives the staging path for each."""

    def __init__(self, repo: Path, root: Path) -> None:
        self.repo = repo
        self.root = root
        self.names: list[str] = []

    def dir(self, name: str) -> Path:
        validate_model_name(name)
        path = self.root / name
        if name not in self.names:
            path.mkdir()
            self.names.append(name)
        return path

    def resolve(self, path: Path) -> Path:
        """Where a staged path will live after commit (for messages)."""
        return self.repo / Path(path).relative_to(self.root)


def _commit(staged: StagedModels, force: bool) -> None:
    repo = staged.repo
    repo.mkdir(exist_ok=True)
    backups = []
    for name in staged.names:
        target = repo / name
        if target.exists() or target.is_symlink():
            if not force:
                raise UserError("model %s already exists in %s; pass --force to replace it" % (name, repo))
            backup = staged.root / (".old-" + name)
            os.rename(target, backup)
            backups.append(backup)
        os.rename(staged.root / name, target)
    for backup in backups:
        shutil.rmtree(backup, ignore_errors=True)


@contextlib.contextmanager
def stage_models(repo: Path, names: list[str], force: bool = False) -> Iterator[StagedModels]:
    """Yield a staging area; on normal exit move every staged model dir into ``repo`` at once.

    Existing models are refused up front (before any work) unless ``force``; other models in the
    repository are never touched. On any exception (Ctrl-C included) the staging area is removed.
    """
    repo = check_repository_path(repo)
    for name in names:
        validate_model_name(name)
        if (repo / name).exists() and not force:
            raise UserError("model %s already exists in %s; pass --force to replace it" % (name, repo))
    with repository_lock(repo):
        _remove_stale_staging(repo)
        try:
            root = Path(tempfile.mkdtemp(prefix=".%s%s" % (repo.name, STAGING_PREFIX), dir=repo.parent))
        except OSError as exc:
            raise UserError("cannot write beside %s: %s" % (repo, exc.strerror)) from None
        staged = StagedModels(repo, root)
        try:
            yield staged
            _commit(staged, force)
        finally:
            shutil.rmtree(root, ignore_errors=True)


def replace_file_atomically(path: Path, text: str) -> None:
    """Write ``path`` via a temp file in the same dir and ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the server may run as another user
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
