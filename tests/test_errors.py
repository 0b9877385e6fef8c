"""The error tree: every error the package raises for the user is an ``AituneError`` carrying
``log_path`` and ``details``; the CLI prints the first line, ``log: PATH`` and the details, exits
with the class's code, and shows a traceback only with ``--debug`` (also for a bug outside the tree)."""
import importlib
import inspect
import pkgutil

import click
import pytest
from click.testing import CliRunner

import aitune_triton
from aitune_triton import errors
from aitune_triton.cli import main
from aitune_triton.cli.output import handle_errors

TREE = [errors.AituneError, errors.UserError, errors.ModelError, errors.CandidateFailed, errors.ServerError,
        errors.PerfError, errors.ToolMissing]
EXIT_CODES = {errors.UserError: 2, errors.ToolMissing: 2}

# Exceptions defined in the package outside the tree, and why none reaches the user as it is
INTERNAL = {
    "aitune_triton.procs.Terminated": "a KeyboardInterrupt: the CLI says 'interrupted' and exits 128 + signal",
    "aitune_triton.procs.ChildFailed": "callers turn it into an error of the tree with their own words",
    "aitune_triton.runtime.aitune_runtime.DataError": "runs in Triton's stub; Manifest.load turns it into UserError",
    "aitune_triton.runtime.model.RequestError": "runs in Triton's stub: one request's INVALID_ARG",
}


STUB_ONLY = ("aitune_triton.runtime.model", "aitune_triton.runtime.aitune_pipeline")  # import Triton's stub module


def _package_modules():
    for info in pkgutil.walk_packages(aitune_triton.__path__, "aitune_triton."):
        if info.name in STUB_ONLY:
            continue
        yield importlib.import_module(info.name)


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


@pytest.fixture(scope="module")
def package_exceptions() -> dict[str, type]:
    found = {}
    for module in _package_modules():
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                found["%s.%s" % (obj.__module__, obj.__qualname__)] = obj
    return found


def test_every_package_exception_is_in_the_tree_or_internal(package_exceptions):
    outside = sorted(name for name, cls in package_exceptions.items()
                     if not issubclass(cls, errors.AituneError) and not name.startswith(STUB_ONLY)
                     and "._" not in name and "<locals>" not in name)
    assert outside == sorted(n for n in INTERNAL if n in package_exceptions), \
        "new exceptions outside the tree: derive them from aitune_triton.errors or list why here"


@pytest.mark.parametrize("cls", sorted(set(TREE) | set(_subclasses(errors.AituneError)), key=lambda c: c.__name__))
def test_every_error_carries_log_path_and_details(cls):
    args = ("first line\nsecond",) if cls is not errors.PerfError else ("first line\nsecond", None)
    exc = cls(*args, log_path="/tmp/x.log", details="the tool said")
    assert isinstance(exc, errors.AituneError)
    assert (exc.log_path, exc.details, exc.message) == ("/tmp/x.log", "the tool said", "first line\nsecond")
    assert exc.exit_code == EXIT_CODES.get(cls, 2 if issubclass(cls, errors.UserError) else 1)
    bare = cls("m")
    assert bare.log_path is None and bare.details is None


def _invoke(exc: BaseException, *root_args: str):
    """Run ``exc`` through the real CLI group as the body of a command."""
    @click.command("raise-for-test")
    @handle_errors
    def command():
        raise exc

    main.add_command(command)
    try:
        return CliRunner().invoke(main, [*root_args, "raise-for-test"])
    finally:
        main.commands.pop("raise-for-test")


@pytest.mark.parametrize("cls", TREE)
def test_cli_prints_message_log_and_details_with_the_exit_code(cls, tmp_path):
    log = tmp_path / "step.log"
    result = _invoke(cls("stage failed: why\nmore context", log_path=log, details="tool output\nline 2"))
    assert result.exit_code == cls.exit_code
    assert result.output.splitlines() == ["error: stage failed: why", "more context", "log: %s" % log,
                                          "tool output", "line 2"]
    assert "Traceback" not in result.output


def test_cli_error_without_log_or_details_is_one_line():
    result = _invoke(errors.UserError("--replicas must be >= 1, got 0"))
    assert result.exit_code == 2 and result.output.splitlines() == ["error: --replicas must be >= 1, got 0"]


def test_bug_outside_the_tree_is_one_line_without_debug_and_a_traceback_with_it():
    result = _invoke(ValueError("unexpected\nstate"))
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "internal error: ValueError: unexpected (rerun with --debug for the traceback)"]
    debug = _invoke(ValueError("unexpected"), "--debug")
    assert isinstance(debug.exception, ValueError) and debug.exit_code == 1


def test_brackets_in_a_message_are_printed_as_they_are_not_as_markup():
    """rich took ``[/docs]`` for a closing tag (MarkupError traceback) and ``[batch, seq]`` for a style."""
    result = _invoke(errors.UserError("model.py: expected [batch, seq]; see [/docs]"))
    assert result.exit_code == 2
    assert result.output.splitlines() == ["error: model.py: expected [batch, seq]; see [/docs]"]
    bug = _invoke(ValueError("[bold]x[/] [/docs]"))
    assert bug.output.splitlines() == [
        "internal error: ValueError: [bold]x[/] [/docs] (rerun with --debug for the traceback)"]


def test_debug_prints_the_traceback_of_a_tree_error_too():
    result = _invoke(errors.ServerError("tritonserver exited"), "--debug")
    assert result.exit_code == 1
    assert "Traceback" in result.output and "error: tritonserver exited" in result.output
