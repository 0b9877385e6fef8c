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

# The serving envelope (aitune_triton/envelope.py): how far generate looks beyond the samples.
# A dynamic axis grows x2, x4, ... up to AXIS_GROWTH_CAP times the samples' largest size (or the
# model's own stated limit), while one batch-1 forward stays under AXIS_PROBE_MAX_MS.
AXIS_GROWTH_CAP = 16
AXIS_PROBE_MAX_MS = 1000.0
# max_batch_size doubles while rows/s improves by BATCH_GAIN and the batch's latency stays under
# --budget-ms (else BATCH_PROBE_MAX_MS), up to the cap of the target device
MAX_BATCH_CAP_GPU = 128
MAX_BATCH_CAP_CPU = 64
BATCH_GAIN = 0.10
BATCH_PROBE_MAX_MS = 1000.0
# a limit the model's config states is run once at batch 1 when at most this long (a 128k-token
# context is probed like an unstated one instead)
MODEL_LIMIT_RUN_CAP = 8192
# the joint corner (max batch, every axis at its max) is checked only under this estimated eager time
CORNER_MAX_MS = 3000.0
# wall-clock spent probing the axes, and again measuring the batch curve, before generate stops growing
ENVELOPE_PROBE_BUDGET_S = 8.0

# ---------------------------------------------------------------------------- validate
VALIDATE_CONCURRENCY = (1, 2, 4, 8)
REQUEST_TIMEOUT_S = 30.0  # per inference request
STARTUP_TIMEOUT_S = 120.0  # for the server to start and for each model to load
# the open-file limit (ulimit -n) a launched tritonserver needs: validating examples/cnn on 2.51, the
# server held 68 descriptors and its Python stub 27 while perf_analyzer ran; each client connection
# adds one, so 256 leaves room for the tuner's highest concurrency (ulimit -n 64 failed mid-load)
MIN_OPEN_FILES = 256
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

# the most a reference.npz / edge_inputs.npz may decompress to (checked from the zip directory before
# loading): generate records a few samples, megabytes; a file claiming more is broken or a bomb
NPZ_MAX_BYTES = 1 << 30

# ---------------------------------------------------------------------------- plan, deploy k8s
PLAN_HEADROOM = 0.3  # fraction of each replica's measured capacity kept free
PLAN_MIN_REPLICAS = 1
# the most a plan (and deploy k8s) writes: beyond these a report is wrong, not a cluster to build
PLAN_MAX_REPLICAS = 10_000
K8S_MAX_GPUS_PER_REPLICA = 64
K8S_SECRET = "aitune-s3-credentials"
K8S_CPU = "4"
K8S_MEMORY = "16Gi"
K8S_SHM_SIZE = "1Gi"
K8S_QUEUE_TARGET_US = 5000  # HPA target: average queue time per request, without a plan


def csv(values: tuple[int, ...]) -> str:
    """``(1, 2, 4)`` as the CLI spells it: ``"1,2,4"``."""
    return ",".join(str(v) for v in values)

# ---------------------------------------------------------------------------- numerics
# float16 / bfloat16 outputs that miss the per-element atol/rtol still match when their relative L2
# error ||actual - expected|| / ||expected|| is at most this (numerics.Tolerance.rel_l2). Measured on
# CPU (random init, float32 as the reference): BERT-base float16 1.5e-3 and bfloat16 1.2e-2, ViT-B/16 float16
# 3.8e-3 and bfloat16 1.1e-2, a deep residual CNN float16 4e-4; a sign flip is 2, one wrong row in 8 ~0.5.
REL_L2_FLOAT16 = 0.02
REL_L2_BFLOAT16 = 0.05
