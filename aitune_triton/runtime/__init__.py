"""The Python-backend runtime that serves a PyTorch fallback inside Triton.

Its modules are copied verbatim into each generated version directory
(``aitune_triton.triton.python_model.write_python_model``), next to the per-model data file
``aitune_model.json``. ``model.py`` runs in Triton's stub, where only the model directory and the
stub's own Python environment exist; ``aitune_runtime.py`` holds its pure, unit-tested parts.
``aitune_eager.py`` (how the eager format is rebuilt) is also imported by the generator, so the
check of an eager artifact and the served model rebuild it with the same code.
"""

from __future__ import annotations

from importlib import resources

RUNTIME_FILES = ("model.py", "aitune_runtime.py", "aitune_staging.py", "aitune_eager.py")
# the raw-data pipeline's pre/post model, copied as ``model.py`` into ``<name>_pre`` and ``<name>_post``
PIPELINE_FILES = ("aitune_pipeline.py",)
# beside it: the copy of the user's model.py whose hooks it runs
PIPELINE_USER_FILE = "user_model.py"


def runtime_source(name: str) -> bytes:
    """The bytes of one runtime file, as shipped in the package."""
    if name not in RUNTIME_FILES + PIPELINE_FILES:
        raise ValueError("not a runtime file: %r" % name)
    return resources.files(__name__).joinpath(name).read_bytes()
