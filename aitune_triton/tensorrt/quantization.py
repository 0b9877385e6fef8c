"""Apply AITune's quantization configs with NVIDIA ModelOpt.

* ``ONNXAutoCastConfig``: ModelOpt AutoCast rewrites the ONNX graph to fp16/bf16 where the reference
  run says values fit (``data_max``); the I/O keeps its types, so Triton's config and clients are
  unchanged. The plan is then built strongly typed.
* ``ONNXQuantizationConfig``: ModelOpt's ONNX PTQ inserts Q/DQ nodes calibrated on the samples
  (int8/fp8/int4); ``precision="fp16"`` is a plain fp16 conversion (ModelOpt's ``quantize`` has no
  fp16 mode). Also built strongly typed.
* ``TorchQuantizationConfig``: ``modelopt.torch.quantization.quantize`` on the module before export;
  the Q/DQ it inserts end up in the ONNX, and the plan is built weakly typed with the matching flag.

ModelOpt takes 8-15 s to import, so it is imported only here and only when a config asks for it.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from aitune_triton.errors import ModelError, UserError
from aitune_triton.tensorrt.config import (
    ONNXAutoCastConfig,
    ONNXQuantizationConfig,
    QuantizationConfig,
    TorchQuantizationConfig,
)

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'aitune-triton[tensorrt]'"
# what ModelOpt's PTQ leaves the unquantized ops in (its default, stated so the manifest can say it)
HIGH_PRECISION_DTYPE = "fp16"


def _modelopt(module: str, qconfig: QuantizationConfig) -> Any:
    """Import a ModelOpt module or say which config needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or ""
        reason = "" if missing.startswith("modelopt") else " (import failed: %s)" % exc
        raise UserError("nvidia-modelopt is required for %s: %s%s"
                        % (type(qconfig).__name__, INSTALL_HINT, reason)) from None


def _calibration_reader(samples: Sequence[dict[str, np.ndarray]]):
    """An ONNX Runtime ``CalibrationDataReader`` over the samples as they are: shapes may differ per
    sample (ModelOpt's ``calibration_data`` dict would need one stacked array per input)."""
    from onnxruntime.quantization.calibrate import CalibrationDataReader

    class SampleReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = [{k: np.ascontiguousarray(v) for k, v in s.items()} for s in samples]
            self._it = iter(self._items)

        def get_next(self):
            return next(self._it, None)

        def get_first(self):
            return self._items[0]

        def rewind(self) -> None:
            self._it = iter(self._items)

        def __len__(self) -> int:
            return len(self._items)

    return SampleReader()


def _check_calibration(calibration: Sequence[dict[str, np.ndarray]], what: str) -> None:
    if not calibration:
        raise UserError("%s needs calibration samples; get_samples() returned none" % what)
    for i, sample in enumerate(calibration):
        for name, value in sample.items():
            if not isinstance(value, np.ndarray):
                raise UserError("calibration sample %d input %r is a %s, not a numpy array"
                                % (i, name, type(value).__name__))


def _save(model: Any, onnx_out: Path) -> None:
    from modelopt.onnx.utils import save_onnx

    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    save_onnx(model, str(onnx_out))


def _autocast(onnx_in: Path, onnx_out: Path, qconfig: ONNXAutoCastConfig,
              calibration: Sequence[dict[str, np.ndarray]]) -> None:
    autocast = _modelopt("modelopt.onnx.autocast", qconfig)
    with tempfile.TemporaryDirectory(prefix="aitune-autocast-") as tmp:
        calib_dir = None
        if calibration:
            # AutoCast's reference runner reads a directory of .npz files, one per sample
            calib_dir = Path(tmp) / "calibration"
            calib_dir.mkdir()
            for i, sample in enumerate(calibration):
                np.savez(calib_dir / ("sample_%05d.npz" % i), **sample)
        model = autocast.convert_to_mixed_precision(
            onnx_path=str(onnx_in), low_precision_type=qconfig.low_precision_type or qconfig.precision,
            nodes_to_exclude=list(qconfig.nodes_to_exclude) or None, data_max=qconfig.data_max,
            keep_io_types=True, calibration_data=str(calib_dir) if calib_dir else None, providers=["cpu"])
    _save(model, onnx_out)


def _fp16(onnx_in: Path, onnx_out: Path, qconfig: ONNXQuantizationConfig) -> None:
    import onnx

    autocast = _modelopt("modelopt.onnx.autocast", qconfig)
    model = autocast.convert_to_f16(onnx.load(str(onnx_in)), low_precision_type="fp16", keep_io_types=True)
    _save(model, onnx_out)


def ptq_calibration_method(qconfig: ONNXQuantizationConfig) -> str:
    """The calibration method ModelOpt runs: int4 has its own methods (awq_clip, rtn_dq, ...), and
    AITune's default "max", an int8/fp8 method, stands for ModelOpt's int4 default there."""
    if qconfig.precision == "int4" and qconfig.calibration_method == "max":
        return "awq_clip"
    return qconfig.calibration_method


