"""A model repository in S3-compatible object storage as the tool and Triton read it: parse
Triton's ``s3://`` syntax, follow the pointer ``push`` writes, and give the tool a local view.

``open_repository`` is the one opener every command uses for its REPO argument: a local path as it
is, an ``s3://`` URL resolved through its pointer and downloaded (only the files the tool reads, or
everything). Writing a repository to object storage (``push``) is ``deploy/storage.py``.

Triton's syntax (server docs, model_repository.md, "S3"): ``s3://bucket/path`` for AWS, and
``s3://host:port/bucket/path`` for another S3 server, spoken over HTTP unless the host is written
``https://host:port``. Triton itself cannot follow a pointer, so the versioned URL is what servers
get.

Credentials come only from the standard environment variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, optional ``AWS_SESSION_TOKEN``, ``AWS_DEFAULT_REGION``), never from
``~/.aws/credentials`` or instance metadata, and are never written or logged: the launched
tritonserver inherits them from the environment, and botocore's debug logging (which prints request
headers) stays off even with ``--debug``. botocore still reads ``~/.aws/config`` (the profile
``AWS_PROFILE`` names, which must then exist) for settings other than the credentials and region.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from aitune_triton.errors import UserError
from aitune_triton.triton.launch import SCHEME, is_s3_url

log = logging.getLogger(__name__)
for _noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
    # their DEBUG output includes signed request headers; never let --debug turn it on
    logging.getLogger(_noisy).setLevel(logging.WARNING)

POINTER = "current.json"
VERSIONS = "versions"
# the files the tool itself reads from a model directory (validate: manifest, config, reference)
TOOL_FILES = ("manifest.json", "config.pbtxt", "reference.npz")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_HOST_PORT = re.compile(r"^(?P<host>[A-Za-z0-9.-]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})$")
_SEGMENT = re.compile(r"^[A-Za-z0-9._=+@-]+$")
_VERSION_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}(-[0-9a-f]{6})?$")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix, on AWS (``endpoint`` None) or on another S3 server ``host:port``."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    https: bool = False

    def __post_init__(self) -> None:
        if not _BUCKET.fullmatch(self.bucket) or ".." in self.bucket:
            raise UserError("%r is not a valid S3 bucket name (3-63 characters: a-z, 0-9, '.', '-')" % self.bucket)
        if self.endpoint is not None:
            match = _HOST_PORT.fullmatch(self.endpoint)
            if not match or not 0 < int(match.group("port")) < 65536:
                raise UserError("%r is not host:port for an S3 endpoint" % self.endpoint)
        for part in self.prefix.split("/") if self.prefix else ():
            if not _SEGMENT.fullmatch(part) or part in (".", ".."):
                raise UserError("S3 prefix %r has an empty, '.'/'..' or unusual segment %r; use letters, digits "
                                "and . _ - = + @ between single slashes" % (self.prefix, part))

    @classmethod
    def parse(cls, url: str) -> "S3Location":
        """``s3://[http(s)://host:port/]bucket[/prefix]`` as Triton reads it."""
        if not is_s3_url(url):
            raise UserError("%r is not an s3:// URL (s3://bucket/prefix or s3://host:port/bucket/prefix)" % (url,))
        rest = url[len(SCHEME):]
        https = rest.startswith("https://")
        rest = re.sub(r"^https?://", "", rest).strip("/")
        parts = rest.split("/") if rest else []
        endpoint = None
        if parts and _HOST_PORT.fullmatch(parts[0]):
            endpoint = parts.pop(0)
        elif https:
            raise UserError("%r: https:// must be followed by host:port (s3://https://host:port/bucket/prefix)" % url)
        if not parts:
            raise UserError("%r names no bucket (s3://[host:port/]bucket/prefix)" % url)
        if any(not p for p in parts):
            raise UserError("%r has an empty path segment (a double slash)" % url)
        return cls(parts[0], "/".join(parts[1:]), endpoint, https)

    @property
    def url(self) -> str:
        """Triton's spelling of this location."""
        host = ""
        if self.endpoint:
            host = ("https://" if self.https else "") + self.endpoint + "/"
        return SCHEME + host + "/".join(p for p in (self.bucket, self.prefix) if p)

    @property
    def endpoint_url(self) -> str | None:
        return None if self.endpoint is None else "%s://%s" % ("https" if self.https else "http", self.endpoint)

    def child(self, *parts: str) -> "S3Location":
        return S3Location(self.bucket, "/".join(p for p in (self.prefix, *parts) if p), self.endpoint, self.https)

    def key(self, relative: str) -> str:
        return "/".join(p for p in (self.prefix, relative) if p)

    def __str__(self) -> str:
        return self.url


