"""Replace a small text file atomically: readers see the old content or the new, never half of it.

Standard library only: the manifest, the served model's data and the user cache of AOTInductor load
crashes all write through it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


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
