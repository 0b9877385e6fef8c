import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from aitune_triton.errors import UserError
from aitune_triton.triton import repository
from aitune_triton.waiting import poll


def _tree(path, hidden=True):
    """Every entry under ``path`` with its bytes; ``hidden=False`` leaves out what Triton never
    serves (the repository's own dot-entries: staging dirs, the lock)."""
    return sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() else b"")
                  for p in path.rglob("*")
                  if hidden or not p.relative_to(path).parts[0].startswith(".")) if path.exists() else None


def _settled_tree(path):
    """``_tree`` of a repository that another process may still be cleaning: a directory that
    vanishes while it is being read means "not settled yet" (``None``), not an error."""
    try:
        return _tree(path)
    except FileNotFoundError:
        return None


def _leftovers(tmp_path):
    """Lock or staging entries anywhere under tmp_path (beside or inside repositories)."""
    return [p for p in tmp_path.rglob(".*") if p.name.startswith((".aitune", ".repo"))]


def test_commit_moves_complete_dirs(tmp_path):
    repo = tmp_path / "repo"
    with repository.stage_models(repo, ["a", "b"]) as staged:
        (staged.dir("a") / "config.pbtxt").write_text("a")
        (staged.dir("b") / "config.pbtxt").write_text("b")
        assert staged.root.parent == repo and staged.root.name.startswith(".aitune-staging-")
        assert not (repo / "a").exists()
    assert (repo / "a" / "config.pbtxt").read_text() == "a" and (repo / "b").is_dir()
    assert sorted(os.listdir(repo)) == ["a", "b"] and not _leftovers(tmp_path)


def test_exception_leaves_repository_untouched(tmp_path):
    repo = tmp_path / "repo"
    (repo / "other").mkdir(parents=True)
    (repo / "other" / "config.pbtxt").write_text("keep")
    before = _tree(repo)
    # a Ctrl-C carries no message, so there is nothing to match: the excinfo check below shows the
    # bare interrupt itself comes out of stage_models, neither wrapped nor swallowed by its cleanup
    with pytest.raises(KeyboardInterrupt) as interrupted:
        with repository.stage_models(repo, ["new"]) as staged:
            (staged.dir("new") / "x").write_text("half")
            raise KeyboardInterrupt
    assert interrupted.type is KeyboardInterrupt and interrupted.value.args == ()
    assert _tree(repo) == before
    assert not _leftovers(tmp_path)


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



def _failing_renames(monkeypatch, fail_at):
    """Make the calls numbered in ``fail_at`` (1-based, counted from now) of os.rename fail with EIO."""
    real, calls = os.rename, [0]

    def rename(src, dst):
        calls[0] += 1
        if calls[0] in fail_at:
            raise OSError(5, "Input/output error", str(src))
        return real(src, dst)
    monkeypatch.setattr(os, "rename", rename)


@pytest.mark.parametrize("fail_at", [1, 2, 3, 4, 5, 6])
def test_commit_that_fails_part_way_is_rolled_back(tmp_path, monkeypatch, fail_at):
    # a, b, c all exist: the commit renames old-a, new-a, old-b, new-b, old-c, new-c; whichever fails,
    # the repository must be exactly as before (no model replaced, none deleted)
    repo = tmp_path / "repo"
    for name in "abc":
        (repo / name).mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text("old " + name)
    before = _tree(repo)
    with pytest.raises(UserError, match="cannot move model .* the repository is unchanged"):
        with repository.stage_models(repo, ["a", "b", "c"], force=True) as staged:
            for name in "abc":
                (staged.dir(name) / "config.pbtxt").write_text("new " + name)
            _failing_renames(monkeypatch, {fail_at})
    monkeypatch.undo()
    assert _tree(repo) == before and not _leftovers(tmp_path)


