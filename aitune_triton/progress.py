"""Progress for long commands: one line per finished stage with its duration, TTY or not.

A spinner shows the current stage on a terminal but prints nothing into a CI log or a batch
job's output, where ``generate`` then looked hung for minutes. The API reports a stage by
calling ``progress(message)`` when it starts; ``StageLog`` prints the previous stage's line
(``message (12.3 s)``) at that moment and the last one when the command ends, so a log shows
where the time went and, if the run is interrupted, in which stage. A run that ends in an
``AituneError`` prints only the error (bad input stays one line).
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator

from rich.console import Console
from rich.status import Status
from rich.text import Text

from aitune_triton.errors import AituneError


class StageLog:
    """``progress`` callback: each call ends the running stage (one printed line) and starts a new one."""

    def __init__(self, console: Console, on_start: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.console = console
        self.on_start = on_start
        self.clock = clock
        self.current: str | None = None
        self.started = 0.0

    def __call__(self, message: str) -> None:
        self.finish()
        self.current, self.started = message, self.clock()
        if self.on_start is not None:
            self.on_start(message)

    def finish(self, outcome: str = "") -> None:
        """Print the running stage's line (``outcome`` replaces the plain duration, e.g. "failed")."""
        if self.current is None:
            return
        seconds = self.clock() - self.started
        self.console.print("%s (%s%.1f s)" % (self.current, outcome + " after " if outcome else "", seconds),
                           markup=False, highlight=False, soft_wrap=True)
        self.current = None


def plain_updates(status: Status) -> Callable[[str], None]:
    """``status.update`` for a progress callback, taking the message as plain text: messages name
    the user's paths and models, and a spinner parses a str as markup (``[/x]`` raises
    ``MarkupError``, ``[x]`` disappears)."""
    return lambda message: status.update(Text(message))


@contextlib.contextmanager
def stage_progress(console: Console, title: str) -> Iterator[StageLog]:
    """A spinner titled ``title`` (on a terminal) plus a printed line per finished stage."""
    with console.status(Text(title)) as status:
        stages = StageLog(console, on_start=plain_updates(status))
        try:
            yield stages
        except AituneError:
            raise  # the error's own line says what went wrong; bad input stays one line
        except BaseException:
            stages.finish("stopped")  # Ctrl-C, a signal or a bug: say where it happened
            raise
        stages.finish()
