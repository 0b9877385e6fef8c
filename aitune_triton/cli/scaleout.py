"""Scale-out: ``push``, ``plan`` and ``deploy k8s``; parse, call the API, print."""

from __future__ import annotations

from pathlib import Path

import click
from rich.text import Text

from aitune_triton import defaults
from aitune_triton.cli.output import console, handle_errors, labelled
from aitune_triton.progress import plain_updates


@click.command()
@click.argument("repo", type=click.Path(path_type=Path))
@click.argument("destination", metavar="s3://[host:port/]bucket/prefix")
@handle_errors
def push(repo, destination):
    """Upload REPO to object storage atomically: a new version prefix, then the pointer switches.

    Credentials come only from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_DEFAULT_REGION).
    """
    from aitune_triton.commands import push as run

    with console.status(Text("pushing %s" % repo)) as status:
        result = run(repo, destination, progress=plain_updates(status))
    console.print(labelled("✓", "green", "pushed %d files (%d bytes) as version %s%s"
                           % (result.files, result.bytes, result.version,
                              " (previous: %s)" % result.previous if result.previous else "")), soft_wrap=True)
    console.print("pointer: %s" % result.pointer.url, markup=False, soft_wrap=True)
    console.print("serve it: tritonserver --model-repository=%s" % result.repository.url, markup=False,
                  soft_wrap=True)
    click.echo(result.repository.url)


@click.command()
@click.argument("repo", type=click.Path(path_type=Path))
@click.option("--model", required=True, help="Model to plan for.")
@click.option("--target-rps", type=float, required=True, help="Requests per second to serve (batch-1 requests).")
@click.option("--p99-ms", type=float, required=True, help="p99 latency budget in milliseconds.")
@click.option("--headroom", type=float, default=defaults.PLAN_HEADROOM, show_default=True,
              help="Fraction of each replica's measured capacity kept free.")
@click.option("--gpus-per-replica", type=int, help="GPUs per replica (default: 1 if measured on GPU, else 0).")
@click.option("--min-replicas", type=int, default=defaults.PLAN_MIN_REPLICAS, show_default=True)
@click.option("--report", type=click.Path(path_type=Path, exists=True),
              help="validate report.json / tune_report.json (default: the newest of the model's tune report and "
                   "REPO's validation report).")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the plan as JSON (for deploy k8s --plan).")
@handle_errors
def plan(repo, model, target_rps, p99_ms, headroom, gpus_per_replica, min_replicas, report, out):
    """Replicas and GPUs to serve --target-rps within --p99-ms, from the measured curve of MODEL."""
    from aitune_triton.commands import PlanOptions, plan as run

    result = run(repo, model, PlanOptions(target_rps, p99_ms, headroom, gpus_per_replica, min_replicas, report, out))
    click.echo(result.to_text())
    if out:
        console.print("wrote %s" % out, markup=False)


@click.group()
def deploy():
    """Deployment manifests for a repository."""


@deploy.command("k8s")
@click.argument("repo")
@click.option("--replicas", default="1", show_default=True, help="Replica count, or 'auto' to take it from --plan.")
@click.option("--plan", "plan_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="A plan written by `aitune-triton plan --out` (replicas, GPUs, queue-time target).")
@click.option("--gpus-per-replica", type=int, help="GPUs per replica (default: the plan's, else 1).")
@click.option("--max-replicas", type=int, help="Autoscaling ceiling (default: 2 x replicas).")
@click.option("--kserve", is_flag=True, help="A KServe InferenceService instead of Deployment + Service + HPA.")
@click.option("--pvc", help="PersistentVolumeClaim holding REPO (a local REPO is then only read for its manifests).")
@click.option("--secret", default=defaults.K8S_SECRET, show_default=True,
              help="Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for an s3:// repository (you create it).")
@click.option("--name", help="Kubernetes name (default: the first model's name).")
@click.option("--image", help="Triton image (default: matched to the plans' TensorRT / the validated Triton release).")
@click.option("--cpu", default=defaults.K8S_CPU, show_default=True)
@click.option("--memory", default=defaults.K8S_MEMORY, show_default=True)
@click.option("--shm-size", default=defaults.K8S_SHM_SIZE, show_default=True, help="In-memory /dev/shm size.")
@click.option("--queue-target-us", type=int, help="HPA target: average queue time per request (default: plan p99/10, "
                                                   "else %d)." % defaults.K8S_QUEUE_TARGET_US)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory for the YAML files.")
@handle_errors
def deploy_k8s(repo, **options):
    """Kubernetes manifests serving REPO (an s3:// URL pushed by `push`, or a local REPO with --pvc),
    each checked against the Kubernetes OpenAPI schema before it is written."""
    from aitune_triton.commands import DeployK8sOptions, deploy_k8s as run
    from aitune_triton.deploy.k8s import K8S_VERSION

    result = run(repo, DeployK8sOptions(**options))
    for path in result.files:
        console.print("wrote %s" % path, markup=False)
    console.print(labelled("✓", "green", "schema-checked against Kubernetes %s: %s"
                           % (K8S_VERSION, "; ".join(result.checked))), soft_wrap=True)
