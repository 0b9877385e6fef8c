"""What every command of the CLI shares: the console, the one-line error printer, and the
options of the server a command uses."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click
from rich.text import Text

from aitune_triton import defaults
from aitune_triton.console import make_console
from aitune_triton.errors import AituneError
from aitune_triton.output_paths import RESOURCE_ERRNOS, resource_error
from aitune_triton.procs import Terminated

console = make_console(stderr=True, highlight=False)
BACKEND_DIRECTORY_HELP = ("The launched server's backends folder (default: the embedded server's, or PREFIX/backends "
                          "beside --tritonserver's PREFIX/bin/).")


def labelled(label: str, style: str, text: str) -> Text:
    """``label`` styled, then ``text`` as it is: messages quote the user's paths, names and exceptions
    (``expected [batch, seq]``, ``see [/docs]``), which rich would take for markup, dropping the
    brackets or raising ``MarkupError`` instead of printing the line."""
    return Text.assemble((label, style), " ", text)


def print_error(exc: AituneError) -> None:
    """One line for the message, then the log path and the details, for every error in the tree."""
    message = str(exc).splitlines() or [type(exc).__name__]
    console.print(labelled("error:", "bold red", message[0]), soft_wrap=True)
    for line in message[1:]:
        console.print(line, markup=False, soft_wrap=True)
    if exc.log_path:
        console.print("log: %s" % exc.log_path, markup=False, soft_wrap=True)
    if exc.details:
        console.print(exc.details.rstrip(), markup=False, soft_wrap=True)


def handle_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from aitune_triton.user_code import exit_now_if_threads_left

        try:
            result = handled(*args, **kwargs)
        except SystemExit as exc:  # a thread model.py left must not keep the finished command alive
            exit_now_if_threads_left(exc.code if isinstance(exc.code, int) else 1)
            raise
        exit_now_if_threads_left(0)
        return result

    def handled(*args, **kwargs):
        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return fn(*args, **kwargs)
        except AituneError as exc:
            if debug:
                console.print_exception()
            print_error(exc)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP (procs.Terminated)
            console.print("interrupted%s; nothing was written"
                          % (" by %s" % exc.args[0] if isinstance(exc, Terminated) else ""), markup=False)
            sys.exit(128 + getattr(exc, "signum", 2))
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:  # a bug: one line without --debug, the traceback with it
            if debug:
                raise
            if isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS:  # disk, quota, descriptors, read-only
                print_error(resource_error(exc, "a file", exc.filename or "the disk"))
                sys.exit(1)
            first = (str(exc).strip().splitlines() or [""])[0]
            console.print(labelled("internal error:", "bold red", "%s: %s (rerun with --debug for the traceback)"
                                   % (type(exc).__name__, first)), soft_wrap=True)
            sys.exit(1)
    return wrapper


def ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter("expected comma-separated integers, got %r" % text) from None


def startup_timeout_option(fn):
    """--startup-timeout, for every command that may launch the embedded server."""
    return click.option("--startup-timeout", "startup_timeout_s", type=float, default=defaults.STARTUP_TIMEOUT_S,
                        show_default=True, help="Seconds for the server to start and for each model to load.")(fn)


def server_options(fn):
    """--url / --grpc-url / --tritonserver / --backend-directory / --startup-timeout: the server a
    command uses."""
    for option in reversed((
            click.option("--url", help="HTTP endpoint (host:port) of a running Triton to use instead of launching "
                                       "the embedded one."),
            click.option("--grpc-url", help="gRPC endpoint of that server (default: the HTTP port + 1)."),
            click.option("--tritonserver", type=click.Path(path_type=Path, dir_okay=False),
                         help="Launch this tritonserver binary instead of the bundled one."),
            click.option("--backend-directory", type=click.Path(path_type=Path, exists=True, file_okay=False),
                         help=BACKEND_DIRECTORY_HELP),
            startup_timeout_option)):
        fn = option(fn)
    return fn
