"""Stage lines: one per finished stage with its duration, printed whether or not stderr is a terminal."""
import io

import pytest
from rich.console import Console

from aitune_triton.progress import StageLog, stage_progress


def _console():
    buf = io.StringIO()
    return Console(file=buf, force_terminal=False, width=60), buf


def test_each_stage_gets_one_line_with_its_duration():
    console, buf = _console()
    ticks = iter([0.0, 2.5, 2.5, 14.0])
    stages = StageLog(console, clock=lambda: next(ticks))
    stages("spec: recording a long stage name that is wider than the sixty-column console")
    stages("exporting ONNX")
    stages.finish()
    lines = buf.getvalue().splitlines()
    assert lines == ["spec: recording a long stage name that is wider than the sixty-column console (2.5 s)",
                     "exporting ONNX (11.5 s)"]


def test_a_failing_command_names_the_stage_it_stopped_in():
    console, buf = _console()
    with pytest.raises(RuntimeError, match="boom"):
        with stage_progress(console, "generating") as progress:
            progress("spec")
            progress("exporting ONNX")
            raise RuntimeError("boom")
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("spec (") and lines[1].startswith("exporting ONNX (stopped after ")


def test_stage_messages_are_plain_text_not_markup():
    """A stage naming the user's path or model (``/tmp/[/x]``) raised MarkupError in the spinner."""
    console, buf = _console()  # the spinner parses its text even where it is not drawn
    with stage_progress(console, "generating [/title]") as progress:
        progress("exporting /tmp/[/x]/[b]model")
    assert "exporting /tmp/[/x]/[b]model (" in buf.getvalue()


def test_an_aitune_error_prints_only_itself():
    from aitune_triton.errors import UserError

    console, buf = _console()
    with pytest.raises(UserError, match="bad model.py"):
        with stage_progress(console, "generating") as progress:
            progress("spec")
            raise UserError("bad model.py")
    assert buf.getvalue() == ""
