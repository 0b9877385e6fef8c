"""GPU acceptance lane: the default path, as a new user runs it, for the models people serve on a GPU.

Every model goes through the CLI with default settings and no ``get_config()`` (the examples keep their own):
``aitune-triton generate MODEL_PY`` (device auto, backends python + tensorrt), then one ``aitune-triton validate``
of all the generated models on the GPU server with ``--concurrency 1,8``. The result is a dated JSON (per model:
fallback format, generate seconds, validate verdict and failed checks, infer/s at c=1 and c=8, max_batch_size;
the commit, the date, the GPU) and the same as a BENCHMARKS.md table. ResNet-50 is generated twice in a row into
the same repository (``--force``) and both times and console lines are kept: a remembered AOTInductor load crash
should make the second one skip the doomed compile.

Models (``--models``, default all): ``resnet50_fp16`` (torchvision, float16), ``bert_base_fp16`` (Hugging Face
BertModel, BertConfig() defaults, float16, sequence 128), ``vit_bf16`` (Hugging Face ViTModel, ViTConfig()
defaults, bfloat16), all random init from ``benchmarks/acceptance_models/``, and ``cnn``, ``custom_profiles``,
``encoder``, ``multi_io``, ``image_pipeline``, ``text_pipeline`` from ``examples/`` (a pipeline is
its model, its pre/post-processing models and their ensemble, validated together on raw data).

Two checks beside the table (``checks`` in the JSON): ``generate_without_tritonclient`` generates ``multi_io``
again with tritonclient made unimportable (a GPU image with torch only), and ``serve_outside_layout`` serves the
generated ``multi_io`` with ``serve --tritonserver WRAPPER --backend-directory DIR``, the server binary reached
through a script outside any PREFIX/bin layout, then checks it with ``validate --url`` (no perf) and Ctrl-C.

On a machine where AOTInductor packages crash at load (the lane's GPU image), the first generates there pay for
that compile (about 110-140 s each, much of it fixed cost: a small MLP alone took 109 s on an H100) and the later
ones skip it. Generating one small model alone first, so that the crash is learnt once, did not shorten the lane:
the generates run side by side from the start.

Budget: the generates run ``--jobs`` at a time (largest first; each one ``--generate-timeout`` at most, its
process group killed past it, and none runs into the last ``--validate-reserve-s`` of ``--budget-s``), validate
gets what is left; the JSON is rewritten after every step, so a run cut short still reports what it measured,
and a model cut short is rerun alone with ``--models``. Generate times are measured with ``--jobs`` generates
sharing the machine (recorded in the JSON); ``--jobs 1`` gives each one the whole machine.

On the GPU machine, from a clean checkout with ``.devbundle`` (``bash ../shared/tools/make-device-bundle.sh
.venv .devbundle``, or the project's copy) and ``.whl`` (``bash benchmarks/fetch_gpu_wheels.sh``) carried along
(about 60 MB together, under the device tool's 64 MiB), as one device call with a 600 s limit:

    AITUNE_COMMIT=<sha> bash benchmarks/run_gpu_acceptance.sh          # everything: needs the full 600 s
    AITUNE_COMMIT=<sha> bash benchmarks/run_gpu_acceptance.sh --models resnet50_fp16,cnn

(``AITUNE_COMMIT`` names the commit: the copy on the GPU machine may carry a stale ``.git``.)

A fresh machine needs more than one 600 s call: its first generates pay for the first CUDA work and the doomed
AOTInductor compile (220-310 s each for the large models), and validate of every model takes about 230 s. Then
split the lane over two calls on the same machine, the second made while it is still warm (the generated
repositories, the compile caches and the remembered crash stay in /tmp and ~/.cache):

    AITUNE_COMMIT=<sha> bash benchmarks/run_gpu_acceptance.sh --generate-only   # call 1: the generates
    AITUNE_COMMIT=<sha> bash benchmarks/run_gpu_acceptance.sh --resume          # call 2: the rest, and validate

``--resume`` keeps the generates of the state file in ``--work`` that passed at the same commit, runs those that
did not, then validate and the checks; the JSON lists both calls under ``calls``.

Results land in ``$OUT`` (``gpu_acceptance_<date>.json``, ``.md``, ``logs/``); commit the JSON and paste the
table into BENCHMARKS.md. Here, on the CPU, the same logic end to end on one small model (the smoke mode):

    .venv/bin/python benchmarks/gpu_acceptance.py --device cpu --models cnn --out /tmp/acceptance
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "resnet50_fp16": ROOT / "benchmarks" / "acceptance_models" / "resnet50_fp16" / "model.py",
    "bert_base_fp16": ROOT / "benchmarks" / "acceptance_models" / "bert_base_fp16" / "model.py",
    "vit_bf16": ROOT / "benchmarks" / "acceptance_models" / "vit_bf16" / "model.py",
    "cnn": ROOT / "examples" / "cnn" / "model.py",
    "custom_profiles": ROOT / "examples" / "custom_profiles" / "model.py",
    "encoder": ROOT / "examples" / "encoder" / "model.py",
    "multi_io": ROOT / "examples" / "multi_io" / "model.py",
    "image_pipeline": ROOT / "examples" / "image_pipeline" / "model.py",
    "text_pipeline": ROOT / "examples" / "text_pipeline" / "model.py",
}
PRECISION = {"resnet50_fp16": "fp16", "bert_base_fp16": "fp16", "vit_bf16": "bf16"}
TWICE = "resnet50_fp16"  # generated twice in a row: the second run should reuse what the first learned
CLI = [sys.executable, "-m", "aitune_triton.cli"]


def serving(args, env: dict) -> tuple[list[str], dict]:
    """The CLI and environment of the commands that start a server (validate, serve). The Python-backend stub
    imports from the environment of the ``python3`` first on PATH, so ``--serve-python``'s folder goes first."""
    if not args.serve_python:
        return CLI, env
    folder = os.path.dirname(os.path.abspath(args.serve_python))
    return [args.serve_python, "-m", "aitune_triton.cli"], dict(env, PATH=os.pathsep.join([folder, env["PATH"]]))


