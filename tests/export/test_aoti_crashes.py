"""A crashed AOTInductor load is remembered in the user cache (``XDG_CACHE_HOME``, a tmp dir here)
and the next build skips the compile; ``--fallback-format aoti`` retries. The crash is real (a check
child killed by SIGSEGV through ``procs.run_child``); the compile is replaced by a stand-in so the
tests take seconds."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from aitune_triton.errors import ModelError
from aitune_triton.export import aoti_crashes, torch_export
from aitune_triton.export.aoti_crashes import HostKey
from aitune_triton.export.torch_export import build_fallback
from aitune_triton.source import load_model_source
from aitune_triton.spec import record_spec
from aitune_triton.tensorrt.profiles import ProfileMode, derive_profiles

ROOT = Path(__file__).resolve().parents[2]
H100 = HostKey("2.11.0+cu130", "cuda", "NVIDIA H100 80GB HBM3")


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "aitune-triton" / "aoti_load_crashes.json"


def test_the_cache_lives_under_xdg_cache_home_and_round_trips(cache_home, monkeypatch):
    assert aoti_crashes.cache_path() == cache_home
    assert aoti_crashes.lookup(H100) is None and not aoti_crashes.forget(H100)
    assert aoti_crashes.remember(H100, "aoti check crashed (signal SIGSEGV)") == cache_home
    crash = aoti_crashes.lookup(H100)
    assert (crash.torch, crash.device, crash.hardware, crash.reason) == (
        "2.11.0+cu130", "cuda", "NVIDIA H100 80GB HBM3", "aoti check crashed (signal SIGSEGV)")
    assert aoti_crashes.lookup(HostKey("2.11.0+cu130", "cuda", "NVIDIA A100-SXM4-80GB")) is None
    line = crash.skip_reason(cache_home)
    assert line.startswith("its load crashed on this machine before (aoti check crashed (signal SIGSEGV); torch "
                           "2.11.0+cu130 on cuda NVIDIA H100 80GB HBM3, 20")
    assert line.endswith("remembered in %s): not compiled again, retry with `--fallback-format aoti`" % cache_home)
    assert "\n" not in line
    assert aoti_crashes.forget(H100) and aoti_crashes.lookup(H100) is None
    assert json.loads(cache_home.read_text()) == {"schema": 1, "crashes": {}}
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert aoti_crashes.cache_path() == Path.home() / ".cache" / "aitune-triton" / "aoti_load_crashes.json"


def test_an_unreadable_cache_is_ignored(cache_home):
    cache_home.parent.mkdir(parents=True)
    cache_home.write_text("{not json")
    assert aoti_crashes.lookup(H100) is None
    aoti_crashes.remember(H100, "crashed")  # replaces it
    assert aoti_crashes.lookup(H100).reason == "crashed"
    cache_home.write_text(json.dumps({"crashes": {H100.id(): {"torch": "2.11.0"}}}))  # an entry missing fields
    assert aoti_crashes.lookup(H100) is None


def _build(src, spec, profiles, version_dir: Path, preferred: str = "auto", **kw):
    return build_fallback(src.path, src.model, spec, src.samples, src.outputs, profiles, version_dir,
                          preferred=preferred, timeout_s=120, **kw)


def test_a_crashed_load_is_remembered_and_the_next_build_skips_the_compile(tmp_path, monkeypatch, cache_home):
    (tmp_path / "fake_aoti_child.py").write_text(textwrap.dedent("""
        import os, signal
        from aitune_triton.export import export_child

        def compile_aoti(request):  # stands in for the ~100 s compile
            request.package_path.write_bytes(b"package")
            print("compiled", flush=True)

        def check(request):  # loading the package segfaults, as torch 2.11+cu130 does on an H100
            if request.format == "aoti":
                os.kill(os.getpid(), signal.SIGSEGV)
            return export_child.check(request)
    """))
    monkeypatch.setenv("PYTHONPATH", "%s:%s" % (tmp_path, ROOT))
    monkeypatch.setattr(torch_export, "COMPILE_TARGET", "fake_aoti_child:compile_aoti")
    monkeypatch.setattr(torch_export, "CHECK_TARGET", "fake_aoti_child:check")
    src = load_model_source(ROOT / "examples" / "multi_io" / "model.py")
    spec = record_spec(src.model, src.samples, src.outputs)
    profiles = derive_profiles(spec, src.samples, ProfileMode.SINGLE, None)

    first = _build(src, spec, profiles, tmp_path / "a" / "1")
    assert first.format == "export"
    (fmt, reason), = first.skipped
    assert fmt == "aoti" and reason.startswith("aoti check crashed (signal SIGSEGV")
    assert reason.endswith("; remembered in %s: the next generate here skips the AOTInductor compile (retry with "
                           "`--fallback-format aoti`)" % cache_home)
    here = HostKey.here("cpu")
    assert aoti_crashes.lookup(here).reason.startswith("aoti check crashed (signal SIGSEGV")

    monkeypatch.setattr(torch_export, "COMPILE_TARGET", "fake_aoti_child:no_such_function")  # must not run
    second = _build(src, spec, profiles, tmp_path / "b" / "1")
    assert second.format == "export"
    (fmt, reason), = second.skipped
    assert reason == aoti_crashes.lookup(here).skip_reason(cache_home)
    assert "compiled" not in (tmp_path / "b" / "logs" / "fallback.log").read_text()

    # --fallback-format aoti retries: compiled and checked again, the crash refreshed
    monkeypatch.setattr(torch_export, "COMPILE_TARGET", "fake_aoti_child:compile_aoti")
    with pytest.raises(ModelError, match=r"^fallback format 'aoti' failed: aoti check crashed \(signal SIGSEGV.*"
                                         r"remembered in "):
        _build(src, spec, profiles, tmp_path / "c" / "1", "aoti")
    # a portable build never tries AOTInductor, crash or not
    portable = _build(src, spec, profiles, tmp_path / "d" / "1", portable=True)
    assert portable.format == "export" and portable.skipped[0][1].startswith("not portable (--portable)")


def test_a_retried_load_that_works_forgets_the_crash(tmp_path, monkeypatch):
    (tmp_path / "fake_aoti_ok.py").write_text(textwrap.dedent("""
        def compile_aoti(request):
            request.package_path.write_bytes(b"package")

        def check(request):
            return {"output_0": 0.0}
    """))
    monkeypatch.setenv("PYTHONPATH", "%s:%s" % (tmp_path, ROOT))
    monkeypatch.setattr(torch_export, "COMPILE_TARGET", "fake_aoti_ok:compile_aoti")
    monkeypatch.setattr(torch_export, "CHECK_TARGET", "fake_aoti_ok:check")
    src = load_model_source(ROOT / "examples" / "cnn" / "model.py")
    spec = record_spec(src.model, src.samples, src.outputs)
    profiles = derive_profiles(spec, src.samples, ProfileMode.SINGLE, None)
    aoti_crashes.remember(HostKey.here("cpu"), "aoti check crashed (signal SIGSEGV)")
    assert _build(src, spec, profiles, tmp_path / "m" / "1", "aoti").format == "aoti"
    assert aoti_crashes.lookup(HostKey.here("cpu")) is None


def test_the_key_names_the_gpu_on_cuda_and_the_isa_on_cpu(monkeypatch):
    import platform

    import torch

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "NVIDIA H100 80GB HBM3")
    assert HostKey.here("cuda") == HostKey(torch.__version__, "cuda", "NVIDIA H100 80GB HBM3")
    cpu = HostKey.here("cpu")
    assert cpu.hardware == "%s %s" % (platform.machine(), torch.backends.cpu.get_cpu_capability())
    assert cpu.id() == "%s|cpu|%s" % (torch.__version__, cpu.hardware)
