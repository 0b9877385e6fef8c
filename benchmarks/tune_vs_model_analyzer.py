"""Benchmark (not a test): ``tune`` quick vs ``tune --brute`` vs Model Analyzer's brute search, same
model, same grid, same perf_analyzer settings, then the three choices re-measured together.

1. ``generate`` writes the model (``benchmarks/gpu_matrix.py``'s BERT-base-sized encoder or
   ResNet-50 on the GPU, ``examples/cnn`` on the CPU; Python-backend fallback, ``torch.export``
   program, max batch 64, 1 instance, 500 us queue delay).
2. ``tune_model`` quick, then ``--brute``, each from the generated config, on one embedded
   tritonserver; the brute run also writes the Model Analyzer config (``--export-model-analyzer``).
3. ``model-analyzer profile`` (local launch mode: it starts its own tritonserver per config) with
   that YAML. Three keys are added, all about this machine, none about the search:
   ``triton_server_path`` (a wrapper that starts the same tritonserver binary, backends dir and
   environment as our server), ``triton_output_path`` and ``skip_summary_reports`` (no PDF
   tooling here). On a GPU machine without DCGM, Model Analyzer's GPU discovery (DCGM through
   numba) is switched off with ``NUMBA_DISABLE_CUDA=1`` in its own process; it then gives its
   server ``CUDA_VISIBLE_DEVICES=""``, which the wrapper puts back to what our server saw, so
   both serve on the same GPU. Model Analyzer then records no GPU metrics; throughput and
   latency come from perf_analyzer as before.
4. The distinct choices are served side by side (one copy of the model per choice, loaded once)
   and measured interleaved, A B C A B C ..., ``--rounds`` times with the same perf_analyzer
   settings: the choices "differ measurably" only when their min-max intervals over the rounds
   do not overlap.

Figures go to ``OUT/tune_vs_model_analyzer.json`` (rewritten after every phase) and a Markdown
table to stdout. On the GPU machine: ``bash benchmarks/run_tune_gpu.sh``. Here (CPU, small grid,
Model Analyzer from its own venv)::

    .venv/bin/python benchmarks/tune_vs_model_analyzer.py --model cnn --device cpu --instances 1 \\
        --delays-us 0,500 --concurrency 1,2 --ma-python /tmp/ma/venv/bin/python --out /tmp/tvm
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# AITUNE_CODE: a snapshot of the package to measure (`git archive HEAD aitune_triton templates`), so a
# run is tied to one commit even while the working tree changes; default: this checkout
CODE = Path(os.environ.get("AITUNE_CODE") or ROOT).resolve()
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_matrix import generate_all, write_source  # noqa: E402  (it puts ROOT first on sys.path)

sys.path.insert(0, str(CODE))

from aitune_triton.triton import tools  # noqa: E402
from aitune_triton.triton.manifest import Manifest  # noqa: E402
from aitune_triton.triton.perf import PerfOptions  # noqa: E402
from aitune_triton.triton.render import parse_config  # noqa: E402
from aitune_triton.triton.launch import ServerOptions, build_environment, server_binary  # noqa: E402
from aitune_triton.triton.server import TritonServer  # noqa: E402
from aitune_triton.tune.measure import LiveRunner  # noqa: E402
from aitune_triton.tune.points import Measurement, Point, Remeasured, Variant  # noqa: E402
from aitune_triton.tune.options import TuneOptions  # noqa: E402
from aitune_triton.tune.result import TuneResult  # noqa: E402
from aitune_triton.tune.search import perf_inputs, tune_model  # noqa: E402

log = logging.getLogger("tune_vs_ma")


def code_version() -> str:
    """The commit measured: AITUNE_CODE's COMMIT file (written with the snapshot), else git here."""
    stamp = CODE / "COMMIT"
    if stamp.exists():
        return stamp.read_text().strip()
    try:
        return subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def server_options(models: tuple[str, ...]) -> ServerOptions:
    """Our server: the bundled tritonserver here, the carried one on the GPU machine ($TRITONSERVER)."""
    binary = os.environ.get("TRITONSERVER")
    backends = os.environ.get("TRITON_BACKENDS")
    return ServerOptions(tritonserver=Path(binary) if binary else None, load_models=models, startup_timeout_s=420,
                         extra_args=("--backend-directory=%s" % backends,) if backends else ())


