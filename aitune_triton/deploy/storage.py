"""Push a local model repository to S3-compatible object storage atomically.

Every file goes under a new version prefix ``<prefix>/versions/<id>/`` that no server reads yet;
only after the upload is complete and listed back does ``<prefix>/current.json`` (the pointer)
switch to it. A push that fails half-way deletes what it uploaded and leaves the pointer naming
the previous version. Reading a repository back (the ``s3://`` syntax, the pointer, the local
view) is ``triton/object_storage.py``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

from aitune_triton.errors import UserError
from aitune_triton.triton.object_storage import (POINTER, VERSIONS, Progress, S3Location, client, list_objects,
                                                  read_pointer, storage_errors, storage_failure)
from aitune_triton.version import __version__

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PushResult:
    """``repository`` is the versioned URL to give Triton; ``pointer`` the object naming it."""

    version: str
    repository: S3Location
    pointer: S3Location
    files: int
    bytes: int
    previous: str | None

    def to_dict(self) -> dict:
        return {"version": self.version, "repository": self.repository.url, "pointer": self.pointer.url,
                "files": self.files, "bytes": self.bytes, "previous": self.previous}


def repository_files(repo: Path) -> dict[str, Path]:
    """Relative POSIX path -> file for everything Triton may read: hidden entries (locks, staging
    dirs) and the Python stub's ``__pycache__`` are left out; a symlink must stay inside the repository."""
    repo = Path(repo)
    if not repo.is_dir():
        raise UserError("model repository %s does not exist (or is not a directory)" % repo)
    root = repo.resolve()
    files = {}
    for path in sorted(repo.rglob("*")):
        rel = path.relative_to(repo)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts) or not path.is_file():
            continue
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            raise UserError("%s links outside the repository (%s); copy the file in instead" % (path, path.resolve()))
        files[rel.as_posix()] = path
    models = {rel.split("/")[0] for rel in files if rel.count("/") >= 1 and rel.endswith("/config.pbtxt")
              and rel.count("/") == 1}
    if not models:
        raise UserError("%s holds no model directory (no */config.pbtxt); generate one first" % repo)
    return files


def _version_id(files: dict[str, Path]) -> str:
    digest = hashlib.sha256()
    for rel, path in files.items():
        digest.update(rel.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    # time (sortable) + content + a random tail: two pushes of the same files in one second stay apart
    return "%s-%s-%s" % (stamp, digest.hexdigest()[:8], secrets.token_hex(3))


def push(repo: Path, base: S3Location, progress: Progress | None = None) -> PushResult:
    """Upload ``repo`` under ``base/versions/<id>/``, check it, then switch ``base/current.json``."""
    from aitune_triton.triton.repository import reading_lock

    say = progress or (lambda msg: None)
    repo = Path(repo)
    s3 = client(base)
    with reading_lock(repo):  # no generate/tune rewrites a model while it is being read
        files = repository_files(repo)
        version = _version_id(files)
        target = base.child(VERSIONS, version)
        try:
            previous = read_pointer(s3, base)
            s3.head_bucket(Bucket=base.bucket)
        except storage_errors() as exc:
            raise storage_failure("reaching", base, exc) from None
        uploaded: list[str] = []
        try:
            for i, (rel, path) in enumerate(files.items(), 1):
                say("uploading %d/%d: %s" % (i, len(files), rel))
                s3.upload_file(str(path), base.bucket, target.key(rel))
                uploaded.append(target.key(rel))
            listed = list_objects(s3, target)
            wanted = {target.key(rel): path.stat().st_size for rel, path in files.items()}
            if listed != wanted:
                missing = sorted(set(wanted) - set(listed)) or sorted(k for k in wanted if listed.get(k) != wanted[k])
                raise UserError("the upload to %s does not list back as sent (first difference: %s)"
                                % (target.url, missing[0] if missing else "extra objects"))
            size, previous_version = sum(wanted.values()), previous.get("version") if previous else None
            record = {"version": version, "repository": target.url, "files": len(files),
                      "bytes": size, "previous": previous_version,
                      "pushed": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      "tool_version": __version__}
            s3.put_object(Bucket=base.bucket, Key=base.key(POINTER), Body=json.dumps(record, indent=2).encode(),
                          ContentType="application/json")
        except BaseException as exc:
            _remove_keys(s3, base.bucket, uploaded)
            if isinstance(exc, storage_errors()):
                raise storage_failure("uploading to", target, exc) from None
            raise
    log.info("pushed %s as %s (%d files)", repo, target.url, len(files))
    return PushResult(version, target, base.child(POINTER), len(files), size, previous_version)


def _remove_keys(s3, bucket: str, keys: list[str]) -> None:
    """Best effort: a failed push should not leave a half version behind (no pointer names it anyway)."""
    for start in range(0, len(keys), 1000):
        batch = [{"Key": k} for k in keys[start:start + 1000]]
        try:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        except Exception as exc:  # noqa: BLE001 - the original failure is what the user must see
            log.warning("could not remove %d objects of the failed push: %s", len(batch), exc)


