"""Soak: N requests at a fixed concurrency against a generated model on the embedded server.

Every response is checked against eager PyTorch for its own input; the resident memory of the
server and its Python-backend stubs is compared after warm-up and at the end.

    .venv/bin/python benchmarks/soak.py --requests 20000 --concurrency 16
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import tritonclient.grpc as grpcclient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aitune_triton.api import generate  # noqa: E402
from aitune_triton.source import load_model_source  # noqa: E402
from aitune_triton.triton.launch import ServerOptions  # noqa: E402
from aitune_triton.procs import group_members  # noqa: E402
from aitune_triton.triton.server import TritonServer  # noqa: E402


def rss_mb(pgid: int) -> float:
    total = 0
    for pid in group_members(pgid):
        try:
            for line in Path("/proc/%d/status" % pid).read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--pool", type=int, default=64, help="distinct inputs (eager outputs precomputed)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="aitune-soak-"))
    model_py = ROOT / "examples" / "cnn" / "model.py"
    generate(model_py, work / "repo", {"backends": ("python",), "fallback_format": "export"})
    model = load_model_source(model_py).model
    g = torch.Generator().manual_seed(7)
    inputs = [torch.randn(1, 3, 32, 32, generator=g) for _ in range(args.pool)]
    with torch.inference_mode():
        expected = [model(x).numpy() for x in inputs]
    arrays = [x.numpy() for x in inputs]
    server = TritonServer(work / "repo", ServerOptions(load_models=("cnn",)), log_path=work / "server.log").start()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    lock = threading.Condition()
    state = {"in_flight": 0, "done": 0, "failed": 0, "wrong": 0}

    def send(i: int) -> None:
        k = i % args.pool
        inp = grpcclient.InferInput("image", [1, 3, 32, 32], "FP32")
        inp.set_data_from_numpy(arrays[k])

        def callback(result, error, k=k):
            with lock:
                if error is not None:
                    state["failed"] += 1
                elif not np.allclose(result.as_numpy("output_0"), expected[k], atol=1e-4, rtol=1e-3):
                    state["wrong"] += 1
                state["done"] += 1
                state["in_flight"] -= 1
                lock.notify()

        with lock:
            while state["in_flight"] >= args.concurrency:
                lock.wait()
            state["in_flight"] += 1
        client.async_infer("cnn", [inp], callback, client_timeout=60)

    def run(n: int, offset: int) -> float:
        t0 = time.monotonic()
        for i in range(n):
            send(offset + i)
        with lock:
            while state["in_flight"]:
                lock.wait()
        return time.monotonic() - t0

    pgid = server.pid
    if pgid is None:
        raise RuntimeError("tritonserver has no pid: it did not start")
    try:
        run(args.warmup, 0)
        rss_warm = rss_mb(pgid)
        seconds = run(args.requests, args.warmup)
        rss_end = rss_mb(pgid)
        result = {"requests": args.requests, "warmup_requests": args.warmup, "concurrency": args.concurrency,
                  "seconds": round(seconds, 1), "throughput": round(args.requests / seconds, 1),
                  "failed": state["failed"], "wrong": state["wrong"], "checked": state["done"],
                  "rss_after_warmup_mb": round(rss_warm, 1), "rss_end_mb": round(rss_end, 1),
                  "rss_growth_pct": round(100 * (rss_end - rss_warm) / rss_warm, 2),
                  "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}
    finally:
        client.close()
        server.stop()
    print(json.dumps(result, indent=2))
    return 0 if result["failed"] == 0 and result["wrong"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
