"""Security properties that must hold everywhere in the package."""
import ast
from pathlib import Path

from aitune_triton.triton.server import Ports, ServerOptions, build_command

PACKAGE = Path(__file__).resolve().parents[1] / "aitune_triton"
TEMPLATES = Path(__file__).resolve().parents[1] / "templates"


def _calls(tree):
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def test_no_shell_true_anywhere():
    offenders = []
    for path in list(PACKAGE.rglob("*.py")) + [Path(__file__).resolve().parents[1] / "benchmarks" / p
                                                for p in ("gpu_serving.py",)]:
        for call in _calls(ast.parse(path.read_text())):
            for kw in call.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    offenders.append("%s:%d" % (path, call.lineno))
    assert not offenders


def test_no_pickle_loads_in_package_or_templates():
    for path in list(PACKAGE.rglob("*.py")) + list(TEMPLATES.glob("*.j2")):
        text = path.read_text()
        assert "pickle.load" not in text, path
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, "%s: %s" % (path, line.strip())


def test_server_binds_loopback_by_default():
    opts = ServerOptions()
    assert opts.host == "127.0.0.1"
    cmd = build_command(Path("/repo"), opts, Ports(1, 2, 3), binary=Path("/bin/tritonserver"),
                        backend_directory=Path("/b"), flags=frozenset())
    joined = " ".join(cmd)
    assert "--http-address=127.0.0.1" in joined and "--grpc-address=127.0.0.1" in joined
    assert "0.0.0.0" not in joined


def test_templates_use_strict_undefined():
    from jinja2 import StrictUndefined

    from aitune_triton.templating import template_env

    assert template_env().undefined is StrictUndefined
