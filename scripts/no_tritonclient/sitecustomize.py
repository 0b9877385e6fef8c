"""Put this folder first on PYTHONPATH to run Python as if tritonclient were not installed.

A meta-path finder, installed by sitecustomize before anything else runs, makes ``import tritonclient`` fail:
``generate`` must work in a GPU image that has torch but no Triton client (the tests and the GPU acceptance
lane use it).
"""

import sys

HIDDEN = "hidden by scripts/no_tritonclient"


class _NoTritonClient:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tritonclient", "tritongrpcclient"):
            raise ModuleNotFoundError("No module named %r (%s)" % (name, HIDDEN), name=name)
        return None


sys.meta_path.insert(0, _NoTritonClient())
