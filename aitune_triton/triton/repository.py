"""Atomic writes of model directories into a Triton model repository.

Model directories are built in a hidden staging dir *inside* the repository and renamed into
place only when complete, so the rename never crosses filesystems (a repository that is a mount
point, a Docker volume or a symlink to another disk works) and nothing is left beside it. A lock
file inside the repository (opened without following symlinks, so the same directory reached
through a symlink is the same lock) serialises concurrent ``generate`` runs and is removed on
release. A run that was killed leaves at most its staging dir, which the next run removes. A commit
of several models is all or none: one that fails part-way is rolled back before the staging dir
(which holds the replaced models until then) is removed.

Triton 2.51 does not skip hidden directories: a server that polls the repository while a staging
dir exists logs ``Poll failed for model directory '.aitune-staging-…'`` for it and serves the
other models; ``serve`` loads the model directories by name, so it never sees one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterator

from aitune_triton import procs
from aitune_triton.errors import UserError
from aitune_triton.triton.model_name import validate_model_name
from aitune_triton.waiting import poll

log = logging.getLogger(__name__)

STAGING_PREFIX = ".aitune-staging-"
UNRESTORED_PREFIX = ".aitune-unrestored-"  # a failed rollback's backups: never swept automatically
LOCK_NAME = ".aitune.lock"
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# characters that mean nothing to a POSIX shell in an unquoted word (plus any non-ASCII letter/digit)
_SHELL_SAFE = frozenset("_-./+,:@%=")


def shell_unsafe_chars(text: str) -> list[str]:
    """The characters of ``text`` a shell would interpret if the text were pasted unquoted."""
    return sorted({c for c in text if not (c.isalnum() or c in _SHELL_SAFE)}, key=text.index)


def check_repository_path(repo: Path) -> Path:
    repo = Path(repo).absolute()
    if repo.exists() and not repo.is_dir():
        raise UserError("%s is a file, not a directory; pass --out a directory for the model repository" % repo)
    if repo.is_symlink() and not repo.exists():
        raise UserError("%s is a symlink to %s, which does not exist; create the target or pass another --out"
                        % (repo, os.readlink(repo)))
    parent = repo.parent
    if not parent.exists():
        raise UserError("%s does not exist; create it or pass another --out" % parent)
    probe = repo if repo.exists() else parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError("%s is not writable; pass --out a directory you can write to" % probe)
    bad = shell_unsafe_chars(str(repo.resolve()))
    if bad:
        log.warning("%s contains shell metacharacters (%s): Triton's Python backend passes the model path "
                    "unquoted to a shell, so `validate` and `serve` will refuse it; prefer a plain path",
                    repo, " ".join(repr(c) for c in bad))
    return repo


def _open_lock(lock_path: Path) -> int:
    try:
        return os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError("lock file %s is a symlink; remove it (aitune-triton never creates one)"
                            % lock_path) from None
        raise UserError("cannot create lock file %s: %s" % (lock_path, exc.strerror)) from None


def _try_lock(fd: int) -> bool:
    """Take the exclusive lock without blocking: False while another run holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        return False


@contextlib.contextmanager
def repository_lock(repo: Path, wait_s: float = 0.0) -> Iterator[None]:
    """An exclusive lock on the repository directory (which must exist), keyed on its real path.

    The lock file is unlinked on release; a run that opened it just before that re-opens the new
    one (the inode check), so two runs never hold locks on different files.
    """
    lock_path = Path(repo).resolve() / LOCK_NAME
    deadline = time.monotonic() + wait_s
    while True:
        fd = _open_lock(lock_path)
        try:
            if not poll(functools.partial(_try_lock, fd), max(0.0, deadline - time.monotonic()), 0.2):
                raise UserError("another aitune-triton run is writing to %s; wait for it to finish" % repo)
            held = os.fstat(fd)
            try:
                now = os.lstat(lock_path)
            except FileNotFoundError:
                now = None
        except BaseException:
            os.close(fd)
            raise
        if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            break
        os.close(fd)  # the previous holder removed this file while we waited: lock the new one
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        os.close(fd)