@dataclass
class ModelResult:
    name: str
    source: str
    precision: str
    generate_exit: int | None = None
    generate_s: float | None = None
    generate_line: str = ""  # the "✓ name (python, ready): fallback ..." line, or the error line
    generate_stages: list[str] = field(default_factory=list)  # "building the PyTorch fallback ... (98.1 s)"
    second_generate_exit: int | None = None
    second_generate_s: float | None = None
    second_generate_line: str = ""
    second_generate_stages: list[str] = field(default_factory=list)
    format: str | None = None  # the fallback artifact served (aoti, export, eager) and its device
    skipped_formats: list[list[str]] = field(default_factory=list)
    tensorrt: str | None = None  # the staged TensorRT model's status (pending without TensorRT)
    max_batch_size: int | None = None
    models: list[str] = field(default_factory=list)  # the Triton model directories generate wrote
    validate: str = "not run"  # passed / failed / skipped / not run / timed out
    failed_checks: list[str] = field(default_factory=list)
    perf_model: str | None = None  # the served model whose perf the table shows (the model itself)
    pipeline_model: str | None = None  # a pipeline's ensemble (raw data in, answers out)
    infer_per_s: dict[str, float] = field(default_factory=dict)  # concurrency -> throughput
    pipeline_infer_per_s: dict[str, float] = field(default_factory=dict)  # the same through the ensemble
    p99_ms: dict[str, float] = field(default_factory=dict)
    perf_unstable: list[int] = field(default_factory=list)  # concurrencies perf_analyzer could not stabilise


@dataclass
class CheckResult:
    """One pass/fail check of the lane beside the models' table."""

    name: str
    status: str = "not run"  # passed / failed / not run
    seconds: float | None = None
    detail: str = ""


VALIDATE_FIELDS = ("validate", "failed_checks", "infer_per_s", "pipeline_infer_per_s", "p99_ms",
                   "perf_unstable")  # what a resumed run measures again (perf_model and pipeline_model are generate's)


def resumed_results(prior: dict, results: dict[str, ModelResult], checks: dict[str, CheckResult]) -> list[str]:
    """Take over from ``prior`` (an earlier call's state at the same commit) the models that generated and the
    checks that passed, with their validate fields cleared: validate always runs again. Returns their names."""
    kept = []
    for entry in prior.get("models", []):
        if entry.get("name") in results and entry.get("generate_exit") == 0:
            result = ModelResult(**entry)
            defaults = ModelResult("", "", "")  # one per model: the cleared dicts and lists are its own
            for name in VALIDATE_FIELDS:
                setattr(result, name, getattr(defaults, name))
            results[result.name] = result
            kept.append(result.name)
    for entry in prior.get("checks", []):
        if entry.get("name") == "generate_without_tritonclient" and entry["name"] in checks \
                and entry.get("status") == "passed":
            checks[entry["name"]] = CheckResult(**entry)
            kept.append(entry["name"])
    return kept


