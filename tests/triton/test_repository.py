import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from aitune_triton.errors import UserError
from aitune_triton.triton import repository


def _tree(path):
    return sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() else b"")
                  for p in path.rglob("*")) if path.exists() else None


def test_commit_moves_complete_dirs(tmp_path):
    repo = tmp_path / "repo"
    with repository.stage_models(repo, ["a", "b"]) as staged:
        (staged.dir("a") / "config.pbtxt").write_text("a")
        (staged.dir("b") / "config.pbtxt").write_text("b")
        assert not repo.exists()
    assert (repo / "a" / "config.pbtxt").read_text() == "a" and (repo / "b").is_dir()
    assert not list(tmp_path.glob(".repo.aitune-staging-*"))


def test_exception_leaves_repository_untouched(tmp_path):
    repo = tmp_path / "repo"
    (repo / "other").mkdir(parents=True)
    (repo / "other" / "config.pbtxt").write_text("keep")
    before = _tree(repo)
    with pytest.raises(KeyboardInterrupt):
        with repository.stage_models(repo, ["new"]) as staged:
            (staged.dir("new") / "x").write_text("half")
            raise KeyboardInterrupt
    assert _tree(repo) == before
    assert not list(tmp_path.glob(".repo.aitune-staging-*"))


def test_no_clobber_without_force(tmp_path):
    repo = tmp_path / "repo"
    (repo / "m").mkdir(parents=True)
    (repo / "m" / "config.pbtxt").write_text("old")
    with pytest.raises(UserError, match="--force"):
        with repository.stage_models(repo, ["m"]):
            pass
    with repository.stage_models(repo, ["m"], force=True) as staged:
        (staged.dir("m") / "config.pbtxt").write_text("new")
    assert (repo / "m" / "config.pbtxt").read_text() == "new"


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "", "x" * 200, "..", "a\\b"])
def test_hostile_names_rejected(tmp_path, name):
    with pytest.raises(UserError):
        with repository.stage_models(tmp_path / "repo", [name]):
            pass
    assert not (tmp_path / "repo").exists() and sorted(os.listdir(tmp_path)) in ([], [".repo.aitune.lock"])


def test_output_is_a_file(tmp_path):
    (tmp_path / "repo").write_text("")
    with pytest.raises(UserError, match="is a file"):
        with repository.stage_models(tmp_path / "repo", ["m"]):
            pass


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_dir(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    with pytest.raises(UserError, match="not writable"):
        with repository.stage_models(ro / "repo", ["m"]):
            pass


def test_concurrent_writer_loses_cleanly(tmp_path):
    repo = tmp_path / "repo"
    with repository.stage_models(repo, ["a"]) as staged:
        staged.dir("a")
        with pytest.raises(UserError, match="another aitune-triton run"):
            with repository.stage_models(repo, ["b"]):
                pass
    assert sorted(os.listdir(repo)) == ["a"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_killed_writer_leaves_repository_as_it_was(tmp_path, sig):
    repo = tmp_path / "repo"
    (repo / "other").mkdir(parents=True)
    before = _tree(repo)
    marker = tmp_path / "staging-ready"
    script = textwrap.dedent("""
        import sys, time, pathlib
        from aitune_triton.triton import repository
        with repository.stage_models(pathlib.Path(sys.argv[1]), ["m"]) as staged:
            (staged.dir("m") / "config.pbtxt").write_text("half")
            pathlib.Path(sys.argv[2]).write_text("x")
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script, str(repo), str(marker)])
    deadline = time.time() + 60
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    assert _tree(repo) == before
    # a later run succeeds and sweeps what a SIGKILL left beside the repository
    with repository.stage_models(repo, ["m"]) as staged:
        (staged.dir("m") / "config.pbtxt").write_text("full")
    assert (repo / "m" / "config.pbtxt").read_text() == "full"
    assert not list(tmp_path.glob(".repo.aitune-staging-*"))