def test_failed_rollback_keeps_the_replaced_models_and_says_where(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    for name in "ab":
        (repo / name).mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text("old " + name)
    # 4th rename (new b into place) fails, then so does putting old b back (5th); old a is restored
    with pytest.raises(UserError, match="could not be undone .* are in .*%s" % repository.UNRESTORED_PREFIX):
        with repository.stage_models(repo, ["a", "b"], force=True) as staged:
            for name in "ab":
                (staged.dir(name) / "config.pbtxt").write_text("new " + name)
            _failing_renames(monkeypatch, {4, 5})
    monkeypatch.undo()
    kept = [p for p in repo.iterdir() if p.name.startswith(repository.UNRESTORED_PREFIX)]
    assert len(kept) == 1 and (kept[0] / ".old-b" / "config.pbtxt").read_text() == "old b"
    assert (repo / "a" / "config.pbtxt").read_text() == "old a" and not (repo / "b").exists()
    # the next run's stale-staging sweep leaves the only copy of b alone
    with repository.stage_models(repo, ["c"]) as staged:
        staged.dir("c")
    assert (kept[0] / ".old-b" / "config.pbtxt").read_text() == "old b"


def test_model_that_appears_after_the_up_front_check_commits_nothing(tmp_path):
    repo = tmp_path / "repo"
    with pytest.raises(UserError, match="model b already exists"):
        with repository.stage_models(repo, ["a", "b"]) as staged:
            (staged.dir("a") / "config.pbtxt").write_text("new a")
            (staged.dir("b") / "config.pbtxt").write_text("new b")
            (repo / "b").mkdir()  # another writer (not holding the lock) created it meanwhile
            (repo / "b" / "config.pbtxt").write_text("theirs")
    assert sorted(os.listdir(repo)) == ["b"] and (repo / "b" / "config.pbtxt").read_text() == "theirs"


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "", "x" * 200, "..", "a\\b"])
def test_hostile_names_rejected(tmp_path, name):
    with pytest.raises(UserError, match="model name .*(is not a plain directory name|is not allowed|is empty)"):
        with repository.stage_models(tmp_path / "repo", [name]):
            pass
    assert not (tmp_path / "repo").exists() and os.listdir(tmp_path) == []


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
    # SIGINT cleans up itself; after a SIGKILL the writer's watchdog removes the staging dir and the
    # lock, a moment later and in another process, so the tree is read once that has settled
    poll(lambda: _settled_tree(repo) == before, 30.0)
    assert _settled_tree(repo) == before
    # a later run succeeds and sweeps what a SIGKILL left beside the repository
    with repository.stage_models(repo, ["m"]) as staged:
        (staged.dir("m") / "config.pbtxt").write_text("full")
    assert (repo / "m" / "config.pbtxt").read_text() == "full"
    assert not _leftovers(tmp_path)


# ---------------------------------------------------------------- filesystems, locks, symlinks (issue 14)


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs mounted at a fresh directory: another filesystem that also fills up.
    Mounting needs root (CI runs as root); elsewhere the test is skipped."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: %s" % proc.stderr.strip())
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_repository_that_is_a_mount_point(small_fs):
    """--out a mount point (a Docker volume, a PVC): the rename never leaves that filesystem."""
    with repository.stage_models(small_fs, ["m"]) as staged:
        (staged.dir("m") / "config.pbtxt").write_text("x")
    assert (small_fs / "m" / "config.pbtxt").read_text() == "x" and os.listdir(small_fs) == ["m"]


def test_repository_through_a_symlink_to_another_filesystem(tmp_path):
    other = tempfile.mkdtemp(dir="/dev/shm")  # tmpfs: another filesystem than pytest's tmp dir
    try:
        if os.stat(other).st_dev == os.stat(tmp_path).st_dev:
            pytest.skip("/dev/shm is on the same filesystem as %s here" % tmp_path)
        (tmp_path / "repo").symlink_to(other)
        with repository.stage_models(tmp_path / "repo", ["m"]) as staged:
            (staged.dir("m") / "config.pbtxt").write_text("x")
        assert os.listdir(other) == ["m"] and not _leftovers(tmp_path)
    finally:
        shutil.rmtree(other)