NO_TRITONCLIENT = ROOT / "scripts" / "no_tritonclient"  # first on PYTHONPATH: tritonclient does not import
NO_CLIENT_MODEL = "multi_io"
SERVE_CHECK_S = 75.0  # kept after validate for serve_outside_layout


# ----------------------------------------------------------------------------- child processes


def start_logged(cmd: list[str], log_path: Path, env: dict | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own process group with the command line and then its output in ``log_path``."""
    with open(log_path, "w") as log:
        log.write("$ %s\n" % " ".join(cmd))
        log.flush()
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT), env=env,
                                start_new_session=True)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGINT the process group (the CLI stops its servers and removes staging on it), SIGKILL past 20 s."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_logged(cmd: list[str], log_path: Path, timeout_s: float, env: dict | None = None) -> tuple[int | None, float]:
    """Run ``cmd`` with its output in ``log_path``; past ``timeout_s`` the whole process group is stopped
    (AOTInductor compile workers, a tritonserver) and the exit code is None."""
    start = time.monotonic()
    proc = start_logged(cmd, log_path, env)
    try:
        code: int | None = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_group(proc)
        code = None
        with open(log_path, "a") as log:
            log.write("\n[gpu_acceptance] killed after %.0f s\n" % timeout_s)
    return code, time.monotonic() - start


def console_lines(log_path: Path) -> tuple[str, list[str]]:
    """(the verdict line, the stage lines with their seconds) of a generate's console output."""
    text = log_path.read_text(errors="replace")
    lines = [re.sub(r"\s+", " ", line).strip() for line in text.splitlines()]
    stages = [line for line in lines if re.search(r"\(\d+(\.\d+)? s\)$", line)]
    verdict = next((line for line in lines if line.startswith(("✓", "error:", "internal error:"))), "")
    if verdict.startswith("error:"):  # the error's first line may wrap: keep what follows up to the log line
        tail = text[text.find("error:"):].split("\nlog:")[0]
        verdict = re.sub(r"\s+", " ", tail).strip()
    return verdict[:2000], stages


# ----------------------------------------------------------------------------- the steps


def generate_timeout(args, deadline: float) -> tuple[float, str]:
    """(seconds a generate gets: ``--generate-timeout`` or what is left before ``deadline``, the time kept for
    validate, whichever is less; the "not run" line when that is under 30 s, else "")."""
    timeout = min(args.generate_timeout, deadline - time.monotonic())
    return timeout, "not run: %.0f s left before the time kept for validate" % max(timeout, 0) if timeout < 30 else ""


def run_generate(source: str, repo: Path, log_path: Path, timeout: float, args, env: dict,
                 *extra: str) -> tuple[int | None, float, str, list[str]]:
    """One ``aitune-triton generate SOURCE --out REPO``: (exit code or None, seconds, verdict line, stages)."""
    cmd = CLI + ["generate", source, "--out", str(repo), *extra]
    if args.device != "auto":
        cmd += ["--device", args.device]
    code, seconds = run_logged(cmd, log_path, timeout, env)
    line, stages = console_lines(log_path)
    if code is None:
        line = "timed out after %.0f s; %s" % (timeout, stages[-1] if stages else "no stage finished")
    return code, seconds, line, stages


def generate(result: ModelResult, repo: Path, logs: Path, args, env: dict, deadline: float,
             second: bool = False) -> None:
    """One ``generate`` of the model with its time, exit code and console lines (the second one with
    ``--force`` into the same repository)."""
    timeout, not_run = generate_timeout(args, deadline)
    if not_run:
        if second:
            result.second_generate_line = not_run
        else:
            result.generate_line = not_run
        return
    log_path = logs / ("%s.generate%s.log" % (result.name, "2" if second else ""))
    code, seconds, line, stages = run_generate(result.source, repo, log_path, timeout, args, env,
                                               *(["--force"] if second else []))
    if second:
        result.second_generate_exit, result.second_generate_s = code, round(seconds, 1)
        result.second_generate_line, result.second_generate_stages = line, stages
    else:
        result.generate_exit, result.generate_s = code, round(seconds, 1)
        result.generate_line, result.generate_stages = line, stages


def read_manifests(result: ModelResult, repo: Path) -> None:
    for manifest_path in sorted(repo.glob("*/manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        result.models.append(manifest_path.parent.name)
        artifact = manifest.get("artifact") or {}
        if manifest.get("backend") == "ensemble":
            result.pipeline_model = manifest_path.parent.name
        elif manifest.get("backend") == "python" and artifact.get("format") and "pipeline" not in manifest:
            result.perf_model = manifest_path.parent.name
            result.format = "%s on %s" % (artifact["format"], artifact.get("device"))
            result.skipped_formats = [list(s) for s in artifact.get("skipped", [])]
            result.max_batch_size = manifest.get("max_batch_size")
        elif result.max_batch_size is None:
            result.max_batch_size = manifest.get("max_batch_size")
        trt = manifest.get("tensorrt") or {}
        if trt.get("status"):
            result.tensorrt = trt["status"]


def gather(results: dict[str, ModelResult], work: Path, combined: Path) -> None:
    """Move every generated model directory into one repository, so one server validates them all."""
    combined.mkdir(parents=True, exist_ok=True)
    for result in results.values():
        repo = work / result.name
        if result.models and all((combined / name).is_dir() for name in result.models):
            continue  # gathered by an earlier call (--resume)
        if result.generate_exit != 0 or not repo.is_dir():
            continue
        result.models = []
        read_manifests(result, repo)
        for name in result.models:
            target = combined / name
            if target.exists():
                shutil.rmtree(target)
            shutil.move(str(repo / name), str(target))


def validate(results: dict[str, ModelResult], combined: Path, logs: Path, out: Path, args, env: dict,
             timeout_s: float) -> dict:
    served = [r for r in results.values() if r.models]
    if not served:
        return {"exit": None, "seconds": 0.0, "note": "nothing generated"}
    report_dir = out / "validation_report"
    cli, env = serving(args, env)
    cmd = cli + ["validate", str(combined), "--report", str(report_dir), "--concurrency", args.concurrency,
                 "--perf-request-count", str(args.perf_request_count), "--perf-stability", str(args.perf_stability)]
    if os.environ.get("TRITONSERVER"):  # the bundle's server, outside the venv: its backends dir is derived
        cmd += ["--tritonserver", os.environ["TRITONSERVER"]]
    code, seconds = run_logged(cmd, logs / "validate.log", timeout_s, env)
    summary = {"exit": code, "seconds": round(seconds, 1), "command": " ".join(cmd[2:])}
    report_path = report_dir / "report.json"
    if not report_path.is_file():
        for r in served:
            r.validate = "timed out" if code is None else "no report (exit %s)" % code
        return summary
    summary["server"] = read_report(served, report_path)
    return summary


def read_report(served: list[ModelResult], report_path: Path) -> dict:
    """Each model's verdict, failed checks and perf points from validate's report.json; returns its server."""
    report = json.loads(report_path.read_text())
    by_name = {m["name"]: m for m in report.get("models", [])}
    for r in served:
        statuses = []
        for name in r.models:
            model = by_name.get(name)
            if model is None:
                continue
            statuses.append(model["status"])
            r.failed_checks += ["%s: %s: %s" % (name, c["name"], c["detail"][:300])
                                for c in model.get("checks", []) if c["status"] == "fail"]
            for row in model.get("perf", []):
                if name == r.pipeline_model:
                    r.pipeline_infer_per_s[str(row["concurrency"])] = round(row["throughput"], 1)
                elif name == r.perf_model or r.perf_model is None:
                    r.infer_per_s[str(row["concurrency"])] = round(row["throughput"], 1)
                    r.p99_ms[str(row["concurrency"])] = round(row["p99_ms"], 2)
            r.perf_unstable += list(model.get("perf_unstable", []))
        r.validate = "failed" if "failed" in statuses else "passed" if "passed" in statuses else \
            "skipped" if statuses else "not in the report"
    return {k: report.get("server", {}).get(k) for k in ("version", "binary", "backends", "error")}


def generate_without_client(check: CheckResult, work: Path, logs: Path, args, env: dict, deadline: float) -> None:
    """``generate`` of NO_CLIENT_MODEL where ``import tritonclient`` fails: it must still write the model."""
    timeout, check.detail = generate_timeout(args, deadline)
    if check.detail:
        return
    hidden = dict(env, PYTHONPATH=os.pathsep.join([str(NO_TRITONCLIENT), env.get("PYTHONPATH", "")]))
    probe = subprocess.run([sys.executable, "-c", "import tritonclient"], env=hidden, capture_output=True, text=True)
    if probe.returncode == 0 or "hidden by scripts/no_tritonclient" not in probe.stderr:
        check.status, check.detail = "failed", "tritonclient could not be hidden: %s" % probe.stderr[-300:]
        return
    repo = work / "no_tritonclient_repo"
    log_path = logs / "generate_without_tritonclient.log"
    code, seconds, line, _ = run_generate(str(MODELS[NO_CLIENT_MODEL]), repo, log_path, timeout, args, hidden)
    written = sorted(p.parent.name for p in repo.glob("*/config.pbtxt"))
    check.seconds = round(seconds, 1)
    check.status = "passed" if code == 0 and written else "failed"
    check.detail = "exit %s, wrote %s: %s" % (code, ", ".join(written) or "nothing", line[:400])


def serve_outside_layout(check: CheckResult, combined: Path, work: Path, logs: Path, args, env: dict) -> None:
    """``serve`` with the server binary behind a wrapper outside PREFIX/bin and ``--backend-directory``; the
    served model is then checked by ``validate --url`` (no perf) and the server stopped with Ctrl-C."""
    from aitune_triton.triton import tools
    from aitune_triton.triton.launch import free_ports

    source = combined / NO_CLIENT_MODEL
    if not source.is_dir():
        check.detail = "not run: %s was not generated" % NO_CLIENT_MODEL
        return
    start = time.monotonic()
    binary = os.environ.get("TRITONSERVER") or str(tools.bundled_tritonserver())
    backends = os.environ.get("TRITON_BACKENDS") or str(tools.backends_dir())
    wrapper = work / "elsewhere" / "tritonserver"  # no PREFIX/backends beside it to derive
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    wrapper.write_text('#!/bin/sh\nexec "%s" "$@"\n' % binary)
    wrapper.chmod(0o755)
    repo = work / "serve_repository"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(source, repo / NO_CLIENT_MODEL)
    http, grpc, metrics = free_ports(3)
    cli, env = serving(args, env)
    cmd = cli + ["serve", str(repo), "--tritonserver", str(wrapper), "--backend-directory", backends,
                 "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    log_path = logs / "serve_outside_layout.log"
    proc = start_logged(cmd, log_path, env)
    try:
        up = time.monotonic() + 180
        while time.monotonic() < up and proc.poll() is None and \
                "Ctrl-C to stop" not in log_path.read_text(errors="replace"):
            time.sleep(0.5)
        if proc.poll() is not None or "Ctrl-C to stop" not in log_path.read_text(errors="replace"):
            check.status = "failed"
            check.detail = "serve did not come up (exit %s): %s" % (proc.poll(), " ".join(
                log_path.read_text(errors="replace").split())[-400:])
            return
        code, _ = run_logged(cli + ["validate", str(repo), "--url", "127.0.0.1:%d" % http, "--grpc-url",
                                    "127.0.0.1:%d" % grpc, "--no-perf", "--report",
                                    str(work / "serve_outside_layout_report")],
                             logs / "serve_outside_layout.validate.log", 240, env)
    finally:
        if proc.poll() is None:
            stop_group(proc)
    check.seconds = round(time.monotonic() - start, 1)
    check.status = "passed" if code == 0 and proc.returncode == 0 else "failed"
    check.detail = "validate --url exit %s; serve exit %s after Ctrl-C" % (code, proc.returncode)


# ----------------------------------------------------------------------------- the report


def gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "none (CPU)"


def commit() -> str:
    """``AITUNE_COMMIT`` when given (a copy of the working tree may carry a stale .git), else the
    checkout's commit, with ``+dirty`` when it has changes."""
    if os.environ.get("AITUNE_COMMIT"):
        return os.environ["AITUNE_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                              cwd=str(ROOT), timeout=30)
        if head.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                   text=True, cwd=str(ROOT), timeout=30).stdout.strip()
            return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "unknown"


def table(doc: dict) -> str:
    """The BENCHMARKS.md table: one row per model."""
    lines = ["GPU acceptance, %s, %s, commit %s (default settings, no get_config(); validate --concurrency %s)"
             % (doc["date"], doc["gpu"], doc["commit"], doc["concurrency"]), "",
             "| model | precision | fallback | generate s | validate | infer/s c=1 | infer/s c=8 | max_batch_size |",
             "|---|---|---|---|---|---|---|---|"]
    for r in doc["models"]:
        gen = "%.0f" % r["generate_s"] if r["generate_s"] is not None else "-"
        if r["generate_exit"] != 0:
            gen += " (%s)" % ("timed out" if r["generate_exit"] is None else "exit %s" % r["generate_exit"])
        if r["second_generate_s"] is not None:
            gen += ", again %.0f" % r["second_generate_s"]
        def rate(c: str, r: dict = r) -> str:
            text = "%.0f" % r["infer_per_s"][c] if c in r["infer_per_s"] else \
                "unstable" if int(c) in r["perf_unstable"] else "-"
            if c in r["pipeline_infer_per_s"]:
                text += " (pipeline %.0f)" % r["pipeline_infer_per_s"][c]
            return text

        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r["name"], r["precision"], r["format"] or "-", gen, r["validate"], rate("1"), rate("8"),
            r["max_batch_size"] if r["max_batch_size"] is not None else "-"))
    if doc.get("checks"):
        lines += ["", "| check | result | s | detail |", "|---|---|---|---|"]
        lines += ["| %s | %s | %s | %s |" % (c["name"], c["status"], "-" if c["seconds"] is None else
                                           "%.0f" % c["seconds"], c["detail"].replace("|", "/")[:200])
                  for c in doc["checks"]]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated, from: %s" % ", ".join(MODELS))
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="generate --device (auto: the default; cpu: the local smoke mode)")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "acceptance_out")),
                   help="the JSON, the table, the logs and validate's report (small files only)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "aitune_acceptance",
                   help="the generated repositories (hundreds of MB: kept out of --out)")
    p.add_argument("--jobs", type=int, default=4, help="generates at a time")
    p.add_argument("--generate-timeout", type=float, default=420.0, help="seconds per generate")
    p.add_argument("--budget-s", type=float, default=540.0, help="the whole run; validate gets what is left")
    p.add_argument("--validate-reserve-s", type=float, default=170.0,
                   help="kept for validate: generates still running this close to the budget are stopped")
    p.add_argument("--generate-only", action="store_true",
                   help="stop after the generates (call 1 of 2 on a fresh machine; no time kept for validate)")
    p.add_argument("--resume", action="store_true",
                   help="keep the passed generates of the last call at this commit (state in --work), run the rest")
    p.add_argument("--serve-python", default=None,
                   help="the python of validate and serve (and, first on their PATH, of the server's Python-backend "
                        "stub); generate runs with this script's own")
    p.add_argument("--concurrency", default="1,8")
    p.add_argument("--perf-request-count", type=int, default=200)
    p.add_argument("--perf-stability", type=float, default=50.0,
                   help="perf_analyzer's band: wide, the lane checks the path works and records the rate")
    args = p.parse_args(argv)
    if args.generate_only and args.resume:
        p.error("--generate-only is call 1 and --resume call 2: pass one")
    unknown = sorted(set(args.models.split(",")) - set(MODELS))
    if unknown:
        p.error("unknown model(s) %s; choose from %s" % (", ".join(unknown), ", ".join(MODELS)))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.monotonic()
    now = datetime.datetime.now(datetime.timezone.utc)
    out = args.out.resolve()
    work, logs = args.work.resolve(), out / "logs"
    state_path = work / "state.json"
    prior = json.loads(state_path.read_text()) if args.resume and state_path.is_file() else None
    if prior is not None and prior.get("commit") != commit():
        print("not resuming: the state in %s is of commit %s, this is %s" % (work, prior.get("commit"), commit()),
              flush=True)
        prior = None
    if prior is None:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
               PYTHONUNBUFFERED="1")
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(out / "inductor"))
    names = [n for n in MODELS if n in args.models.split(",")]
    results = {n: ModelResult(n, str(MODELS[n]), PRECISION.get(n, "fp32")) for n in names}
    stem = "gpu_acceptance_%s" % now.strftime("%Y%m%dT%H%M%SZ")
    doc = {"date": now.strftime("%Y-%m-%d %H:%M UTC"), "commit": commit(), "gpu": gpu_name(),
           "device": args.device, "jobs": args.jobs, "concurrency": args.concurrency,
           "generate_timeout_s": args.generate_timeout, "python": sys.version.split()[0],
           "serve_python": args.serve_python, "models": [],
           "validate": None, "checks": [], "seconds": None, "calls": list(prior.get("calls", [])) if prior else []}
    doc["calls"].append({"date": doc["date"], "phase": "generate only" if args.generate_only else
                         "resumed" if prior else "whole", "seconds": None})
    try:
        import torch

        doc["torch"] = torch.__version__
    except ImportError:
        pass
    lock = threading.Lock()
    checks = {n: CheckResult(n) for n in ("generate_without_tritonclient", "serve_outside_layout")
              if NO_CLIENT_MODEL in names}
    if prior is not None:
        kept = resumed_results(prior, results, checks)
        print("resuming at commit %s: kept %s" % (doc["commit"], ", ".join(kept) or "nothing"), flush=True)

    def save() -> None:
        with lock:
            doc["models"] = [asdict(r) for r in results.values()]
            doc["checks"] = [asdict(c) for c in checks.values()]
            doc["seconds"] = doc["calls"][-1]["seconds"] = round(time.monotonic() - t0, 1)
            text = json.dumps(doc, indent=2) + "\n"
            (out / (stem + ".json")).write_text(text)
            state_path.write_text(text)
            (out / (stem + ".md")).write_text(table(doc))

    deadline = t0 + args.budget_s - (0 if args.generate_only else args.validate_reserve_s)

    def job(name: str) -> None:
        repo = work / name
        kept = prior is not None and results[name].generate_exit == 0  # from the earlier call
        if kept and (name != TWICE or results[name].second_generate_exit is not None):
            return
        if not kept:
            generate(results[name], repo, logs, args, env, deadline)
            save()
        print("[%4.0f s] %s: generate %s in %.0f s: %s" % (time.monotonic() - t0, name, results[name].generate_exit,
                                                           results[name].generate_s or 0,
                                                           results[name].generate_line[:300]), flush=True)
        if name == TWICE and results[name].generate_exit == 0:
            generate(results[name], repo, logs, args, env, deadline, second=True)
            save()
            print("[%4.0f s] %s: generate again %s in %.0f s: %s" % (
                time.monotonic() - t0, name, results[name].second_generate_exit,
                results[name].second_generate_s or 0, results[name].second_generate_line[:300]), flush=True)

    print("gpu acceptance: %s on %s, commit %s; logs in %s" % (", ".join(names), doc["gpu"], doc["commit"], logs),
          flush=True)
    save()

    def no_client_job() -> None:
        if checks["generate_without_tritonclient"].status == "passed":
            return  # kept from the earlier call
        generate_without_client(checks["generate_without_tritonclient"], work, logs, args, env, deadline)
        save()
        print("[%4.0f s] generate without tritonclient: %s" % (
            time.monotonic() - t0, checks["generate_without_tritonclient"].detail[:300]), flush=True)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(job, n) for n in names]
        if checks:
            futures.append(pool.submit(no_client_job))
        for future in futures:
            future.result()
    combined = work / "repository"
    gather(results, work, combined)
    if args.generate_only:
        save()
        print(table(doc), flush=True)
        print("generates done; now, while this machine is warm: run_gpu_acceptance.sh --resume", flush=True)
        return 0 if all(r.generate_exit == 0 for r in results.values()) else 1
    left = args.budget_s - (time.monotonic() - t0) - (SERVE_CHECK_S if checks else 0)
    doc["validate"] = validate(results, combined, logs, out, args, env, max(left, 90.0))
    save()
    if checks:
        serve_outside_layout(checks["serve_outside_layout"], combined, work, logs, args, env)
        save()
        print("serve outside the standard layout: %s" % checks["serve_outside_layout"].detail, flush=True)
    print(table(doc), flush=True)
    print("wrote %s and %s" % (out / (stem + ".json"), out / (stem + ".md")), flush=True)
    ok = all(r.generate_exit == 0 and r.validate == "passed" for r in results.values()) and \
        all(c.status == "passed" for c in checks.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
