"""Defaults shared by the command line and the option dataclasses, each defined once.

The CLI shows these in ``--help`` and the dataclasses (``GenerateConfig``, ``MappingOptions``,
``ValidateOptions``, ``TuneOptions``, ``PlanRequest``, ``DeploySpec``...) default to them, so the
two cannot drift. This module imports nothing, so ``aitune-triton --help`` stays fast.
"""

from __future__ import annotations

# ---------------------------------------------------------------------------- generate
# Dynamic-batching queue delay: short enough to be invisible at low load, long enough to form
# batches under concurrency (500-2000 us measured as the useful range on CPU).
QUEUE_DELAY_US = 500
# time limit for importing model.py and for its get_samples()/get_config() (get_model() and forward are
# not limited: they may download or compute for long); a loop that never ends is stopped here
MODEL_PY_TIMEOUT_S = 600.0
# an artifact for this host (AOTInductor when it matches eager: the fastest, but machine code for this
# CPU's instruction set and GPU) rather than one that loads on any host (--portable)
PORTABLE = False

# ---------------------------------------------------------------------------- validate
VALIDATE_CONCURRENCY = (1, 2, 4, 8)
REQUEST_TIMEOUT_S = 30.0  # per inference request
STARTUP_TIMEOUT_S = 120.0  # for the server to start and for each model to load
PERF_REQUEST_COUNT = 200  # requests per perf_analyzer measurement window
PERF_STABILITY_PCT = 20.0  # perf_analyzer --stability-percentage

# ---------------------------------------------------------------------------- serve
# Triton's own default ports (tests and validate pick free ones instead)
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
LOOPBACK = "127.0.0.1"
# on SIGTERM, how long tritonserver waits for open connections and in-flight requests before it exits
# (its --exit-timeout-secs; Triton's own default is 30 s); the stop then allows this plus STOP_MARGIN_S to
# unload the models before it kills the server
SERVER_EXIT_TIMEOUT_S = 10
SERVER_STOP_MARGIN_S = 15.0

# ---------------------------------------------------------------------------- tune grid
TUNE_INSTANCES = (1, 2, 4)
TUNE_DELAYS_US = (0, 100, 250, 500, 1000, 2000)
TUNE_CONCURRENCY = (1, 2, 4, 8, 16, 32)
# perf_analyzer --stability-percentage per tuning point: 1 s windows in a 30 % band settle on a busy
# 2-core machine in 3-6 s; the spread of the windows is reported either way
TUNE_PERF_STABILITY_PCT = 30.0

# ---------------------------------------------------------------------------- plan, deploy k8s
PLAN_HEADROOM = 0.3  # fraction of each replica's measured capacity kept free
PLAN_MIN_REPLICAS = 1
K8S_SECRET = "aitune-s3-credentials"
K8S_CPU = "4"
K8S_MEMORY = "16Gi"
K8S_SHM_SIZE = "1Gi"
K8S_QUEUE_TARGET_US = 5000  # HPA target: average queue time per request, without a plan


def csv(values: tuple[int, ...]) -> str:
    """``(1, 2, 4)`` as the CLI spells it: ``"1,2,4"``."""
    return ",".join(str(v) for v in values)
