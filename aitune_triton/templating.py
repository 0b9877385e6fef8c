"""The one Jinja environment for every generated file (config.pbtxt, model.py, build_plan.sh).

``StrictUndefined`` turns a missing variable into an error instead of an empty string, and
the filters quote values for the target language so user strings cannot inject fields.
"""

from __future__ import annotations

import functools
import importlib.resources
import shlex
from pathlib import Path

import jinja2


def pbtxt_str(value: object) -> str:
    """A protobuf text-format string literal: quotes, backslashes, control and non-ASCII bytes escaped
    (octal escapes are understood by both the C++ and the Python text-format parsers)."""
    out = []
    for byte in str(value).encode("utf-8"):
        ch = chr(byte)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif 32 <= byte < 127:
            out.append(ch)
        else:
            out.append("\\%03o" % byte)
    return '"' + "".join(out) + '"'


def pyrepr(value: object) -> str:
    """A Python literal for values rendered into generated Python code."""
    return repr(value)


@functools.lru_cache(maxsize=1)
def template_env() -> jinja2.Environment:
    # a source checkout's templates/ (beside the package) first: an editable install of another
    # checkout maps aitune_triton.templates to *that* checkout's templates
    beside = Path(__file__).resolve().parents[1] / "templates"
    root = str(beside) if (beside / "config.pbtxt.j2").is_file() else \
        str(importlib.resources.files("aitune_triton.templates"))
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(root)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["shquote"] = lambda v: shlex.quote(str(v))
    env.filters["pbtxt_str"] = pbtxt_str
    env.filters["pyrepr"] = pyrepr
    return env


def render(template: str, **context: object) -> str:
    return template_env().get_template(template).render(**context)