def server_argv0_and_backends() -> tuple[Path, Path]:
    options = server_options(())
    backends = os.environ.get("TRITON_BACKENDS")
    return server_binary(options), Path(backends) if backends else tools.backends_dir()


# ------------------------------------------------------------------------------------------ tune


def tune_summary(name: str, r: TuneResult, wall: float) -> dict:
    c = r.chosen
    return {"method": name, "wall_s": round(wall, 1), "points": r.measured, "grid": r.grid_size,
            "configs": len({m.point.variant for m in r.measurements}), "finalist_runs": r.remeasured,
            "loads": r.loads, "statuses": r.status_counts, "reason": r.reason, "improvement": r.improvement,
            "choice": c.point.to_dict() if c else None, "choice_label": c.point.label() if c else None,
            "choice_measured": c.to_dict() if c else None, "ties": [p.label() for p in r.ties],
            "perf_flags": r.perf_flags, "measurements": [m.to_dict() for m in r.measurements]}


# ------------------------------------------------------------------------------------------ Model Analyzer


def write_server_wrapper(path: Path) -> Path:
    """A tritonserver for Model Analyzer's local launch mode: the binary, backends dir and environment
    our own server uses, and the GPUs our process sees (Model Analyzer without DCGM empties them)."""
    binary, backends = server_argv0_and_backends()
    env = build_environment()
    lines = ["#!/bin/sh", "# written by benchmarks/tune_vs_model_analyzer.py"]
    for key in ("PATH", "LD_LIBRARY_PATH", "PYTHONDONTWRITEBYTECODE"):
        if env.get(key):
            lines.append("export %s=%s" % (key, shlex.quote(env[key])))
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    lines.append("export CUDA_VISIBLE_DEVICES=%s" % shlex.quote(cvd) if cvd is not None
                 else "unset CUDA_VISIBLE_DEVICES")
    lines.append("echo $$ >> %s" % shlex.quote(str(path.with_suffix(".pids"))))  # exec keeps the pid
    # loopback only, as our own server (Model Analyzer's local mode binds every address by default)
    lines.append('exec %s --backend-directory=%s --http-address=127.0.0.1 --grpc-address=127.0.0.1 '
                 '--metrics-address=127.0.0.1 "$@"' % (shlex.quote(str(binary)), shlex.quote(str(backends))))
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
    return path


def stop_leftover_servers(pids: Path) -> None:
    """Model Analyzer starts its servers in their own sessions; if it was stopped before it could
    stop them, end the ones our wrapper recorded (only those)."""
    if not pids.exists():
        return
    for line in pids.read_text().split():
        pid = int(line)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        log.warning("stopping Model Analyzer's leftover tritonserver %d", pid)
        os.kill(pid, signal.SIGTERM)
        for _ in range(300):
            time.sleep(0.1)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
        else:
            os.kill(pid, signal.SIGKILL)


def ma_config(exported: Path, work: Path, wrapper: Path) -> Path:
    """The exported YAML plus this machine's keys (see the module docstring); returns its path."""
    config = yaml.safe_load(exported.read_text())
    config.update({"triton_server_path": str(wrapper), "triton_output_path": str(work / "ma_tritonserver.log"),
                   "skip_summary_reports": True})
    path = work / "model_analyzer_run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def parse_ma_checkpoint(config: dict, budget_ms: float | None) -> dict:
    """Model Analyzer's measurements from its checkpoint (written after every measurement, so an
    interrupted run still reports) and its choice by its own rule: the highest ``perf_throughput``
    among the measurements that satisfy the ``perf_latency_p99`` constraint."""
    # a resumed run writes the next number (1.ckpt, ...) holding everything: take the newest
    path = max(Path(config["checkpoint_directory"]).glob("*.ckpt"), key=lambda p: int(p.stem))
    state = json.loads(path.read_text())
    points = []
    for model_results in state["ResultManager.results"]["_results"].values():
        for variant_name, (run_config, measured) in model_results.items():
            cfg = run_config["_model_run_configs"][0]["_model_config_variant"]["model_config"]
            group = cfg.get("instanceGroup") or [{}]
            # proto3 JSON leaves out zero values: a dynamicBatching without a delay is 0 us
            batching = "dynamicBatching" in cfg
            delay = int(cfg["dynamicBatching"].get("maxQueueDelayMicroseconds", 0)) if batching else None
            for result in measured.values():
                for m in result["_model_config_measurements"]:
                    data = {k: v[1]["_value"] for k, v in m["_non_gpu_data_from_tag"].items()}
                    points.append({"config": variant_name, "instances": int(group[0].get("count", 1)),
                                   "max_queue_delay_us": delay,
                                   "concurrency": int(m["_model_specific_pa_params"]["concurrency-range"]),
                                   "throughput": data.get("perf_throughput"), "p99_ms": data.get("perf_latency_p99"),
                                   "p50_ms": data.get("perf_latency_p50")})
    feasible = [p for p in points if p["throughput"] and (budget_ms is None or p["p99_ms"] <= budget_ms)]
    choice = max(feasible, key=lambda p: p["throughput"], default=None)
    return {"checkpoint": str(path), "points": points, "configs": len({p["config"] for p in points}),
            "choice_row": choice}


