"""Writing a tuning choice back: config.pbtxt (through ``triton.render``), its backup, the manifest.

Only the winner is written: the previous text is kept as ``config.pbtxt.bak`` and in the
manifest's history, the new text is checked and written atomically by the same writer
``generate`` uses, and the model is reloaded from disk to prove it loads and says what was
chosen; otherwise the old text is put back and ``ModelError`` raised. The manifest's ``tuning``
section records the run through ``Manifest.save``, the one manifest writer.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from tritonclient.grpc import model_config_pb2

from aitune_triton.errors import ModelError, ServerError
from aitune_triton.triton.manifest import Manifest
from aitune_triton.triton.render import CONFIG, config_text, write_config
from aitune_triton.atomic import replace_file_atomically
from aitune_triton.triton.server_api import Server
from aitune_triton.tune.measure import effective_variant
from aitune_triton.tune.points import TRANSPORTS, Measurement, Variant
from aitune_triton.tune.report import BACKUP
from aitune_triton.tune.result import TuneResult
from aitune_triton.triton.tuning_section import TuneHistoryEntry, TuneSummary
from aitune_triton.tune.space import apply_variant, current_variant
from aitune_triton.version import __version__

log = logging.getLogger(__name__)


def reload_from_disk(server: Server, model: str) -> None:
    """Put the on-disk config back into the server after an interrupted or failed search."""
    try:
        server.load_model(model)
    except Exception as exc:  # the server may be gone; the repository is untouched anyway
        log.warning("could not reload %s from disk: %s", model, exc)


def tuned_header(result: TuneResult, chosen: Measurement, stamp: str) -> str:
    """The comment above the tuned config: what chose it, with which figures, and where the old one is."""
    throughput, p99 = chosen.figures()
    return ("Tuned by aitune-triton %s on %s: %s; %d of %d grid points measured, %d finalists re-measured.\n"
            "Chosen: %s at client concurrency %d: median %.1f infer/s (%.1f-%.1f over %d rounds), p99 %.2f ms "
            "(client transport: %s). Previous config: %s"
            % (__version__, stamp, result.objective.describe(), result.measured, result.grid_size,
               len(result.finalists), chosen.point.variant.label(), chosen.point.concurrency, throughput, chosen.lo,
               chosen.hi, len(chosen.windows), p99, TRANSPORTS[chosen.point.transport], BACKUP))


def write_back(server: Server, result: TuneResult, chosen: Measurement, base: model_config_pb2.ModelConfig,
               original: str, max_batch_size: int, num_profiles: int, stamp: str) -> Path:
    """config.pbtxt.bak <- the old text; config.pbtxt <- the winner; reload from disk to prove it
    loads and says what was chosen (else the old text is restored and ModelError raised).

    Anything that ends the confirmation early (a Ctrl-C, a dying server) restores the old text
    too: the manifest gets no history entry for this write, so a config left behind would be
    one nobody can trace or undo with the tool."""
    cfg = apply_variant(base, chosen.point.variant, max_batch_size)
    text = config_text(cfg, tuned_header(result, chosen, stamp), num_profiles)
    model_dir = result.config_path.parent
    backup = model_dir / BACKUP
    replace_file_atomically(backup, original)
    write_config(model_dir, text, num_profiles)
    try:
        server.load_model(result.model)
        effective = effective_variant(server, result.model)
        wanted = current_variant(cfg)  # the chosen variant as the written config holds it
        if not _serves(effective, wanted):
            raise ServerError("server reports %s, expected %s" % (effective.label(), wanted.label()))
    except ServerError as exc:
        _restore(server, result, original)
        raise ModelError("the tuned config did not load as written (%s); %s restored" % (exc, result.config_path),
                         log_path=exc.log_path, details=exc.details) from exc
    except BaseException:
        _restore(server, result, original)
        raise
    return backup


def _serves(effective: Variant, wanted: Variant) -> bool:
    """Whether the server runs ``wanted``: the same instances and queue delay, and the same
    preferred batch sizes where the config names any (where it names none, Triton fills in its
    default, e.g. [max_batch_size] for the Python backend)."""
    return (effective.instances, effective.delay_us) == (wanted.instances, wanted.delay_us) \
        and (not wanted.preferred or effective.preferred == wanted.preferred)


def _restore(server: Server, result: TuneResult, original: str) -> None:
    """The user's text back, byte for byte, and loaded."""
    replace_file_atomically(result.config_path, original)
    reload_from_disk(server, result.model)


def record(model_dir: Path, manifest: Manifest, result: TuneResult, original: str, report_dir: Path,
           stamp: str) -> Manifest:
    """The manifest with this run as its ``tuning`` summary (and, when a config was written, a
    history entry holding the previous text), saved; paths relative to the model directory, as
    the repository may be moved or mounted elsewhere (e.g. into a container)."""
    where, home = report_dir.resolve(), model_dir.resolve()
    d = result.to_dict()
    summary = TuneSummary(
        model=result.model, mode=result.mode, chosen=d["chosen"], written=result.written, reason=result.reason,
        time=stamp, objective=d["objective"], space=d["space"], grid_size=result.grid_size, measured=result.measured,
        loads=result.loads, baseline=d["baseline"], previous=d["previous"], elapsed_s=d["elapsed_s"],
        config_path=CONFIG, backup_path=BACKUP if result.written else None,
        report_dir=str(where.relative_to(home)) if where.is_relative_to(home) else str(where),
        placement=result.placement, statuses=result.status_counts, remeasured=result.remeasured,
        improvement=d["improvement"], ties=tuple(d["ties"]), perf_analyzer_flags=result.perf_flags,
        load_avg=tuple(d["load_avg"]), tool_version=__version__)
    history = manifest.history
    if result.written and result.chosen is not None:
        history += (TuneHistoryEntry(time=stamp, backup=BACKUP, previous=result.previous.to_dict(),
                                     chosen=result.chosen.point.to_dict(), objective=result.objective.to_dict(),
                                     previous_config=original),)
    updated = dataclasses.replace(manifest, tuning=dataclasses.replace(manifest.tuning, last=summary),
                                  history=history)
    updated.save(model_dir)
    return updated
