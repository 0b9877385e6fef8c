"""GPU serving matrix: transport x client batch x concurrency x instances x GPUs, against in-process peaks.

One run generates each model with this checkout's `generate`, derives the serving variants from the
generated directory (instances per GPU, which GPUs; optionally the same model rendered by an older
checkout, ``--before``), measures in-process eager / CUDA-graph / graph+pinned-H2D throughput with CUDA
events, then serves every variant at once on the bundled Triton and runs perf_analyzer over gRPC with
plain messages, system shared memory or CUDA shared memory. Each point records perf_analyzer's client
latencies and the server-side breakdown (queue, compute input/infer/output). The JSON is rewritten after
every point, and points that would overrun ``--budget-s`` are skipped, so a run cut short still reports.

On the GPU machine (see benchmarks/run_gpu_matrix.sh):
    python benchmarks/gpu_matrix.py --kind h200 --out OUT [--before .bench_before]
Here, from result files:
    python benchmarks/gpu_matrix.py --report benchmarks/results/gpu_matrix_h200.json ... --plot PNG
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESNET = '''
import torch, torchvision

def get_model():
    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None).eval().half().to(memory_format=torch.channels_last)

def get_samples():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, 3, 224, 224, generator=g).half() for b in (1, 4, 8)]
'''
# BERT-base-sized encoder from plain torch.nn (no download, exports cleanly): 12 layers, hidden 768,
# 12 heads, FFN 3072, seq 128; returns the pooled [CLS] vector, as an embedding/classifier service would.
BERT = '''
import torch
from torch import nn
import torch.nn.functional as F


class Layer(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, 4 * dim)
        self.ff2 = nn.Linear(4 * dim, dim)
        self.ln2 = nn.LayerNorm(dim)

    def forward(self, x, bias):
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(b, s, d)
        x = self.ln1(x + self.proj(a))
        return self.ln2(x + self.ff2(F.gelu(self.ff1(x))))


class BertBase(nn.Module):
    def __init__(self, vocab=30522, dim=768, heads=12, layers=12, seq=128):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(seq, dim)
        self.ln = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(Layer(dim, heads) for _ in range(layers))
        self.pool = nn.Linear(dim, dim)

    def forward(self, input_ids, attention_mask):
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.ln(self.tok(input_ids) + self.pos(pos))
        bias = ((1 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0)
        for layer in self.layers:
            x = layer(x, bias)
        return torch.tanh(self.pool(x[:, 0]))


def get_model():
    torch.manual_seed(0)
    return BertBase().eval().half()


def get_samples():
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(0, 30522, (b, 128), generator=g),
             "attention_mask": torch.ones(b, 128, dtype=torch.int64)} for b in (1, 2, 4)]
'''
# --smoke: the whole pipeline on the CPU with the small example (no in-process peaks, no CUDA shm)
CNN = '''
import sys
sys.path.insert(0, {examples!r})
from cnn.model import get_model, get_samples
'''
SOURCES = {"resnet50": RESNET, "bert": BERT, "cnn": CNN}
CONFIG = '''
def get_config():
    from aitune_triton import GenerateConfig
    return GenerateConfig(name="{name}", backends=("python",), max_batch_size={max_batch}, device="{device}",
                          fallback_format="export", max_queue_delay_us={delay}, instances=1,
                          atol=0.25, rtol=0.05)
'''
TRANSPORTS = {"grpc": "none", "system_shm": "system", "cuda_shm": "cuda"}


# --------------------------------------------------------------------------------------------- plan
def plan_points(kind: str, models: list[str], before: bool) -> list[dict]:
    """The pruned matrix for one machine kind, most important points first (a cut-short run keeps them).

    A variant is (code, instances per GPU, GPUs). The one-GPU kind measures every transport x batch with
    a short concurrency sweep for one instance, the high-concurrency points for two instances, and the
    older code at the issue's reference points; the two-GPU kind measures one GPU against two at the
    points where the GPU is saturated, plus the two-instance case there.
    """
    sweep = {1: (1, 16, 64), 8: (2, 16), 16: (1, 8)}
    high = {1: 64, 8: 16, 16: 8}
    points = []
    for model in models:
        def add(code, inst, gpus, transport, batch, conc, model=model):
            points.append({"model": model, "code": code, "instances": inst, "gpus": gpus, "transport": transport,
                           "batch": batch, "concurrency": conc})
        if kind == "h200":
            for transport in ("system_shm", "cuda_shm", "grpc"):
                for batch, levels in sweep.items():
                    for c in levels:
                        add("new", 1, (0,), transport, batch, c)
            for transport in ("system_shm", "cuda_shm"):
                for batch, c in high.items():
                    add("new", 2, (0,), transport, batch, c)
            add("new", 2, (0,), "grpc", 1, 64)
            if before:
                add("before", 1, (0,), "system_shm", 1, 64)
                add("before", 1, (0,), "cuda_shm", 16, 8)
                add("before", 2, (0,), "system_shm", 1, 64)
                add("before", 2, (0,), "system_shm", 8, 16)
        elif kind == "h200i":  # one GPU, instances only: 1 vs 2 per GPU with the committed thread default
            for transport, batch, c in (("system_shm", 1, 64), ("system_shm", 8, 16), ("cuda_shm", 1, 64),
                                        ("cuda_shm", 16, 8)):
                add("new", 1, (0,), transport, batch, c)
                add("new", 2, (0,), transport, batch, c)
            if before:
                add("before", 1, (0,), "system_shm", 1, 64)
                add("before", 2, (0,), "system_shm", 1, 64)
        else:  # h200x2
            for transport in ("system_shm", "cuda_shm"):
                for batch, c in ((1, 64), (1, 128), (16, 8), (16, 16)):
                    add("new", 1, (0,), transport, batch, c)
                    add("new", 1, (0, 1), transport, batch, c)
            for transport in ("system_shm", "cuda_shm"):
                for batch, c in ((1, 64), (16, 16)):
                    add("new", 2, (0,), transport, batch, c)
                    add("new", 2, (0, 1), transport, batch, c)
            add("new", 1, (0,), "grpc", 8, 16)
            add("new", 1, (0, 1), "grpc", 8, 16)
            # one torch thread per stub (is the host path CPU-bound?) and no queue delay (latency at c=1)
            add("new+t1", 1, (0,), "system_shm", 1, 64)
            add("new+t1", 2, (0,), "system_shm", 1, 64)
            add("new+d0", 1, (0,), "cuda_shm", 1, 1)
            add("new+d0", 1, (0,), "system_shm", 1, 1)
            if before:
                add("before", 1, (0,), "system_shm", 1, 64)  # the older runtime cannot serve BERT on GPU 1
                add("before", 2, (0,), "system_shm", 1, 64)
    # interleave the models so that a cut-short run still covers both
    by_model = [[p for p in points if p["model"] == m] for m in models]
    out = []
    for i in range(max(len(b) for b in by_model)):
        out += [b[i] for b in by_model if i < len(b)]
    return out


def variant_name(p: dict) -> str:
    return "%s_%s_i%d_g%s" % (p["model"], p["code"].replace("+", ""), p["instances"],
                              "".join(str(g) for g in p["gpus"]))


# modifiers after "+" in a point's code: settings changed in the derived config
MODS = {"t1": "TORCH_NUM_THREADS=1", "d0": "max_queue_delay_microseconds 0"}


# --------------------------------------------------------------------------------------------- build
def write_source(work: Path, model: str, name: str, max_batch: int, delay_us: int, device: str) -> Path:
    d = work / "src" / name
    d.mkdir(parents=True, exist_ok=True)
    text = textwrap.dedent(SOURCES[model]).replace("{examples!r}", repr(str(ROOT / "examples")))
    (d / "model.py").write_text(text + CONFIG.format(name=name, max_batch=max_batch, delay=delay_us, device=device))
    return d / "model.py"


def generate_all(jobs: Sequence[tuple[Path | None, Path]], repo: Path, work: Path, log) -> None:
    """Generate every (code root, model.py) at once, each in its own child process and scratch repository
    (this checkout when the root is None; the children never share imported modules), then move the
    model directories into ``repo``."""
    procs = []
    for code_root, model_py in jobs:
        env = dict(os.environ)
        rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != ROOT]
        env["PYTHONPATH"] = os.pathsep.join([str(code_root or ROOT)] + rest)
        scratch = work / "gen" / model_py.parent.name
        scratch.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-c", "import sys; from aitune_triton.cli import main; sys.exit(main())",
               "generate", str(model_py), "--out", str(scratch)]
        procs.append((model_py, code_root, scratch, time.time(),
                      subprocess.Popen(cmd, env=env, cwd=str(code_root or ROOT), stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)))
    failed = []
    for model_py, code_root, scratch, t0, proc in procs:
        out, _ = proc.communicate()
        log("generate %s (%s): exit %d in %.0fs\n%s" % (model_py.parent.name, code_root or "this checkout",
                                                         proc.returncode, time.time() - t0, out[-1500:]))
        if proc.returncode != 0:
            failed.append(model_py.parent.name)
        else:
            repo.mkdir(parents=True, exist_ok=True)
            shutil.move(str(scratch / model_py.parent.name), str(repo / model_py.parent.name))
    if failed:
        raise RuntimeError("generate failed for %s" % ", ".join(failed))


def derive_variant(repo: Path, base: str, name: str, instances: int, gpus: tuple[int, ...], cpu: bool = False,
                   mods: tuple[str, ...] = ()) -> None:
    """Copy ``base`` to ``name`` with one explicit instance group: ``instances`` per GPU on ``gpus``
    (``cpu``: that many CPU instances, for --smoke)."""
    shutil.copytree(repo / base, repo / name)
    cfg = repo / name / "config.pbtxt"
    text = cfg.read_text()
    text = re.sub(r'^name: "[^"]*"', 'name: "%s"' % name, text, count=1, flags=re.M)
    group = ("instance_group {\n  count: %d\n  kind: KIND_CPU\n}\n" % instances if cpu else
             "instance_group {\n  count: %d\n  kind: KIND_GPU\n  gpus: [ %s ]\n}\n" % (
                 instances, ", ".join(str(g) for g in gpus)))
    text, n = re.subn(r"instance_group \{[^}]*\}\n", "", text)  # every group the generator wrote
    if n < 1:
        raise RuntimeError("no instance_group in %s" % cfg)
    text = re.sub(r"(max_batch_size: \d+\n)", lambda m: m.group(1) + group, text, count=1)
    # the stub logs where execute() spends its time (read by stage_times(); older runtimes ignore it)
    text += 'parameters { key: "AITUNE_STAGE_TIMES" value { string_value: "1" } }\n'
    if "t1" in mods:
        text += 'parameters { key: "TORCH_NUM_THREADS" value { string_value: "1" } }\n'
    if "d0" in mods:
        text = re.sub(r"max_queue_delay_microseconds: \d+", "max_queue_delay_microseconds: 0", text)
    cfg.write_text(text)


STAGE_LINE = re.compile(r"aitune stage times \((?P<model>[^)]*)\) over (?P<n>\d+) executes: "
                        r"(?P<req>[\d.]+) requests each; "
                        r"read (?P<read>\d+) us, launch (?P<launch>\d+) us, gpu wait (?P<wait>\d+) us, "
                        r"respond (?P<respond>\d+) us")


def stage_times(log_text: str, model: str) -> dict | None:
    """The last stage-time line the stub logged for ``model`` in ``log_text``."""
    found = [m for m in STAGE_LINE.finditer(log_text) if m.group("model") == model]
    if not found:
        return None
    m = found[-1]
    return {"executes": int(m.group("n")), "requests_per_execute": float(m.group("req")),
            **{k: int(m.group(k)) for k in ("read", "launch", "wait", "respond")}}


# --------------------------------------------------------------------------------------------- in-process
def inprocess_peaks(model_py: Path, batches: list[int], iters: int) -> dict:
    """Eager, CUDA-graph replay and graph replay with the pinned-host H2D copy inside the timed region,
    median latency by CUDA events per batch size, data on cuda:0."""
    import torch

    from aitune_triton.source import load_model_source

    src = load_model_source(model_py)
    model = src.model.cuda()
    base = src.samples[-1]
    rows: dict[str, list[dict]] = {"eager": [], "graph": [], "graph_h2d": []}

    def take(t, b):
        reps = -(-b // t.shape[0])
        return t.repeat(reps, *([1] * (t.dim() - 1)))[:b].contiguous()

    def timed(fn):
        times = []
        for i in range(iters + 5):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            if i >= 5:
                times.append(start.elapsed_time(end))
        return statistics.median(times)

    with torch.inference_mode():
        for b in batches:
            host = ([take(t, b).pin_memory() for t in base.args]
                    + [take(v, b).pin_memory() for v in base.kwargs.values()])
            keys = list(base.kwargs)
            dev = [h.cuda() for h in host]

            def call(ts, keys=keys, model=model):
                return model(*ts[:len(base.args)], **dict(zip(keys, ts[len(base.args):], strict=True)))

            ms = timed(lambda dev=dev: call(dev))
            rows["eager"].append({"batch": b, "latency_ms": ms, "throughput": b / ms * 1000})
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    call(dev)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                call(dev)
            ms = timed(graph.replay)
            rows["graph"].append({"batch": b, "latency_ms": ms, "throughput": b / ms * 1000})

            def h2d_replay(dev=dev, host=host, graph=graph):
                for d, h in zip(dev, host, strict=True):
                    d.copy_(h, non_blocking=True)
                graph.replay()
            ms = timed(h2d_replay)
            rows["graph_h2d"].append({"batch": b, "latency_ms": ms, "throughput": b / ms * 1000})
            del h2d_replay, graph
    peaks = {k: max(r["throughput"] for r in v) for k, v in rows.items()}
    del model
    torch.cuda.empty_cache()
    return {"rows": rows, "peaks": peaks}


# --------------------------------------------------------------------------------------------- serving
def perf_data(repo: Path, name: str, work: Path):
    """perf_analyzer input data: recorded sample values for integer inputs (random ids would leave the
    vocabulary), random data otherwise (perf_analyzer takes no JSON content for fp16)."""
    from aitune_triton.triton.manifest import Manifest
    from aitune_triton.reference_data import load_reference
    from aitune_triton.triton.perf import write_input_data_json

    manifest = Manifest.load(repo / name)
    case = load_reference(repo / name / "reference.npz")[0]
    if any(manifest.spec.input(k).dtype in ("float16", "bfloat16") for k in case.inputs):
        return None
    return write_input_data_json([{k: v[:1] for k, v in case.inputs.items()}], work / ("%s_input.json" % name))


def measure(points: list[dict], repo: Path, work: Path, args, summary: dict, save, log, t_start: float) -> None:
    from aitune_triton.errors import PerfError
    from aitune_triton.triton.perf import PerfOptions, run_perf
    from aitune_triton.triton.launch import ServerOptions
    from aitune_triton.triton.server import TritonServer
    from aitune_triton.validate.checks.target import Endpoint, ModelTarget, Session
    from aitune_triton.validate.checks.accuracy import check_accuracy

    names = sorted({variant_name(p) for p in points})
    options = ServerOptions(tritonserver=Path(os.environ["TRITONSERVER"]) if os.environ.get("TRITONSERVER") else None,
                            model_control_mode="explicit", load_models=tuple(names), startup_timeout_s=420,
                            extra_args=(("--backend-directory=%s" % os.environ["TRITON_BACKENDS"],)
                                        if os.environ.get("TRITON_BACKENDS") else ()))
    t0 = time.time()
    with TritonServer(repo, options, log_path=args.out / "tritonserver.log") as server:
        summary["load_s"] = time.time() - t0
        log("server up with %d models in %.0fs" % (len(names), summary["load_s"]))
        with Session(Endpoint(server.http_url, server.grpc_url, timeout_s=120)) as session:
            for name in names:
                if "_new_i1_" in name or "_before_i1_" in name:
                    c = check_accuracy(ModelTarget.load(repo / name), session, "grpc")
                    summary["checks"][name] = c.to_dict()
                    log("%s accuracy: %s %s" % (name, c.status, c.detail))
        data = {n: perf_data(repo, n, work) for n in names}
        for i, p in enumerate(points):
            elapsed = time.time() - t_start
            if elapsed + args.point_s > args.budget_s:
                p["skipped"] = "budget"
                summary["points"].append(p)
                continue
            name = variant_name(p)
            popts = PerfOptions(concurrency=(p["concurrency"],), shared_memory=TRANSPORTS[p["transport"]],
                                batch_size=p["batch"], measurement_mode="time_windows",
                                measurement_interval_ms=args.window_ms, max_trials=5, stability_percentage=1000,
                                input_data=data[name], timeout_s=90)
            t1 = time.time()
            log_path = args.out / "tritonserver.log"
            offset = log_path.stat().st_size if log_path.exists() else 0
            try:
                res = run_perf(name, server.grpc_url, popts, workdir=work / "perf" / ("%03d" % i))
                row = res.rows[0].__dict__ if res.rows else None
                p["error"] = None if row else "unstable"
            except PerfError as exc:
                row, p["error"] = None, str(exc).splitlines()[0][:300]
            p["seconds"] = round(time.time() - t1, 1)
            if log_path.exists():
                with open(log_path, errors="replace") as f:
                    f.seek(offset)
                    p["stub_stage_us"] = stage_times(f.read(), name)
            if row:
                p.update({k: v for k, v in row.items() if k != "concurrency"})
            summary["points"].append(p)
            save()
            log("%-28s %-10s b%-2d c%-3d %s" % (name, p["transport"], p["batch"], p["concurrency"],
                "%.0f/s p50 %.2f p99 %.2f ms | queue %.0f in %.0f infer %.0f out %.0f us" % (
                    p["throughput"], p["p50_ms"], p["p99_ms"], p["queue_us"], p["compute_input_us"],
                    p["compute_infer_us"], p["compute_output_us"]) if row else p["error"]))
            if p.get("stub_stage_us"):
                log("    stub per execute: %s" % json.dumps(p["stub_stage_us"]))


def run(args) -> int:
    import torch

    t_start = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="aitune-matrix-"))
    logf = open(args.out / "log", "a")

    def log(msg):
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    models = args.models.split(",")
    if args.smoke:
        points = [{"model": m, "code": c, "instances": i, "gpus": (0,), "transport": t, "batch": b, "concurrency": 2}
                  for m in models for c in (("new", "before") if args.before else ("new",))
                  for i, t, b in ((1, "system_shm", 1), (2, "grpc", 4))]
    else:
        points = plan_points(args.kind, models, args.before is not None)
    if args.max_points:
        points = points[:args.max_points]
    gpus = torch.cuda.device_count()
    if not args.smoke:
        points = [p for p in points if max(p["gpus"]) < gpus]
    out_json = args.out / ("gpu_matrix_%s.json" % args.kind)
    summary = {"kind": args.kind, "device": torch.cuda.get_device_name(0) if gpus else "cpu", "gpus": gpus,
               "cpus": os.cpu_count(), "torch": torch.__version__,
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "command": " ".join(sys.argv), "window_ms": args.window_ms, "delay_us": args.delay_us,
               "max_batch": args.max_batch, "inprocess": {}, "checks": {}, "points": []}

    def save():
        out_json.write_text(json.dumps(summary, indent=1))

    repo = work / "repo"
    device = "cpu" if args.smoke else "cuda"
    jobs = []
    for model in models:
        jobs.append((None, write_source(work, model, "%s_new" % model, args.max_batch, args.delay_us, device)))
        if args.before is not None and any(p["model"] == model and p["code"] == "before" for p in points):
            jobs.append((args.before.resolve(),
                         write_source(work, model, "%s_before" % model, args.max_batch, args.delay_us, device)))
    t0 = time.time()
    generate_all(jobs, repo, work, log)
    summary["generate_s"] = round(time.time() - t0)
    for model in models:
        new = work / "src" / ("%s_new" % model) / "model.py"
        if args.smoke:
            continue
        t0 = time.time()
        summary["inprocess"][model] = inprocess_peaks(new, [1, 8, 16, 64], args.iters)
        log("%s in-process (%.0fs): %s" % (model, time.time() - t0, json.dumps(
            {k: {r["batch"]: round(r["throughput"]) for r in v}
             for k, v in summary["inprocess"][model]["rows"].items()})))
        save()
    for p in points:
        name = variant_name(p)
        if not (repo / name).exists():
            code, *mods = p["code"].split("+")
            derive_variant(repo, "%s_%s" % (p["model"], code), name, p["instances"], p["gpus"], cpu=args.smoke,
                           mods=tuple(mods))
    for base in {"%s_%s" % (p["model"], p["code"].split("+")[0]) for p in points}:
        shutil.rmtree(repo / base)  # serve only the derived variants
    (args.out / "config_example.pbtxt").write_text((repo / variant_name(points[0]) / "config.pbtxt").read_text())
    measure(points, repo, work, args, summary, save, log, t_start)
    summary["wall_s"] = round(time.time() - t_start)
    save()
    log("done in %ds: %d points measured, %d skipped" % (
        summary["wall_s"], sum(1 for p in summary["points"] if p.get("throughput")),
        sum(1 for p in summary["points"] if p.get("skipped"))))
    print(render_table([summary]))
    print(targets([summary]))
    return 0


# --------------------------------------------------------------------------------------------- report
def render_table(summaries: list[dict]) -> str:
    lines = ["| kind | model | code | inst/GPU | GPUs | transport | batch | conc | infer/s | p50 ms | p99 ms | "
             "queue / in / infer / out µs |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        for p in s["points"]:
            if not p.get("throughput") or p.get("invalid"):
                continue
            lines.append("| %s | %s | %s | %d | %s | %s | %d | %d | %.0f | %.2f | %.2f "
                         "| %.0f / %.0f / %.0f / %.0f |" % (
                s["kind"], p["model"], p["code"], p["instances"], ",".join(str(g) for g in p["gpus"]),
                p["transport"], p["batch"], p["concurrency"], p["throughput"], p["p50_ms"], p["p99_ms"],
                p["queue_us"], p["compute_input_us"], p["compute_infer_us"], p["compute_output_us"]))
    return "\n".join(lines)


def _pick(s: dict, **want) -> dict | None:
    """The measured point of ``s`` matching ``want`` (gpus as a tuple), else None."""
    for p in s["points"]:
        if p.get("throughput") and not p.get("invalid") and all(
                (tuple(p[k]) if k == "gpus" else p[k]) == v for k, v in want.items()):
            return p
    return None


def targets(summaries: list[dict]) -> str:
    """The issue's same-run ratios, per model and machine kind, as a markdown table."""
    rows = ["| kind | model | target | measured | ratio | goal | met |", "|---|---|---|---|---|---|---|"]

    def add(kind, model, what, measured, ratio, goal, met):
        rows.append("| %s | %s | %s | %s | %s | %s | %s |" % (kind, model, what, measured,
                                                                "-" if ratio is None else "%.2f" % ratio, goal,
                                                                "-" if met is None else ("yes" if met else "**no**")))

    for s in summaries:
        kind = s["kind"]
        for model, inproc in s.get("inprocess", {}).items():
            peaks = inproc["peaks"]
            g0 = (0,)
            if kind in ("h200", "h200i"):
                best = max((p for p in s["points"] if p.get("throughput") and not p.get("invalid")
                            and p["model"] == model and p["code"] == "new" and p["transport"] == "system_shm"
                            and p["batch"] == 1 and p["concurrency"] >= 64 and tuple(p["gpus"]) == g0),
                           key=lambda p: p["throughput"], default=None)
                if best:
                    r = best["throughput"] / peaks["graph_h2d"]
                    add(kind, model, "b1 system shm c>=64 / in-process graph+H2D peak",
                        "%.0f (i%d) / %.0f" % (best["throughput"], best["instances"], peaks["graph_h2d"]), r, ">= 0.5",
                        r >= 0.5)
                best = max((p for p in s["points"] if p.get("throughput") and not p.get("invalid")
                            and p["model"] == model and p["code"] == "new" and p["transport"] == "cuda_shm"
                            and p["batch"] == 16 and tuple(p["gpus"]) == g0),
                           key=lambda p: p["throughput"], default=None)
                if best:
                    r = best["throughput"] / peaks["graph"]
                    add(kind, model, "b16 CUDA shm / in-process CUDA-graph peak",
                        "%.0f (i%d c%d) / %.0f" % (best["throughput"], best["instances"], best["concurrency"],
                                                   peaks["graph"]), r, ">= 0.9", r >= 0.9)
                p = _pick(s, model=model, code="new", instances=1, gpus=g0, transport="cuda_shm", batch=1,
                          concurrency=1)
                g1 = next((r for r in inproc["rows"]["graph"] if r["batch"] == 1), None)
                if p and g1:
                    add(kind, model, "p50 c=1 b1 CUDA shm vs in-process graph b1 + 0.3 ms",
                        "%.2f vs %.2f ms" % (p["p50_ms"], g1["latency_ms"] + 0.3), None, "<=",
                        p["p50_ms"] <= g1["latency_ms"] + 0.3)
            for transport, batch, conc, goal in (("system_shm", 1, 64, 1.5), ("system_shm", 8, 16, 1.5),
                                                 ("cuda_shm", 1, 64, 1.0), ("cuda_shm", 16, 8, 1.0),
                                                 ("cuda_shm", 16, 16, 1.0)):
                for code in ("new", "new+t1", "before"):
                    one = _pick(s, model=model, code=code, instances=1, gpus=g0, transport=transport, batch=batch,
                                concurrency=conc)
                    two = _pick(s, model=model, code=code, instances=2, gpus=g0, transport=transport, batch=batch,
                                concurrency=conc)
                    if one and two:
                        r = two["throughput"] / one["throughput"]
                        add(kind, model, "%s: 2 instances / 1 on GPU 0, %s b%d c%d" % (code, transport, batch, conc),
                            "%.0f / %.0f" % (two["throughput"], one["throughput"]), r, ">= %.1f" % goal,
                            r >= goal if code != "before" else None)
            g1 = next((r for r in inproc["rows"]["graph"] if r["batch"] == 1), None)
            for transport in ("cuda_shm", "system_shm"):
                p = _pick(s, model=model, code="new+d0", instances=1, gpus=g0, transport=transport, batch=1,
                          concurrency=1)
                if p and g1:
                    add(kind, model, "p50 c=1 b1 %s, queue delay 0, vs in-process graph b1 + 0.3 ms" % transport,
                        "%.2f vs %.2f ms" % (p["p50_ms"], g1["latency_ms"] + 0.3), None, "<=",
                        p["p50_ms"] <= g1["latency_ms"] + 0.3)
            if kind == "h200x2":
                for p1 in s["points"]:
                    if not (p1.get("throughput") and not p1.get("invalid") and p1["model"] == model
                            and tuple(p1["gpus"]) == g0):
                        continue
                    p2 = _pick(s, model=model, code=p1["code"], instances=p1["instances"], gpus=(0, 1),
                               transport=p1["transport"], batch=p1["batch"], concurrency=p1["concurrency"])
                    if p2:
                        r = p2["throughput"] / p1["throughput"]
                        add(kind, model, "%s i%d: 2 GPUs / 1, %s b%d c%d" % (
                            p1["code"], p1["instances"], p1["transport"], p1["batch"], p1["concurrency"]),
                            "%.0f / %.0f" % (p2["throughput"], p1["throughput"]), r, ">= 1.9",
                            r >= 1.9 if p1["code"] == "new" else None)
    return "\n".join(rows)


