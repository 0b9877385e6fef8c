"""Command line: parse options, call one function of the Python API (``aitune_triton.api`` for
``generate``, ``aitune_triton.commands`` for the rest), print its result. Nothing else lives here: the
commands are in ``model``, ``serving`` and ``scaleout``; what they share is ``output``.

Exit codes: 0 success, 1 a model or check failed, 2 a usage error (one line, no traceback
unless ``--debug``).
"""

from __future__ import annotations

import logging

import click

from aitune_triton.cli import model, scaleout, serving
from aitune_triton.procs import handle_termination
from aitune_triton.version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="aitune-triton")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
def main(debug: bool) -> None:
    """Put a PyTorch model behind NVIDIA Triton Inference Server."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    handle_termination()  # TERM and HUP unwind like Ctrl-C: servers stopped, staging removed


for command in (model.generate, model.inspect, model.build_plan, serving.validate, serving.serve, serving.tune,
                model.pack_env, model.doctor, scaleout.push, scaleout.plan, scaleout.deploy):
    main.add_command(command)