@contextlib.contextmanager
def reading_lock(repo: Path) -> Iterator[None]:
    """For a run that only reads the repository (``push``): the repository lock where one can be
    taken, none where nobody can write (a read-only filesystem or directory: no ``generate`` or
    ``tune`` can change it, and the lock file could not be created anyway)."""
    real = Path(repo).resolve()
    if not os.access(real, os.W_OK | os.X_OK):
        log.info("%s is read-only: reading it without the repository lock", repo)
        yield
        return
    with repository_lock(real):
        yield


def _remove_stale_staging(repo: Path) -> None:
    """Staging dirs present while we hold the lock belong to killed runs (exact prefix, no glob)."""
    for entry in repo.iterdir():
        if entry.name.startswith(STAGING_PREFIX) and entry.is_dir() and not entry.is_symlink():
            log.info("removing staging dir %s left by an interrupted run", entry)
            shutil.rmtree(entry, ignore_errors=True)


class StagedModels:
    """Model directories being written; ``dir(name)`` gives the staging path for each."""

    def __init__(self, repo: Path, root: Path) -> None:
        self.repo = repo
        self.root = root
        self.names: list[str] = []
        self.keep = False  # a failed rollback left the only copy of a replaced model in root

    def dir(self, name: str) -> Path:
        validate_model_name(name)
        path = self.root / name
        if name not in self.names:
            path.mkdir()
            self.names.append(name)
        return path

    def discard(self, name: str) -> None:
        """Drop a staged model dir again (a model that turned out not to be writable): nothing of it
        is committed."""
        if name in self.names:
            shutil.rmtree(self.root / name, ignore_errors=True)
            self.names.remove(name)


def _remove_replaced(backup: Path, name: str) -> None:
    failures: list[str] = []
    shutil.rmtree(backup, onerror=lambda fn, path, info: failures.append("%s: %s" % (path, info[1])))
    if failures:
        log.warning("the replaced model %s could not be deleted completely (%s%s); it is left in %s and the "
                    "next generate into this repository removes it", name, failures[0],
                    " and %d more" % (len(failures) - 1) if len(failures) > 1 else "", backup.parent)


def _commit(staged: StagedModels, force: bool) -> None:
    """Move every staged model into the repository, all or none.

    Every target is checked here, under the lock, before anything is renamed: the up-front check in
    ``stage_models`` runs before the lock, so a model may have appeared since. A rename that fails
    part-way is undone in reverse (new dirs back into staging, old dirs back into place), so the
    caller's cleanup never deletes a backup of a model that is no longer in the repository.
    """
    repo = staged.repo
    check_new_models(repo, staged.names, force)
    done: list[tuple[str, Path | None, bool]] = []  # (name, its backup, whether the new dir is in place)
    try:
        for name in staged.names:
            target = repo / name
            backup = None
            if target.exists() or target.is_symlink():
                backup = staged.root / (".old-" + name)
                os.rename(target, backup)
            done.append((name, backup, False))
            os.rename(staged.root / name, target)
            done[-1] = (name, backup, True)
    except OSError as exc:
        _roll_back(staged, done)
        if exc.errno in _DISK_FULL:
            raise  # stage_models names the full filesystem
        raise UserError("cannot move model %s into %s (%s: %s); the repository is unchanged"
                        % (name, repo, exc.filename, exc.strerror)) from exc
    except BaseException:
        _roll_back(staged, done)
        raise
    for name, backup, _ in done:
        if backup is not None:
            _remove_replaced(backup, name)