def plot(summaries: list[dict], path: Path) -> None:
    """Throughput vs p99 per scenario (model x code x placement x transport x batch), one panel per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({p["model"] for s in summaries for p in s["points"]})
    fig, axes = plt.subplots(1, len(models), figsize=(8.5 * len(models), 9), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        series: dict[str, list] = {}
        for s in summaries:
            for p in s["points"]:
                if p["model"] != model or not p.get("throughput") or p.get("invalid"):
                    continue
                key = "%s %s i%d g%d %s b%d" % (s["kind"], p["code"], p["instances"], len(p["gpus"]),
                                                 p["transport"], p["batch"])
                series.setdefault(key, []).append((p["p99_ms"], p["throughput"], p["concurrency"]))
        for key, pts in sorted(series.items()):
            pts.sort(key=lambda t: t[2])
            ax.plot([t[0] for t in pts], [t[1] for t in pts], marker="o", label=key)
        for s in summaries:
            peaks = s.get("inprocess", {}).get(model, {}).get("peaks", {})
            for k, style in (("graph", "--"), ("graph_h2d", ":")):
                if k in peaks:
                    ax.axhline(peaks[k], linestyle=style, color="grey", linewidth=1)
                    ax.text(ax.get_xlim()[0], peaks[k], " in-process %s (%s)" % (k, s["kind"]), fontsize=7,
                            va="bottom", color="grey")
        ax.set_xscale("log")
        ax.set_xlabel("p99 latency (ms, log)")
        ax.set_ylabel("infer/s")
        ax.set_title(model)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.09))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", choices=("h200", "h200i", "h200x2"), default="h200")
    ap.add_argument("--models", default="resnet50,bert")
    ap.add_argument("--out", type=Path, default=Path("bench_out"))
    ap.add_argument("--before", type=Path, help="an older checkout's root (aitune_triton + templates) to compare with")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--delay-us", type=int, default=500)
    ap.add_argument("--window-ms", type=int, default=700)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--budget-s", type=float, default=540, help="stop starting points after this many seconds")
    ap.add_argument("--point-s", type=float, default=5, help="what one point is assumed to take")
    ap.add_argument("--max-points", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="the pipeline on the CPU (use --models cnn)")
    ap.add_argument("--report", type=Path, nargs="*", help="result JSON files: print the table (and --plot)")
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args()
    if args.report:
        summaries = [json.loads(p.read_text()) for p in args.report]
        print(render_table(summaries))
        print()
        print(targets(summaries))
        if args.plot:
            plot(summaries, args.plot)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
