"""The JSON that ``procs.run_child`` sends to its child and back: requests, results and exceptions.

A pickle is code execution for whoever can write the file it is read from; this codec constructs
nothing but plain data and the package's own value types, so a tampered job or result file can at
worst make a request fail. What it carries is what the children's requests and results hold:

* ``None``, ``bool``, ``int``, ``str``, ``float`` (inf and nan included) and lists as JSON itself;
* tuples, dicts, ``Path``\\ s and non-finite floats as objects with one tag key;
* the Enums and (frozen) dataclasses of this package (``BuildRequest``, ``IOSpec``,
  ``TensorRTBackendConfig``, ``PlanArtifact``, ...) by their module and qualified name;
* ``TensorRTProfile`` (a Polygraphy ``Profile`` underneath, not a dataclass) by its ``to_dict``.

Encoding anything else is a ``TypeError`` naming its type, raised before the child starts; decoding
constructs nothing else: a class must be a dataclass or an Enum defined under ``aitune_triton.``
(anything else, or a malformed payload, is a ``ValueError`` naming the type). Exceptions go as type, message and, for
``AituneError``, its ``log_path`` and ``details``; the parent re-creates only the package's
``AituneError`` subclasses and builtin exceptions. No numpy or torch here: the parent of a
TensorRT build does not need them.
"""

from __future__ import annotations

import builtins
import dataclasses
import importlib
import inspect
import json
import math
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aitune_triton.errors import AituneError

if TYPE_CHECKING:
    from aitune_triton.profile_set import TensorRTProfile

PACKAGE = "aitune_triton"
_PRIMITIVES = (bool, int, str)  # exact types: a subclass (an Enum, numpy's scalars) is not plain data
_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


# ----------------------------------------------------------------------------- values


def dumps(value: Any) -> str:
    """``value`` as JSON text; ``TypeError`` naming the first type the codec does not carry."""
    return json.dumps(encode(value), allow_nan=False, separators=(",", ":"))


def loads(text: str | bytes) -> Any:
    """The value ``dumps`` wrote; ``ValueError`` for anything this codec would not have written."""
    return decode(json.loads(text, parse_constant=_no_constant))


def _no_constant(name: str) -> Any:
    raise ValueError("child codec: %s is not JSON (non-finite floats are tagged)" % name)