def _roll_back(staged: StagedModels, done: list[tuple[str, Path | None, bool]]) -> None:
    """Undo a partial commit, newest first, going on past a step that fails so that every model that
    can be restored is. Should any step fail, the staging dir (then holding the only copy of a
    replaced model) is renamed to a name the stale-staging sweep leaves alone, and the user is told
    where it is."""
    repo = staged.repo
    failed: OSError | None = None
    for name, backup, placed in reversed(done):
        try:
            if placed:
                os.rename(repo / name, staged.root / name)
            if backup is not None:
                os.rename(backup, repo / name)
        except OSError as exc:
            failed = failed or exc
    if failed is None:
        return
    kept = repo / (UNRESTORED_PREFIX + staged.root.name[len(STAGING_PREFIX):])
    with contextlib.suppress(OSError):
        os.rename(staged.root, kept)
        staged.root = kept
    staged.keep = True
    raise UserError("writing the models into %s failed and could not be undone (%s: %s); the previous versions "
                    "of the replaced models are in %s: move them back by hand"
                    % (repo, failed.filename, failed.strerror, staged.root)) from failed


def _disk_full(exc: BaseException, where: Path) -> bool:
    """An error caused by a full filesystem: ENOSPC/EDQUOT itself, or a library's error (torch
    raises RuntimeError) while the filesystem has (almost) no space left."""
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        return True
    try:
        st = os.statvfs(where)
    except OSError:
        return False
    return isinstance(exc, Exception) and st.f_bavail * st.f_frsize < 64 * 1024


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path) and path.parent != path:
        path = path.parent
    return path


def check_new_models(repo: Path, names: list[str], force: bool = False) -> None:
    """Refuse, unless ``force``, to write a model over one in ``repo`` (a dangling symlink
    included): ``generate`` calls it as soon as the names are known, before the model is probed
    and measured or a checkpoint's weights are loaded, and ``stage_models`` again before staging."""
    repo = check_repository_path(repo)
    for name in names:
        validate_model_name(name)
        target = repo / name
        if target.is_symlink() and not target.exists() and not force:
            raise UserError("%s is a dangling symlink (to %s); remove it or pass --force to replace it"
                            % (target, os.readlink(target)))
        if target.exists() and not force:
            raise UserError("model %s already exists in %s; pass --force to replace it" % (name, repo))


@contextlib.contextmanager
def stage_models(repo: Path, names: list[str], force: bool = False) -> Iterator[StagedModels]:
    """Yield a staging area; on normal exit move every staged model dir into ``repo``, all or none.

    Existing models (dangling symlinks included) are refused up front, before any work, unless
    ``force``, and again under the lock just before the commit; other models in the repository are
    never touched. A commit that fails part-way is rolled back, so the repository is as it was. On
    any exception (Ctrl-C included) the staging area is removed, and a repository this call created
    is removed again.
    """
    repo = check_repository_path(repo)
    check_new_models(repo, names, force)
    created = not repo.exists()
    try:
        repo.mkdir(exist_ok=True)
    except OSError as exc:
        raise UserError("cannot create %s: %s" % (repo, exc.strerror)) from None
    real = repo.resolve()
    committed = False
    # armed before the lock file or the staging dir exist, so a SIGKILL at any point (which leaves no
    # chance to clean up) is followed by the watchdog removing the staging dir and releasing the lock
    root = real / ("%s%s" % (STAGING_PREFIX, uuid.uuid4().hex[:12]))
    watchdog = procs.Watchdog()
    watchdog.arm(remove=(root,), lock_file=real / LOCK_NAME)
    try:
        with repository_lock(real):
            _remove_stale_staging(real)
            try:
                root.mkdir(mode=0o755)
            except OSError as exc:
                raise UserError("cannot write into %s: %s" % (repo, exc.strerror)) from None
            staged = StagedModels(real, root)
            try:
                yield staged
                _commit(staged, force)
                committed = True
            except Exception as exc:
                if not staged.keep and _disk_full(exc, root):
                    free = shutil.disk_usage(root).free
                    raise UserError("no space left on the filesystem of %s (%s, %d KiB free); free some space or "
                                    "pass --out on another filesystem; the repository is unchanged"
                                    % (repo, _mount_point(real), free // 1024)) from exc
                raise
            finally:
                # only now: a commit that failed has been rolled back, so no backup here is still needed
                if not staged.keep:
                    shutil.rmtree(root, ignore_errors=True)
    finally:
        watchdog.disarm()
        if created and not committed:
            with contextlib.suppress(OSError):
                repo.rmdir()