def rebase_ma_yaml(source: Path, dest: Path, repo: Path, model: str, perf: PerfOptions, work: Path) -> None:
    """An exported config from another machine with this one's paths: repository, perf_analyzer,
    the recorded inputs (regenerated from the same seeded samples), output dirs. The search part
    (grid, objective, constraint, perf_analyzer flags) is kept as written."""
    text = source.read_text()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    config = yaml.safe_load(text)
    config["model_repository"] = str(repo)
    for key, name in (("output_model_repository_path", "ma_output_repository"),
                      ("checkpoint_directory", "ma_checkpoints"), ("export_path", "ma_results")):
        config[key] = str(work / name)
    binary = tools.find_perf_analyzer()
    if binary is not None:
        config["perf_analyzer_path"] = str(binary)
    entry = config["profile_models"][model]
    if "input-data" in entry.get("perf_analyzer_flags", {}):
        work.mkdir(parents=True, exist_ok=True)
        local = perf_inputs(repo / model, Manifest.load(repo / model), perf, work)
        entry["perf_analyzer_flags"]["input-data"] = str(local.input_data)
    dest.write_text(header + yaml.safe_dump(config, sort_keys=False))


def run_model_analyzer(exported: Path, work: Path, ma_python: str, timeout_s: float, pythonpath: str = "",
                       resume: Path | None = None) -> dict:
    wrapper = write_server_wrapper(work / "ma_tritonserver.sh")
    path = ma_config(exported, work, wrapper)
    config = yaml.safe_load(path.read_text())
    for key in ("output_model_repository_path", "checkpoint_directory", "export_path"):
        shutil.rmtree(config[key], ignore_errors=True)
    if resume is not None:  # Model Analyzer skips the points its checkpoint holds (same paths, same flags)
        Path(config["checkpoint_directory"]).mkdir(parents=True)
        shutil.copy(resume, Path(config["checkpoint_directory"]) / "0.ckpt")
    env = dict(os.environ)
    env["NUMBA_DISABLE_CUDA"] = "1"  # no DCGM here: Model Analyzer's GPU discovery would fail (see docstring)
    if pythonpath:  # packages for Model Analyzer alone (1.58 reads FieldDescriptor.label: protobuf < 7)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)
    cmd = [ma_python, "-c", "import sys; from model_analyzer.entrypoint import main; sys.exit(main())",
           "profile", "-f", str(path)]
    log.info("model analyzer: %s", " ".join(cmd))
    t0 = time.monotonic()
    logfile = work / "model_analyzer.log"
    with logfile.open("w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            rc = None
            proc.send_signal(signal.SIGINT)  # Model Analyzer saves its checkpoint and stops its server
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            f.write("\n[stopped after %.0f s]\n" % timeout_s)
    stop_leftover_servers(work / "ma_tritonserver.pids")
    text = logfile.read_text(errors="replace")
    wall = time.monotonic() - t0
    summary: dict = {"method": "Model Analyzer 1.58 brute", "wall_s": round(wall, 1), "returncode": rc,
                     "config": config, "log_tail": text.strip().splitlines()[-25:],
                     "resumed_from": str(resume) if resume else None}
    try:
        summary.update(parse_ma_checkpoint(config, (config["profile_models"][next(iter(config["profile_models"]))]
                                                 .get("constraints", {}).get("perf_latency_p99", {}).get("max"))))
    except (OSError, KeyError, ValueError, StopIteration) as exc:  # max() of no checkpoint: ValueError
        summary["error"] = "no results: %s: %s" % (type(exc).__name__, exc)
        return summary
    summary["points_measured"] = len(summary["points"])
    row = summary["choice_row"]
    if row and row["instances"] is not None:
        summary["choice"] = {"instances": row["instances"], "max_queue_delay_us": row["max_queue_delay_us"],
                             "concurrency": row["concurrency"]}
        summary["choice_label"] = Point(Variant(row["instances"], row["max_queue_delay_us"]),
                                        row["concurrency"]).label()
    return summary


# ------------------------------------------------------------------------------------------ cross


def cross(repo: Path, model: str, original: str, choices: dict[str, Point], rounds: int, perf: PerfOptions,
          work: Path) -> dict:
    """The distinct choices, each served by its own copy of the model (loaded once), measured
    interleaved A B C A B C ... for ``rounds`` rounds on one server."""
    distinct = list(dict.fromkeys(choices.values()))
    if not distinct:
        return {}
    names = []
    for k in range(len(distinct)):
        name = "%s_choice%d" % (model, k)
        shutil.rmtree(repo / name, ignore_errors=True)
        shutil.copytree(repo / model, repo / name, ignore=shutil.ignore_patterns("tuning", "*.bak"))
        (repo / name / "config.pbtxt").write_text(re.sub(r'^name: "[^"]*"', 'name: "%s"' % name, original,
                                                         count=1, flags=re.M))
        names.append(name)
    manifest = Manifest.load(repo / model)
    work.mkdir(parents=True, exist_ok=True)
    perf = perf_inputs(repo / model, manifest, perf, work)
    runs: list[list[Measurement]] = [[] for _ in distinct]
    with TritonServer(repo, server_options(tuple(names)), log_path=work / "tritonserver.log") as server:
        runners = [LiveRunner(server, name, parse_config((repo / name / "config.pbtxt").read_text()),
                              manifest.max_batch_size, 0, perf, work / name) for name in names]
        for runner, point in zip(runners, distinct, strict=True):
            runner.load(point.variant)  # before the first round: every round measures loaded models only
        for r in range(rounds):
            for i, (runner, point) in enumerate(zip(runners, distinct, strict=True)):
                m = runner(point)
                runs[i].append(m)
                log.info("round %d %s: %s", r + 1, point.label(),
                         "%.1f infer/s p99 %.2f ms" % (m.throughput or 0.0, m.p99_ms or 0.0) if m.ok else m.status)
    summaries = [Remeasured(p, tuple(r)) for p, r in zip(distinct, runs, strict=True)]
    out = {"rounds": rounds, "served_as": dict(zip((p.label() for p in distinct), names, strict=True)),
           "points": [s.to_dict() for s in summaries],
           "by_method": {method: distinct.index(p) for method, p in choices.items()}}
    pairs = {}
    for i, a in enumerate(summaries):
        for b in summaries[i + 1:]:
            sa, sb = a.summary(), b.summary()
            apart = sa.ok and sb.ok and (sa.hi < sb.lo or sb.hi < sa.lo)
            pairs["%s vs %s" % (a.point.label(), b.point.label())] = "spreads apart" if apart else "overlap"
    out["pairs"] = pairs
    return out


# ------------------------------------------------------------------------------------------ report


def point_label(p: dict) -> str:
    shm = p.get("transport", "none")
    return "%s @ c=%d%s" % (Variant(p["instances"], p["max_queue_delay_us"]).label(), p["concurrency"],
                            "" if shm == "none" else ", %s shm" % shm)


def print_tables(fig: dict) -> None:
    print("\n%s on %s; grid %s = %d points; objective %s; perf_analyzer %s\n" % (
        fig["model"], fig["machine"], fig["grid_desc"], fig["grid"], fig["objective"], fig["perf"]))
    print("| method | configs | points measured | finalist re-measurements | wall s | choice | its own figure |")
    print("|---|---|---|---|---|---|---|")
    for s in fig["methods"]:
        own = s.get("choice_measured") or s.get("choice_row") or {}
        figure = "%.0f infer/s, p99 %.2f ms" % (own["throughput"], own["p99_ms"]) if own.get("throughput") else "—"
        print("| %s | %s | %s | %s | %s | %s | %s |" % (
            s["method"], s.get("configs", "—"), s.get("points_measured", s.get("points", "—")),
            s.get("finalist_runs", "—"), s.get("wall_s", "—"), s.get("choice_label") or s.get("error") or "none",
            figure))
    x = fig.get("cross")
    if not x:
        return
    print("\nChoices re-measured together, interleaved, %d rounds:\n" % x["rounds"])
    print("| choice | chosen by | median infer/s | min–max | median p99 ms | rounds settled |")
    print("|---|---|---|---|---|---|")
    for k, p in enumerate(x["points"]):
        by = ", ".join(m for m, i in x["by_method"].items() if i == k)
        label = point_label(p)
        print("| %s | %s | %s | %s–%s | %s | %s |" % (label, by, p["throughput"], p["throughput_low"],
                                                    p["throughput_high"], p["p99_ms"], p["detail"] or p["status"]))
    for pair, verdict in x["pairs"].items():
        print("- %s: %s" % (pair, verdict))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="bert", choices=("bert", "resnet50", "cnn"))
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--instances", type=ints, default=(1, 2))
    ap.add_argument("--delays-us", type=ints, default=(0, 500, 2000))
    ap.add_argument("--concurrency", type=ints, default=(1, 4, 16, 64))
    ap.add_argument("--budget-ms", type=float, default=25.0, help="p99 budget of the max-throughput objective")
    ap.add_argument("--window-ms", type=int, default=500, help="perf_analyzer time window, for all three methods")
    ap.add_argument("--stability", type=int, default=30, help="perf_analyzer stability band in percent")
    ap.add_argument("--max-trials", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds of the cross re-measurement")
    ap.add_argument("--phases", default="quick,brute,ma,cross")
    ap.add_argument("--ma-python", default=sys.executable, help="an interpreter with triton-model-analyzer")
    ap.add_argument("--ma-timeout-s", type=float, default=420)
    ap.add_argument("--ma-resume", type=Path, help="a Model Analyzer checkpoint of an interrupted run with the "
                    "same --work dir: only the points it lacks are measured")
    ap.add_argument("--work", type=Path, help="work dir (default: a new temp dir)")
    ap.add_argument("--ma-pythonpath", default="", help="put first on Model Analyzer's PYTHONPATH only")
    ap.add_argument("--tune-option", action="append", default=[], metavar="KEY=JSON",
                    help="extra TuneOptions field for both tune runs (e.g. transports='[\"none\"]')")
    ap.add_argument("--ma-yaml", type=Path, help="a model_analyzer_exported.yaml of an earlier run (paths rebased)")
    ap.add_argument("--choices-from", type=Path, help="tune_vs_model_analyzer.json of an earlier run: its tune "
                    "runs' choices join the cross re-measurement (with --phases ma,cross)")
    ap.add_argument("--out", type=Path, default=Path("tune_vs_ma_out"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        handlers=[logging.StreamHandler(), logging.FileHandler(args.out / "log")])
    logging.getLogger("aitune_triton.triton.perf").setLevel(logging.WARNING)
    phases = args.phases.split(",")
    t_start = time.monotonic()
    work = args.work or Path(tempfile.mkdtemp(prefix="tune-vs-ma-"))
    work.mkdir(parents=True, exist_ok=True)
    repo = work / "repo"
    model = args.model
    perf = PerfOptions(measurement_mode="time_windows", measurement_interval_ms=args.window_ms,
                       stability_percentage=args.stability, max_trials=args.max_trials, timeout_s=120)
    extra = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.tune_option)}
    extra = {k: tuple(v) if isinstance(v, list) else v for k, v in extra.items()}
    grid = dict(instances=args.instances, delays_us=args.delays_us, concurrency=args.concurrency,
                budget_ms=args.budget_ms, perf=perf, **extra)
    gpu = "cpu"
    if args.device == "cuda":
        import torch

        gpu = "%s, %d CPU cores" % (torch.cuda.get_device_name(0), os.cpu_count() or 0)
    fig: dict = {"code": code_version(), "model": model, "device": args.device, "machine": gpu, "argv": sys.argv[1:],
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "grid": len(args.instances) * len(args.delays_us) * len(args.concurrency),
                 "grid_desc": "instances %s x queue delay %s us x concurrency %s" % (
                     list(args.instances), list(args.delays_us), list(args.concurrency)),
                 "objective": "max throughput, p99 <= %g ms" % args.budget_ms,
                 "perf": "time windows %d ms, stability %d %%, max trials %d (one looser retry: 2x window, 2x band)"
                         % (args.window_ms, args.stability, args.max_trials),
                 "tune_options_extra": {k: list(v) if isinstance(v, tuple) else v for k, v in extra.items()},
                 "methods": [], "timings": {}}
    out_json = args.out / "tune_vs_model_analyzer.json"

    def save() -> None:
        fig["timings"]["total_s"] = round(time.monotonic() - t_start, 1)
        out_json.write_text(json.dumps(fig, indent=1) + "\n")

    t0 = time.monotonic()
    model_py = write_source(work, model, model, 64, 500, args.device)
    generate_all([(None if CODE == ROOT else CODE, model_py)], repo, work, log.info)
    fig["timings"]["generate_s"] = round(time.monotonic() - t0, 1)
    config = repo / model / "config.pbtxt"
    original = config.read_text()
    (args.out / "config_generated.pbtxt").write_text(original)
    save()
    choices: dict[str, Point] = {}
    exported = work / "model_analyzer.yaml"
    runs = [p for p in ("quick", "brute") if p in phases]
    if runs:
        t0 = time.monotonic()
        with TritonServer(repo, server_options((model,)), log_path=work / "tritonserver.log") as server:
            fig["timings"]["server_start_s"] = round(time.monotonic() - t0, 1)
            for i, name in enumerate(runs):
                if i:  # every run starts from the generated config
                    config.write_text(original)
                    server.load_model(model)
                t0 = time.monotonic()
                options = TuneOptions(brute=name == "brute", report_dir=work / name,
                                      export_model_analyzer=exported if name == runs[-1] else None, **grid)
                r = tune_model(repo, model, server, options)
                s = tune_summary("tune %s" % ("--brute" if name == "brute" else "quick"), r, time.monotonic() - t0)
                fig["methods"].append(s)
                if r.chosen:
                    choices[s["method"]] = r.chosen.point
                save()
                log.info("%s: %s in %.0f s", s["method"], s["choice_label"], s["wall_s"])
        config.write_text(original)
        if exported.exists():
            shutil.copy(exported, args.out / "model_analyzer_exported.yaml")
    if args.ma_yaml:  # exported by an earlier run of this script: the same file, this run's paths
        rebase_ma_yaml(args.ma_yaml, exported, repo, model, perf, work)
        shutil.copy(exported, args.out / "model_analyzer_rebased.yaml")
    if args.choices_from:  # the tune runs of an earlier run of this script (same model, grid and settings)
        prior = json.loads(args.choices_from.read_text())
        for s in prior["methods"]:
            if s["method"].startswith("tune") and s.get("choice"):
                fig["methods"].append({**s, "from": "%s (%s, %s)" % (args.choices_from.name, prior["date"],
                                                                     prior.get("code"))})
                c = s["choice"]
                choices[s["method"]] = Point(Variant(c["instances"], c["max_queue_delay_us"]), c["concurrency"],
                                             c.get("transport", "none"))
    if "ma" in phases and exported.exists():
        s = run_model_analyzer(exported, work, args.ma_python, args.ma_timeout_s, args.ma_pythonpath,
                               args.ma_resume)
        fig["methods"].append(s)
        shutil.copy(work / "model_analyzer.log", args.out / "model_analyzer.log")
        if Path(s.get("checkpoint", "")).is_file():
            shutil.copy(s["checkpoint"], args.out / "model_analyzer_checkpoint.json")
        if s.get("choice"):
            c = s["choice"]
            choices[s["method"]] = Point(Variant(c["instances"], c["max_queue_delay_us"]), c["concurrency"])
        save()
        log.info("Model Analyzer: rc %s, %s in %.0f s", s["returncode"], s.get("choice_label") or s.get("error"),
                 s["wall_s"])
    if "cross" in phases and choices:
        t0 = time.monotonic()
        fig["cross"] = cross(repo, model, original, choices, args.rounds, perf, work / "cross")
        fig["timings"]["cross_s"] = round(time.monotonic() - t0, 1)
        save()
    save()
    print_tables(fig)
    print("\nwork dir: %s" % work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