# ---------------------------------------------------------------- the client


def _env_credentials() -> dict[str, str]:
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not key or not secret:
        raise UserError("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_DEFAULT_REGION) in the environment; "
                        "credentials are read only from there, for this tool and for tritonserver")
    creds = {"aws_access_key_id": key, "aws_secret_access_key": secret}
    if os.environ.get("AWS_SESSION_TOKEN"):
        creds["aws_session_token"] = os.environ["AWS_SESSION_TOKEN"]
    return creds


def client(location: S3Location):
    """A boto3 S3 client for ``location`` with credentials from the environment only, passed
    explicitly so that neither ~/.aws/credentials nor instance metadata is consulted: the server
    must see the same credentials. botocore still reads ~/.aws/config while it builds the client,
    so a bad setting there (``AWS_PROFILE`` naming no profile) is a one-line ``UserError`` here,
    not an internal error."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ProfileNotFound

    credentials = _env_credentials()
    config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10, read_timeout=120,
                    s3={"addressing_style": "path"} if location.endpoint else {})
    try:
        return boto3.session.Session().client(
            "s3", endpoint_url=location.endpoint_url, config=config,
            region_name=os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1",
            **credentials)
    except BotoCoreError as exc:
        hint = ("; unset AWS_PROFILE or name a profile of ~/.aws/config (the credentials still come from "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)" if isinstance(exc, ProfileNotFound)
                else "; check the AWS_* variables and ~/.aws/config")
        raise UserError("cannot set up an S3 client for %s: %s%s" % (location.url, exc, hint)) from None


def storage_failure(action: str, location: S3Location, exc: Exception) -> UserError:
    """One line naming the location and S3's reason (error code, or the connection failure)."""
    code = getattr(exc, "response", {}).get("Error", {}).get("Code") if hasattr(exc, "response") else None
    reason = "%s (%s)" % (code, str(exc).split(": ", 1)[-1]) if code else str(exc).splitlines()[0]
    hint = {"NoSuchBucket": "create the bucket first", "AccessDenied": "check the credentials' permissions",
            "InvalidAccessKeyId": "check AWS_ACCESS_KEY_ID", "SignatureDoesNotMatch": "check AWS_SECRET_ACCESS_KEY"}
    more = "; %s" % hint[code] if code in hint else ""
    return UserError("%s %s failed: %s%s" % (action, location.url, reason, more))


def storage_errors():
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


def list_objects(s3, location: S3Location) -> dict[str, int]:
    """Keys under ``location`` (as a folder) -> size."""
    found = {}
    prefix = location.prefix + "/" if location.prefix else ""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=prefix):
        for obj in page.get("Contents", ()):
            found[obj["Key"]] = int(obj["Size"])
    return found