def _ptq(onnx_in: Path, onnx_out: Path, qconfig: ONNXQuantizationConfig,
         calibration: Sequence[dict[str, np.ndarray]], calibration_eps: Sequence[str]) -> None:
    _check_calibration(calibration, "ONNXQuantizationConfig(precision=%r)" % qconfig.precision)
    quantization = _modelopt("modelopt.onnx.quantization", qconfig)
    if not str(onnx_in).endswith(".onnx"):
        raise UserError("ModelOpt needs an input file ending in .onnx, got %s" % onnx_in)
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    quantization.quantize(
        onnx_path=str(onnx_in), quantize_mode=qconfig.precision, calibration_method=ptq_calibration_method(qconfig),
        calibration_data_reader=_calibration_reader(calibration), calibration_eps=list(calibration_eps),
        nodes_to_exclude=list(qconfig.nodes_to_exclude) or None, output_path=str(onnx_out), log_level="CRITICAL",
        high_precision_dtype=HIGH_PRECISION_DTYPE)
    if not onnx_out.is_file():
        raise ModelError("ModelOpt %s quantization wrote no model to %s" % (qconfig.precision, onnx_out))


def apply_onnx_quantization(onnx_in: Path | str, onnx_out: Path | str,
                            qconfig: ONNXAutoCastConfig | ONNXQuantizationConfig,
                            calibration: Sequence[dict[str, np.ndarray]],
                            calibration_eps: Sequence[str] = ("cpu",)) -> Path:
    """Write the quantized / mixed-precision ONNX for ``qconfig`` to ``onnx_out`` and return its path.

    ``calibration`` holds the samples as ``{input name: array}`` feeds (shapes may differ between
    samples). ``calibration_eps`` are ONNX Runtime providers for calibration, in ModelOpt's names
    ("cpu", "cuda:0", "trt"); CPU works everywhere.
    """
    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    if not onnx_in.is_file():
        raise UserError("no ONNX model at %s" % onnx_in)
    if onnx_in.resolve() == onnx_out.resolve():
        raise UserError("quantization must write a new file, not overwrite its input %s" % onnx_in)
    try:
        with _quiet():
            _dispatch(onnx_in, onnx_out, qconfig, calibration, calibration_eps)
    except (UserError, ModelError):
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError("ModelOpt %s failed: %s: %s" % (type(qconfig).__name__, type(exc).__name__, first)) from exc
    log.info("%s wrote %s", type(qconfig).__name__, onnx_out)
    return onnx_out


def _dispatch(onnx_in: Path, onnx_out: Path, qconfig: ONNXAutoCastConfig | ONNXQuantizationConfig,
              calibration: Sequence[dict[str, np.ndarray]], calibration_eps: Sequence[str]) -> None:
    if isinstance(qconfig, ONNXAutoCastConfig):
        _autocast(onnx_in, onnx_out, qconfig, calibration)
    elif isinstance(qconfig, ONNXQuantizationConfig):
        if qconfig.precision == "fp16":
            _fp16(onnx_in, onnx_out, qconfig)
        else:
            _ptq(onnx_in, onnx_out, qconfig, calibration, calibration_eps)
    else:
        raise UserError("apply_onnx_quantization takes ONNXAutoCastConfig or ONNXQuantizationConfig, got %s; "
                        "TorchQuantizationConfig is applied to the module before export" % type(qconfig).__name__)


@contextlib.contextmanager
def _quiet():
    """ModelOpt prints progress to stdout and logs through its own stdout handler (on a machine
    without a GPU it logs an NVML *error* that is harmless): keep that off the user's console and
    in the debug log. Real failures come back as exceptions."""
    names = ["modelopt"] + [n for n in logging.root.manager.loggerDict if n.startswith("modelopt")]
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.CRITICAL)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)
        if out.getvalue().strip():
            log.debug("ModelOpt output:\n%s", out.getvalue())


def torch_quantization_config(qconfig: TorchQuantizationConfig) -> dict:
    """ModelOpt's named config (``mtq.<name>``), copied so calibration never edits the shared dict."""
    mtq = _modelopt("modelopt.torch.quantization", qconfig)
    cfg = getattr(mtq, qconfig.quantization_config, None)
    if not isinstance(cfg, dict):
        known = sorted(n for n in dir(mtq) if n.endswith("_CFG") and isinstance(getattr(mtq, n), dict))
        raise UserError("TorchQuantizationConfig.quantization_config=%r is not a ModelOpt config; use one of %s"
                        % (qconfig.quantization_config, ", ".join(known)))
    return copy.deepcopy(cfg)


def apply_torch_quantization(model: Any, qconfig: TorchQuantizationConfig,
                             forward_loop: Callable[[Any], None] | None) -> Any:
    """Quantize ``model`` in place with ``mtq.quantize`` and return it. ``forward_loop(model)`` runs
    the calibration batches (see ``forward_loop_over``); pass a copy of the model to keep the original."""
    cfg = torch_quantization_config(qconfig)
    mtq = _modelopt("modelopt.torch.quantization", qconfig)
    try:
        with _quiet():
            return mtq.quantize(model, cfg, forward_loop)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError("ModelOpt torch quantization (%s) failed: %s: %s"
                         % (qconfig.quantization_config, type(exc).__name__, first)) from exc


def forward_loop_over(samples: Sequence[Any], run: Callable[[Any, Any], Any],
                      steps: int) -> Callable[[Any], None]:
    """A ModelOpt ``forward_loop`` that calls ``run(model, sample)`` on up to ``steps`` samples
    (cycling when there are fewer samples than steps), without autograd."""
    if not samples:
        raise UserError("torch quantization needs calibration samples; get_samples() returned none")

    def loop(model: Any) -> None:
        import torch

        with torch.no_grad():
            for i in range(max(1, steps)):
                run(model, samples[i % len(samples)])

    return loop
