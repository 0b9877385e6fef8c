"""The one way to make a rich ``Console`` for the CLI's output.

When the output is not a terminal (CI logs, ``| tee``, a file) rich falls back to 80 columns, which
squeezes the results tables into 15-character cells wrapped over several lines; such output gets a
fixed wide width instead (``COLUMNS`` when it is wider), and is read by people scrolling a log.
"""

from __future__ import annotations

import os
import sys

from rich.console import Console

PIPE_WIDTH = 200


def output_width(stream, environ=os.environ) -> int | None:
    """The width to force on ``stream``, or None to let rich measure the terminal."""
    try:
        if stream.isatty():
            return None
    except (AttributeError, ValueError):  # closed or not a real stream
        pass
    columns = environ.get("COLUMNS", "")
    return max(int(columns), PIPE_WIDTH) if columns.isdigit() else PIPE_WIDTH


def make_console(stderr: bool = False, **options) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    width = output_width(stream)
    if width is not None:
        options.setdefault("width", width)
    return Console(stderr=stderr, **options)