def read_pointer(s3, base: S3Location) -> dict | None:
    """The pointer object's content, or None when ``base`` has none."""
    try:
        body = s3.get_object(Bucket=base.bucket, Key=base.key(POINTER))["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None
    except storage_errors() as exc:
        if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("404", "NoSuchKey"):
            return None
        raise storage_failure("reading", base.child(POINTER), exc) from None
    try:
        pointer = json.loads(body)
        if not _VERSION_ID.fullmatch(str(pointer.get("version"))):
            raise ValueError("bad version %r" % pointer.get("version"))
    except (ValueError, AttributeError) as exc:
        raise UserError("%s is not a pointer written by aitune-triton push (%s)" % (base.child(POINTER), exc)) from None
    return pointer


# ---------------------------------------------------------------- reading a remote repository


@dataclass(frozen=True)
class RepositoryView:
    """A repository as the tool sees it: ``local`` holds what the tool reads, ``server`` is what
    tritonserver gets (the s3:// URL, or the local path). ``base`` is set when a pointer was
    followed: ``tune`` pushes its result there as a new version."""

    local: Path
    server: str | Path
    location: S3Location | None = None
    base: S3Location | None = None
    version: str | None = None

    @property
    def remote(self) -> bool:
        return self.location is not None

    def describe(self) -> str:
        if self.location is None:
            return str(self.local)
        via = " (version %s via %s)" % (self.version, self.base.child(POINTER).url) if self.version and self.base \
            else ""
        return self.location.url + via


def resolve(s3, location: S3Location) -> tuple[S3Location, S3Location | None, str | None]:
    """(repository, base, version): a prefix with a pointer resolves to the version it names."""
    pointer = read_pointer(s3, location)
    if pointer is None:
        return location, None, None
    return location.child(VERSIONS, pointer["version"]), location, pointer["version"]


def _local_path(dest: Path, relative: str) -> Path:
    """``dest/relative`` for a key from the bucket, refusing keys that would escape ``dest``."""
    parts = PurePosixPath(relative).parts
    if not parts or any(p in ("", ".", "..") for p in parts) or PurePosixPath(relative).is_absolute():
        raise UserError("refusing the object key %r: it would be written outside the download folder" % relative)
    return dest.joinpath(*parts)


def download(s3, location: S3Location, dest: Path, full: bool = False, progress: Progress | None = None) -> int:
    """Copy the repository at ``location`` into ``dest``; returns the number of files fetched.

    ``full=False`` fetches only what the tool reads (each model's manifest, config and reference
    data) and leaves empty placeholders for the rest, so that the layout (version folders, a built
    plan, the staged TensorRT folder) reads the same without downloading the weights."""
    say = progress or (lambda msg: None)
    try:
        objects = list_objects(s3, location)
    except storage_errors() as exc:
        raise storage_failure("listing", location, exc) from None
    prefix = location.prefix + "/" if location.prefix else ""
    fetched = 0
    for key in sorted(objects):
        relative = key[len(prefix):]
        if not relative or relative.endswith("/"):
            continue
        path = _local_path(dest, relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        parts = relative.split("/")
        if full or (len(parts) == 2 and parts[1] in TOOL_FILES):
            say("downloading %s" % relative)
            try:
                s3.download_file(location.bucket, key, str(path))
            except storage_errors() as exc:
                raise storage_failure("downloading", location.child(relative), exc) from None
            fetched += 1
        else:
            path.touch()
    if not objects:
        raise UserError("%s holds no objects; push a repository there first (aitune-triton push REPO %s)"
                        % (location.url, location.url))
    return fetched


@contextlib.contextmanager
def open_repository(repo: "str | Path", full: bool = False, progress: Progress | None = None,
                    require_pointer: bool = False) -> Iterator[RepositoryView]:
    """The one opener of a command's REPO. A local path as it is (it must be a folder); an s3://
    URL resolved through its pointer and downloaded (``full``: every file, else only what the tool
    reads) into a temporary folder removed afterwards. ``require_pointer``: refuse (before
    downloading) a prefix that ``push`` did not write, for callers that write back as a new
    version."""
    if not is_s3_url(repo):
        if not Path(repo).is_dir():
            raise UserError("model repository %s does not exist (or is not a directory)" % repo)
        yield RepositoryView(Path(repo), Path(repo))
        return
    location = S3Location.parse(str(repo))
    s3 = client(location)
    repository, base, version = resolve(s3, location)
    if require_pointer and base is None:
        raise UserError("%s has no %s: results are written back as a new version behind that pointer, so the "
                        "repository must have been pushed there with `aitune-triton push` (a plain prefix is never "
                        "rewritten in place)" % (location.url, POINTER))
    tmp = Path(tempfile.mkdtemp(prefix="aitune-s3-"))
    try:
        local = tmp / "repo"
        local.mkdir()
        count = download(s3, repository, local, full=full, progress=progress)
        log.info("downloaded %d files of %s into %s", count, repository.url, local)
        yield RepositoryView(local, repository.url, repository, base, version)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