def test_disk_full_is_one_line_naming_the_filesystem(small_fs):
    (small_fs / "other").mkdir()
    before = _tree(small_fs)
    with pytest.raises(UserError, match=r"no space left on the filesystem of .*%s.*repository is unchanged"
                       % small_fs.name):
        with repository.stage_models(small_fs, ["m"]) as staged:
            (staged.dir("m") / "model.bin").write_bytes(b"\0" * (2 << 20))
    assert _tree(small_fs) == before


def test_stale_staging_sweep_does_not_glob_other_repositories(tmp_path):
    """A repository named with glob characters must not match another run's live staging dir."""
    other = tmp_path / "r-live"
    other.mkdir()
    live = other / ".aitune-staging-abc"
    live.mkdir()
    (tmp_path / ".r-live.aitune-staging-xyz").mkdir()  # old-layout dir of someone else
    with repository.stage_models(tmp_path / "r*", ["m"]) as staged:
        staged.dir("m")
    assert live.is_dir() and (tmp_path / ".r-live.aitune-staging-xyz").is_dir()
    assert (tmp_path / "r*" / "m").is_dir()


def test_lock_is_keyed_on_the_real_directory(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (tmp_path / "alias").symlink_to(repo)
    with repository.stage_models(repo, ["a"]) as staged:
        staged.dir("a")
        with pytest.raises(UserError, match="another aitune-triton run"):
            with repository.stage_models(tmp_path / "alias", ["b"]):
                pass
    assert os.listdir(repo) == ["a"]


def test_planted_symlink_at_the_lock_path_is_not_followed(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    victim = tmp_path / "victim"
    (repo / repository.LOCK_NAME).symlink_to(victim)
    with pytest.raises(UserError, match="lock file .* is a symlink"):
        with repository.stage_models(repo, ["m"]):
            pass
    assert not victim.exists() and not victim.is_symlink()


def test_dangling_symlink_with_the_model_name_is_refused_up_front(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "m").symlink_to(tmp_path / "gone")
    with pytest.raises(UserError, match="dangling symlink"):
        with repository.stage_models(repo, ["m"]):
            raise AssertionError("the body must not run")
    with repository.stage_models(repo, ["m"], force=True) as staged:
        (staged.dir("m") / "config.pbtxt").write_text("x")
    assert (repo / "m" / "config.pbtxt").read_text() == "x" and not (repo / "m").is_symlink()


def test_force_over_an_undeletable_file_warns(tmp_path, caplog):
    repo = tmp_path / "repo"
    (repo / "m" / "1").mkdir(parents=True)
    stuck = repo / "m" / "1" / "model.pt2"
    stuck.write_text("old")
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(stuck)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not supported on this filesystem")
        undo = ["chattr", "-i"]
    else:
        (repo / "m" / "1").chmod(0o555)
        undo = None
    try:
        with repository.stage_models(repo, ["m"], force=True) as staged:
            (staged.dir("m") / "config.pbtxt").write_text("new")
        assert (repo / "m" / "config.pbtxt").read_text() == "new"
        assert "could not be deleted completely" in caplog.text and "model.pt2" in caplog.text
    finally:
        for p in repo.rglob("model.pt2"):
            if undo:
                subprocess.run(undo + [str(p)], check=False)
            else:
                p.parent.chmod(0o755)


BIG_MODEL = textwrap.dedent("""
    import torch
    from torch import nn


    class Big(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(1024, 1024)  # 4 MiB of weights: more than the 1 MiB filesystem holds

        def forward(self, x):
            return self.fc(x)


    def get_model():
        return Big().eval()


    def get_samples():
        return [torch.randn(b, 1024) for b in (1, 2)]
""")


def test_generate_onto_a_full_filesystem_is_one_line(small_fs, tmp_path):
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "model.py").write_text(BIG_MODEL)
    proc = subprocess.run([sys.executable, "-m", "aitune_triton.cli", "generate", str(tmp_path / "big" / "model.py"),
                           "--out", str(small_fs / "repo"), "--backend", "python", "--fallback-format", "eager"],
                          capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and "no space left on the filesystem of %s" % (small_fs / "repo") in errors[0]
    assert os.listdir(small_fs) == []  # not even the repository directory is left
