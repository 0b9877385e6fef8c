"""Object storage: Triton's s3:// syntax, the atomic versioned push and the local view, against a
real S3 REST server on loopback (moto's standalone server; see the ``s3_endpoint`` fixture)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import pytest

from aitune_triton.deploy import storage as st
from aitune_triton.triton import object_storage as obs
from aitune_triton.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("url, bucket, prefix, endpoint, https", [
    ("s3://models/team/cnn", "models", "team/cnn", None, False),
    ("s3://models", "models", "", None, False),
    ("s3://127.0.0.1:9000/models/repo", "models", "repo", "127.0.0.1:9000", False),
    ("s3://https://minio.local:9443/models/a/b/", "models", "a/b", "minio.local:9443", True),
])
def test_parse_follows_tritons_syntax_and_round_trips(url, bucket, prefix, endpoint, https):
    loc = obs.S3Location.parse(url)
    assert (loc.bucket, loc.prefix, loc.endpoint, loc.https) == (bucket, prefix, endpoint, https)
    assert obs.S3Location.parse(loc.url) == loc
    assert loc.endpoint_url == (None if endpoint is None else ("https" if https else "http") + "://" + endpoint)


@pytest.mark.parametrize("url, message", [
    ("models/repo", "not an s3:// URL"),
    ("s3://", "names no bucket"),
    ("s3://127.0.0.1:9000", "names no bucket"),
    ("s3://models//repo", "empty path segment"),
    ("s3://models/../etc", "'..'"),
    ("s3://Bad_Bucket/x", "not a valid S3 bucket name"),
    ("s3://https://models/x", "must be followed by host:port"),
    ("s3://127.0.0.1:99999/models/x", "not host:port"),
    ("s3://models\n/x", "not a valid S3 bucket name"),
    ("s3://models/x\n", "unusual segment"),
])
def test_parse_rejects_bad_urls_in_one_line(url, message):
    with pytest.raises(UserError, match=message):
        obs.S3Location.parse(url)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """The committed example repository (examples/cnn's generated output), plus files push skips."""
    repo = tmp_path_factory.mktemp("push") / "repo"
    shutil.copytree(ROOT / "model_repository", repo)
    (repo / ".aitune-staging-x").mkdir()
    (repo / ".aitune-staging-x" / "junk").write_text("half-written")
    (repo / "cnn" / "1" / "__pycache__").mkdir(exist_ok=True)
    (repo / "cnn" / "1" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"\0")
    return repo


@pytest.fixture()
def base(s3_endpoint) -> obs.S3Location:
    """A fresh bucket per test, so each starts without a pointer."""
    loc = obs.S3Location.parse("s3://%s/b-%s/team/cnn" % (s3_endpoint, uuid.uuid4().hex[:12]))
    obs.client(loc).create_bucket(Bucket=loc.bucket)
    return loc


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_push_uploads_a_version_then_switches_the_pointer(repo, base):
    first = st.push(repo, base)
    s3 = obs.client(base)
    pointer = obs.read_pointer(s3, base)
    assert pointer["version"] == first.version and pointer["repository"] == first.repository.url
    assert first.repository.url.startswith(base.url + "/versions/") and first.previous is None
    keys = obs.list_objects(s3, first.repository)
    rels = {k[len(first.repository.prefix) + 1:] for k in keys}
    assert "cnn/config.pbtxt" in rels and "cnn/1/model.py" in rels
    assert not any(r.startswith(".") or "__pycache__" in r for r in rels)
    second = st.push(repo, base)
    assert second.version != first.version and second.previous == first.version
    assert obs.list_objects(s3, first.repository) == keys  # the old version stays servable
    assert obs.resolve(s3, base) == (second.repository, base, second.version)


def test_push_reads_a_read_only_repository(repo, base, remount, tmp_path):
    """push only reads: a repository on a read-only filesystem (where no lock file can be made) is
    pushed as it is."""
    copy = tmp_path / "ro"
    shutil.copytree(repo, copy)
    remount(copy, "ro")
    result = st.push(copy, base)
    assert st.read_pointer(st.client(base), base)["version"] == result.version and result.files > 5
    assert not (copy / ".aitune.lock").exists()


def test_open_repository_follows_the_pointer_and_downloads(repo, base):
    pushed = st.push(repo, base)
    expected = {k: v for k, v in _files(repo).items() if not k.startswith(".") and "__pycache__" not in k}
    with obs.open_repository(base.url, full=True) as view:
        assert view.server == pushed.repository.url and view.version == pushed.version and view.base == base
        assert _files(view.local) == expected
        local = view.local
    assert not local.exists()
    with obs.open_repository(base.url) as view:  # metadata only: the layout, with content only where read
        got = _files(view.local)
        assert got.keys() == expected.keys()
        assert got["cnn/manifest.json"] == expected["cnn/manifest.json"]
        assert got["cnn/1/model.py"] == b""


def test_a_push_interrupted_half_way_leaves_the_pointer_and_no_partial_version(repo, base):
    good = st.push(repo, base)
    seen = []

    def interrupt(message: str) -> None:
        seen.append(message)
        if len(seen) == 3:
            raise KeyboardInterrupt

    # a Ctrl-C carries no message, so there is nothing to match: the excinfo checks below show it is
    # the bare interrupt itself that comes out, neither wrapped nor swallowed by push's cleanup
    with pytest.raises(KeyboardInterrupt) as interrupted:
        st.push(repo, base, progress=interrupt)
    assert interrupted.type is KeyboardInterrupt and interrupted.value.args == ()
    s3 = obs.client(base)
    assert obs.read_pointer(s3, base)["version"] == good.version
    versions = {k.split("/")[3] for k in obs.list_objects(s3, base.child(obs.VERSIONS))}
    assert versions == {good.version}


def test_push_errors_are_one_line_and_name_the_fix(repo, s3_endpoint, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="NoSuchBucket.*create the bucket first"):
        st.push(repo, obs.S3Location.parse("s3://%s/no-such-bucket/x" % s3_endpoint))
    with pytest.raises(UserError, match="no model directory"):
        st.push(tmp_path, obs.S3Location.parse("s3://%s/models/x" % s3_endpoint))
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(UserError, match="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        st.push(repo, obs.S3Location.parse("s3://%s/models/x" % s3_endpoint))


def test_credentials_stay_out_of_logs_and_objects(repo, base, caplog):
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    key_id = os.environ["AWS_ACCESS_KEY_ID"]
    with caplog.at_level(logging.DEBUG):
        pushed = st.push(repo, base)
    assert secret not in caplog.text and key_id not in caplog.text
    assert logging.getLogger("botocore").getEffectiveLevel() >= logging.WARNING
    s3 = obs.client(base)
    body = s3.get_object(Bucket=base.bucket, Key=base.key(obs.POINTER))["Body"].read().decode()
    assert secret not in body and key_id not in body and json.loads(body)["version"] == pushed.version


def test_download_refuses_keys_that_escape_the_folder(base, tmp_path):
    s3 = obs.client(base)
    s3.put_object(Bucket=base.bucket, Key=base.key("cnn/../../escape"), Body=b"x")
    with pytest.raises(UserError, match="outside the download folder"):
        obs.download(s3, base, tmp_path / "dest", full=True)
    assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize("args, code, message", [
    (["push", "{repo}", "s3://{ep}/no-such-bucket/x"], 2, "NoSuchBucket"),
    (["push", "{repo}", "s3://{ep}/models//x"], 2, "empty path segment"),
    (["push", "{repo}", "models/x"], 2, "not an s3:// URL"),
    (["validate", "s3://{ep}/Bad_Bucket/x"], 2, "not a valid S3 bucket name"),
    (["tune", "s3://{ep}/no-such-bucket/x", "--model", "cnn"], 2, "NoSuchBucket"),
])
def test_cli_storage_errors_exit_2_without_a_traceback(repo, s3_endpoint, args, code, message):
    from click.testing import CliRunner

    from aitune_triton.cli import main

    result = CliRunner().invoke(main, [a.format(repo=repo, ep=s3_endpoint) for a in args])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and message in result.output


def test_a_bad_aws_profile_is_a_one_line_error(tmp_path, monkeypatch):
    """AWS_PROFILE naming no profile made botocore raise ProfileNotFound while building the client,
    outside any handler: the CLI printed "internal error"."""
    from click.testing import CliRunner

    from aitune_triton.cli import main

    (tmp_path / "config").write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_PROFILE", "nope")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    with pytest.raises(UserError, match=r"cannot set up an S3 client for s3://models/x: The config profile \(nope\) "
                                        r"could not be found; unset AWS_PROFILE or name a profile"):
        obs.client(obs.S3Location.parse("s3://models/x"))
    result = CliRunner().invoke(main, ["validate", "s3://models/x"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    assert "unset AWS_PROFILE" in result.output
