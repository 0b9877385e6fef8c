"""The AOTInductor packages whose load crashed on this machine, remembered across runs.

Some torch builds compile an AOTInductor package fine and then crash loading it (a segfault in
torch itself, with no project code involved), e.g. torch 2.11+cu130 on an H100: every ``generate``
there would pay the whole compile (about 100 s for ResNet-50) before falling back. The check child
that crashed records the crash here, keyed by what decides it (torch, the device, the GPU's name or
the CPU's instruction set); the next ``generate`` on that machine skips the compile with one line
saying so. ``--fallback-format aoti`` retries: a load that works removes the entry, another crash
refreshes it.

The cache is one small JSON file under ``${XDG_CACHE_HOME:-~/.cache}/aitune-triton/``, replaced
atomically; an unreadable one is treated as empty (it is only a shortcut, never a reason to fail).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from aitune_triton.atomic import replace_file_atomically

log = logging.getLogger(__name__)

CACHE_FILE = "aoti_load_crashes.json"
RETRY_HINT = "--fallback-format aoti"


def cache_path() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/aitune-triton/aoti_load_crashes.json``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "aitune-triton" / CACHE_FILE


@dataclass(frozen=True)
class HostKey:
    """What decides whether an AOTInductor package loads: torch, the device kind, and the GPU's name
    (on cuda) or the CPU's instruction set (on cpu)."""

    torch: str
    device: str
    hardware: str

    @classmethod
    def here(cls, device: str) -> "HostKey":
        import platform

        import torch

        if device == "cuda":
            hardware = torch.cuda.get_device_name(0)
        else:
            hardware = "%s %s" % (platform.machine(), torch.backends.cpu.get_cpu_capability())
        return cls(torch.__version__, device, hardware)

    def id(self) -> str:
        return "%s|%s|%s" % (self.torch, self.device, self.hardware)


@dataclass(frozen=True)
class Crash:
    """One remembered crash: how the check child died and when (ISO 8601, UTC)."""

    torch: str
    device: str
    hardware: str
    reason: str
    when: str

    def skip_reason(self, path: Path) -> str:
        """The one line ``generate`` prints instead of compiling again."""
        return ("its load crashed on this machine before (%s; torch %s on %s %s, %s; remembered in %s): not compiled "
                "again, retry with `%s`" % (self.reason, self.torch, self.device, self.hardware, self.when[:10], path,
                                            RETRY_HINT))


def _read(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring the unreadable AOTInductor crash cache %s: %s", path, exc)
        return {}
    entries = data.get("crashes") if isinstance(data, dict) else None
    return {k: v for k, v in entries.items() if isinstance(v, dict)} if isinstance(entries, dict) else {}


def _write(path: Path, entries: dict[str, dict]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_file_atomically(path, json.dumps({"schema": 1, "crashes": entries}, indent=2, sort_keys=True) + "\n")
    except OSError as exc:  # a read-only home: the next run compiles again, nothing worse
        log.warning("cannot write the AOTInductor crash cache %s: %s", path, exc)


def lookup(key: HostKey) -> Crash | None:
    """The crash remembered for ``key``, or None."""
    entry = _read(cache_path()).get(key.id())
    try:
        return Crash(**{f: str(entry[f]) for f in ("torch", "device", "hardware", "reason", "when")}) if entry \
            else None
    except KeyError:
        return None


def remember(key: HostKey, reason: str) -> Path:
    """Record (or refresh) a crash of ``key``; returns the cache file."""
    path = cache_path()
    entries = _read(path)
    entries[key.id()] = asdict(Crash(key.torch, key.device, key.hardware, reason,
                                     time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
    _write(path, entries)
    return path


def forget(key: HostKey) -> bool:
    """Drop the entry of ``key`` (its load worked); whether there was one."""
    path = cache_path()
    entries = _read(path)
    if entries.pop(key.id(), None) is None:
        return False
    _write(path, entries)
    return True
