"""Served (generated repository on Triton) vs in-process PyTorch, measured in one run.

For each model: generate the repository with this project's own code, measure in-process eager
PyTorch with CUDA events (perf_counter on CPU) at several batch sizes, serve the generated model
and a naive config of it (no dynamic batching, one instance) on the bundled Triton, measure both
with perf_analyzer over gRPC (system shared memory on the GPU), and print the ratios.

GPU machine (see benchmarks/run_gpu.sh):   python benchmarks/gpu_serving.py --device cuda --out OUT
CPU (2 cores, a few minutes):              .venv/bin/python benchmarks/gpu_serving.py --device cpu --models cnn
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aitune_triton.api import generate  # noqa: E402
from aitune_triton.source import load_model_source  # noqa: E402
from aitune_triton.triton.perf import PerfOptions, run_perf, write_input_data_json  # noqa: E402
from aitune_triton.triton.launch import ServerOptions  # noqa: E402
from aitune_triton.triton.server import TritonServer  # noqa: E402
from aitune_triton.triton.manifest import Manifest  # noqa: E402
from aitune_triton.reference_data import load_reference  # noqa: E402
from aitune_triton.validate.checks.target import Endpoint, ModelTarget, Session  # noqa: E402
from aitune_triton.validate.checks.accuracy import check_accuracy  # noqa: E402

RESNET = '''
import torch, torchvision

def get_model():
    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None).eval().half().to(memory_format=torch.channels_last)

def get_samples():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, 3, 224, 224, generator=g).half() for b in (1, 8, 32, 64)]

'''
ENCODER = '''
import sys
sys.path.insert(0, {examples!r})
import torch
from encoder.model import TinyEncoder

def get_model():
    torch.manual_seed(0)
    return TinyEncoder(dim=256, heads=4, layers=4).eval().half()

def get_samples():
    g = torch.Generator().manual_seed(0)
    out = []
    for b in (1, 8, 32, 64):
        out.append({{"input_ids": torch.randint(0, 1000, (b, 128), generator=g),
                     "attention_mask": torch.ones(b, 128, dtype=torch.int64)}})
    return out

'''
CNN_CPU = '''
import sys
sys.path.insert(0, {examples!r})
from cnn.model import get_model, get_samples

'''
SOURCES = {"resnet50": RESNET, "encoder": ENCODER, "cnn": CNN_CPU}
MAX_BATCH = {"resnet50": 64, "encoder": 64, "cnn": 8}
CONFIG = '''
def get_config():
    from aitune_triton import GenerateConfig
    return GenerateConfig(name="{name}", backends=("python",), max_batch_size={max_batch}, device="{device}",
                          fallback_format="{fmt}", max_queue_delay_us={delay}, instances={instances},
                          atol=0.25, rtol=0.05)
'''


def eager_bench(model_py: Path, device: str, batches: list[int], iters: int) -> list[dict]:
    """In-process eager PyTorch: median latency per batch size (CUDA events on GPU)."""
    src = load_model_source(model_py)
    model = src.model.to(device)
    base = src.samples[-1]
    rows = []
    for b in batches:
        def take(t, b=b):
            reps = -(-b // t.shape[0])
            return t.repeat(reps, *([1] * (t.dim() - 1)))[:b].to(device)
        args = [take(t) for t in base.args]
        kwargs = {k: take(v) for k, v in base.kwargs.items()}
        times = []
        with torch.inference_mode():
            for i in range(iters + 10):
                if device == "cuda":
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    model(*args, **kwargs)
                    end.record()
                    torch.cuda.synchronize()
                    ms = start.elapsed_time(end)
                else:
                    t0 = time.perf_counter()
                    model(*args, **kwargs)
                    ms = (time.perf_counter() - t0) * 1000
                if i >= 10:
                    times.append(ms)
        med = statistics.median(times)
        rows.append({"batch": b, "latency_ms": med, "throughput": b / med * 1000})
    return rows


def naive_copy(repo: Path, name: str) -> str:
    """The same model with no dynamic batching and one instance: what a hand-written config often is."""
    naive = name + "_naive"
    shutil.copytree(repo / name, repo / naive)
    text = (repo / naive / "config.pbtxt").read_text()
    import re
    text = re.sub(r'name: "%s"' % name, 'name: "%s"' % naive, text)
    text = re.sub(r"dynamic_batching \{[^}]*\}\n", "", text)
    text = re.sub(r"count: \d+", "count: 1", text)
    (repo / naive / "config.pbtxt").write_text(text)
    return naive


def perf_inputs(repo: Path, name: str, workdir: Path) -> tuple[Path | None, dict]:
    manifest = Manifest.load(repo / name)
    case = load_reference(repo / name / "reference.npz")[0]
    item = {k: v[:1] for k, v in case.inputs.items()}
    if any(manifest.spec.input(k).dtype in ("float16", "bfloat16") for k in item):
        return None, {}  # perf_analyzer takes no JSON content for fp16; static dims, so random data
    path = write_input_data_json([item], workdir / ("%s_input.json" % name))
    shapes = {k: tuple(v.shape[1:]) for k, v in item.items()
              if any(d == -1 for d in manifest.spec.input(k).triton_dims())}
    return path, shapes


def serve_bench(repo: Path, names: list[str], concurrency: tuple[int, ...], shm: str, request_count: int,
                workdir: Path) -> dict:
    options = ServerOptions(tritonserver=Path(os.environ["TRITONSERVER"]) if os.environ.get("TRITONSERVER") else None,
                            model_control_mode="explicit", startup_timeout_s=600,
                            extra_args=(("--backend-directory=%s" % os.environ["TRITON_BACKENDS"],)
                                        if os.environ.get("TRITON_BACKENDS") else ()))
    results = {}
    with TritonServer(repo, options, log_path=workdir / "tritonserver.log") as server:
        for name in names:
            t0 = time.time()
            server.load_model(name, timeout_s=900)
            load_s = time.time() - t0
            if not name.endswith("_naive"):
                with Session(Endpoint(server.http_url, server.grpc_url, timeout_s=120)) as session:
                    target = ModelTarget.load(repo / name)
                    checks = [check_accuracy(target, session, p) for p in ("grpc", "http")]
                print("%s correctness: %s" % (name, [(c.name, c.status, c.detail) for c in checks]), flush=True)
            data, shapes = perf_inputs(repo, name.replace("_naive", ""), workdir)
            popts = PerfOptions(concurrency=concurrency, shared_memory=shm, measurement_request_count=request_count,
                                stability_percentage=50, max_trials=6, input_data=data, shapes=shapes, timeout_s=240)
            res = run_perf(name, server.grpc_url, popts, workdir=workdir / name)
            rows = [dict(r.__dict__, stable=True) for r in res.rows]
            if res.unstable:
                # a noisy point is re-measured with the stability bound lifted, and marked as such
                loose = dataclasses.replace(popts, concurrency=tuple(res.unstable), stability_percentage=1000,
                                            max_trials=3)
                rows += [dict(r.__dict__, stable=False)
                         for r in run_perf(name, server.grpc_url, loose, workdir=workdir / (name + "_loose")).rows]
                rows.sort(key=lambda r: r["concurrency"])
            results[name] = {"load_s": load_s, "checks": [] if name.endswith("_naive") else
                             [c.to_dict() for c in checks], "unstable": list(res.unstable), "rows": rows}
            print("%s: %s" % (name, [(r["concurrency"], round(r["throughput"], 1), round(r["p50_ms"], 2))
                                     for r in rows]), flush=True)
            server.unload_model(name)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--models", default="resnet50,encoder")
    ap.add_argument("--format", default="aoti", choices=("aoti", "export", "eager"))
    ap.add_argument("--out", type=Path, default=Path("bench_out"))
    ap.add_argument("--concurrency", default="1,2,4,8,16,32,64")
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--request-count", type=int, default=1000)
    ap.add_argument("--instances", type=int, default=1)
    ap.add_argument("--delay-us", type=int, default=500)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="aitune-bench-"))
    concurrency = tuple(int(c) for c in args.concurrency.split(","))
    batches = [int(b) for b in args.batches.split(",")]
    shm = "system" if args.device == "cuda" else "none"
    summary: dict = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
               "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
               "models": {}}
    for name in args.models.split(","):
        src_dir = work / name
        src_dir.mkdir()
        (src_dir / "model.py").write_text((textwrap.dedent(SOURCES[name]) + CONFIG).format(
            name=name, max_batch=MAX_BATCH[name], device=args.device, fmt=args.format, delay=args.delay_us,
            instances=args.instances, examples=str(ROOT / "examples")))
        repo = work / "repo"
        t0 = time.time()
        result = generate(src_dir / "model.py", repo, force=True, progress=lambda m: print("  " + m, flush=True))
        gen_s = time.time() - t0
        detail = [m.detail for m in result.models]
        print("%s generated in %.0fs: %s" % (name, gen_s, detail), flush=True)
        eager = eager_bench(src_dir / "model.py", args.device, batches, 50 if args.device == "cuda" else 20)
        print("%s eager: %s" % (name, eager), flush=True)
        naive = naive_copy(repo, name)
        served = serve_bench(repo, [name, naive], concurrency, shm, args.request_count, work)
        gen_rows, naive_rows = served[name]["rows"], served[naive]["rows"]
        peak_served = max((r["throughput"] for r in gen_rows), default=0.0)
        peak_eager = max(r["throughput"] for r in eager)
        c1 = [r for r in gen_rows if r["concurrency"] == 1]
        at32 = {r["concurrency"]: r["throughput"] for r in gen_rows}
        naive32 = {r["concurrency"]: r["throughput"] for r in naive_rows}
        cref = 32 if 32 in at32 and 32 in naive32 else max(set(at32) & set(naive32), default=None)
        ratios = {
            "served_peak_over_eager_peak": peak_served / peak_eager if peak_eager else None,
            "served_p50_c1_over_eager_b1": (c1[0]["p50_ms"] / eager[0]["latency_ms"]) if c1 else None,
            "generated_over_naive_at_c%s" % cref: (at32[cref] / naive32[cref]) if cref else None,
        }
        summary["models"][name] = {"generate_s": gen_s, "artifact": detail, "eager": eager, "served": served,
                                   "ratios": ratios}
        print("%s ratios: %s" % (name, json.dumps(ratios)), flush=True)
        shutil.rmtree(repo, ignore_errors=True)
        (args.out / "gpu_serving.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v["ratios"] for k, v in summary["models"].items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