def encode(value: Any) -> Any:
    """``value`` as JSON-ready data (lists, str-keyed dicts, scalars)."""
    kind = type(value)
    if value is None or kind in _PRIMITIVES:
        return value
    if kind is float:
        if math.isfinite(value):
            return value
        return {"float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if kind is list:
        return [encode(v) for v in value]
    if kind is tuple:
        return {"tuple": [encode(v) for v in value]}
    if kind is dict:
        if all(type(k) is str for k in value):
            return {"dict": {k: encode(v) for k, v in value.items()}}
        return {"pairs": [[encode(k), encode(v)] for k, v in value.items()]}
    if isinstance(value, Path):
        return {"path": str(value)}
    if isinstance(value, Enum):
        return {"enum": _type_name(kind, "Enums"), "value": encode(value.value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"dataclass": _type_name(kind, "dataclasses"),
                "fields": {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    profile_class = _profile_class()
    if kind is profile_class:
        return {"profile": value.to_dict()}
    raise TypeError("cannot send a %s.%s to a child process: the child codec carries None, bool, int, float, "
                    "str, list, tuple, dict, Path and the dataclasses and Enums of %s"
                    % (kind.__module__, kind.__qualname__, PACKAGE))


def _type_name(kind: type, what: str) -> str:
    """``module:QualName``, the name ``_package_class`` resolves; only the package's own classes."""
    if not _in_package(kind.__module__) or "<locals>" in kind.__qualname__:
        raise TypeError("cannot send a %s.%s to a child process: only the %s of %s (defined at module level) "
                        "are carried" % (kind.__module__, kind.__qualname__, what, PACKAGE))
    return "%s:%s" % (kind.__module__, kind.__qualname__)


def decode(data: Any) -> Any:
    """The value ``encode`` turned into ``data``."""
    kind = type(data)
    if data is None or kind in _PRIMITIVES or kind is float:
        return data
    if kind is list:
        return [decode(v) for v in data]
    if kind is not dict:
        raise ValueError("child codec: unexpected JSON value of type %s" % kind.__name__)
    keys = set(data)
    if keys == {"enum", "value"}:
        return _enum(data["enum"], data["value"])
    if keys == {"dataclass", "fields"}:
        return _dataclass(data["dataclass"], data["fields"])
    if len(keys) != 1:
        raise ValueError("child codec: expected one tag key, got %s" % sorted(keys))
    (tag, body), = data.items()
    if tag == "tuple" and type(body) is list:
        return tuple(decode(v) for v in body)
    if tag == "dict" and type(body) is dict:
        return {k: decode(v) for k, v in body.items()}
    if tag == "pairs" and type(body) is list and all(type(p) is list and len(p) == 2 for p in body):
        try:
            return {decode(k): decode(v) for k, v in body}
        except TypeError as exc:  # an unhashable key
            raise ValueError("child codec: bad dict key: %s" % exc) from None
    if tag == "path" and type(body) is str:
        return Path(body)
    if tag == "float" and type(body) is str and body in _NON_FINITE:
        return _NON_FINITE[body]
    if tag == "profile":
        return _profile(body)
    raise ValueError("child codec: unknown or malformed tag %r" % tag)


def _enum(name: Any, value: Any) -> Enum:
    kind = _package_class(name)
    if not issubclass(kind, Enum):
        raise ValueError("child codec: %s is not an Enum" % name)
    return kind(decode(value))


def _dataclass(name: Any, fields: Any) -> Any:
    kind = _package_class(name)
    if not (dataclasses.is_dataclass(kind) and isinstance(kind, type)):
        raise ValueError("child codec: %s is not a dataclass" % name)
    if type(fields) is not dict:
        raise ValueError("child codec: the fields of %s are not an object" % name)
    known = {f.name: f for f in dataclasses.fields(kind)}
    unknown = set(fields) - set(known)
    if unknown:
        raise ValueError("child codec: %s has no field(s) %s" % (name, ", ".join(sorted(unknown))))
    values = {k: decode(v) for k, v in fields.items()}
    try:
        obj = kind(**{k: v for k, v in values.items() if known[k].init})
    except TypeError as exc:  # a missing field
        raise ValueError("child codec: cannot construct %s: %s" % (name, exc)) from None
    for k, v in values.items():
        if not known[k].init:  # as the sender had it (``__post_init__`` may have derived it the same way)
            object.__setattr__(obj, k, v)
    return obj


def _package_class(name: Any) -> type:
    """The class ``module:qualname`` if it is defined in this package; ``ValueError`` otherwise.

    Only modules of this package are imported, and the class found must say it was defined where
    the name says (a name re-exported from elsewhere, ``pathlib.Path`` say, is refused)."""
    if type(name) is not str or name.count(":") != 1:
        raise ValueError("child codec: bad type name %r" % (name,))
    module_name, qualname = name.split(":")
    parts = qualname.split(".")
    if not _in_package(module_name) or not all(p.isidentifier() and not p.startswith("__") for p in parts):
        raise ValueError("child codec: refusing type %s (only classes of %s are constructed)" % (name, PACKAGE))
    try:
        found: Any = importlib.import_module(module_name)
        for part in parts:
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError("child codec: unknown type %s: %s" % (name, exc)) from None
    if not (isinstance(found, type) and found.__module__ == module_name and found.__qualname__ == qualname):
        raise ValueError("child codec: refusing type %s (not a class defined there)" % name)
    return found


def _in_package(module_name: str) -> bool:
    return module_name == PACKAGE or module_name.startswith(PACKAGE + ".")


def _profile_class() -> type[TensorRTProfile]:
    from aitune_triton.profile_set import TensorRTProfile  # no heavy imports until one is created

    return TensorRTProfile


def _profile(body: Any) -> TensorRTProfile:
    """A ``TensorRTProfile`` from ``{input: [min, opt, max]}`` shapes of ints."""
    def is_shape(s: Any) -> bool:
        return type(s) is list and all(type(d) is int for d in s)

    if not (type(body) is dict and all(type(v) is list and len(v) == 3 and all(is_shape(s) for s in v)
                                       for v in body.values())):
        raise ValueError("child codec: malformed TensorRTProfile %r" % (body,))
    return _profile_class().from_dict(body)


# ----------------------------------------------------------------------------- exceptions


def encode_exception(exc: BaseException) -> dict[str, Any]:
    """What the parent needs to re-create ``exc``: its type, message and, for the package's
    errors, ``log_path`` and ``details``."""
    kind = type(exc)
    data: dict[str, Any] = {"module": kind.__module__, "qualname": kind.__qualname__, "message": str(exc)}
    if isinstance(exc, AituneError):
        data["log_path"] = None if exc.log_path is None else str(exc.log_path)
        data["details"] = None if exc.details is None else str(exc.details)
    return data


def exception_type(data: dict[str, Any]) -> str:
    """``module.QualName`` of an encoded exception."""
    return "%s.%s" % (data.get("module"), data.get("qualname"))


def decode_exception(data: dict[str, Any]) -> BaseException | None:
    """The exception ``encode_exception`` described, when it is an ``AituneError`` of this package
    or a builtin exception; None for any other (the caller keeps its type and message)."""
    module, qualname, message = data.get("module"), data.get("qualname"), data.get("message")
    if type(message) is not str:
        return None
    if module == "builtins" and type(qualname) is str:
        kind = getattr(builtins, qualname, None)
        if isinstance(kind, type) and issubclass(kind, Exception):
            try:
                return kind(message)
            except Exception:  # noqa: BLE001 - a builtin that takes other arguments (UnicodeDecodeError)
                return None
        return None
    try:
        kind = _package_class("%s:%s" % (module, qualname))
    except ValueError:
        return None
    if not issubclass(kind, AituneError):
        return None
    try:
        parameters = inspect.signature(kind).parameters
    except (TypeError, ValueError):
        return None
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    extra = {k: data.get(k) for k in ("log_path", "details")
             if (k in parameters or takes_any) and type(data.get(k)) is str}
    try:
        return kind(message, **extra)
    except Exception:  # noqa: BLE001 - a constructor that wants more than the message
        return None
