"""torch's output goes to the log file, the console gets the cause in plain words with the model's line."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import pytest
import torch
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

from aitune_triton.export.diagnostics import capture_torch_output, export_failure

ZOO = Path(__file__).resolve().parents[1] / "zoo"


class Branchy(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # a branch on tensor values
            return x * 2
        return x - 1


def test_data_dependent_branch_is_named_in_plain_words_and_torch_output_goes_to_the_log(tmp_path, capfd):
    log_path = tmp_path / "logs" / "fallback.log"
    torch_logger = logging.getLogger("torch")
    handlers_before = list(torch_logger.handlers)
    with pytest.raises(GuardOnDataDependentSymNode, match="data-dependent expression") as info:
        with capture_torch_output(log_path):
            torch.export.export(Branchy(), (torch.randn(3, 4),),
                                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=8)},))
    line = export_failure(info.value)
    where = inspect.getsourcelines(Branchy.forward)[1] + 1
    assert line == ("control flow depends on input values (`if x.sum() > 0` at test_diagnostics.py:%d); "
                    "torch.export cannot trace it" % where)
    out, err = capfd.readouterr()
    assert "def forward(" not in out + err and "Unable to find user code" not in out + err
    text = log_path.read_text()
    assert "def forward(" in text  # the graph torch prints on failure
    assert torch_logger.handlers == handlers_before


def test_other_failures_keep_their_first_line_and_the_model_line():
    class Bad(torch.nn.Module):
        def forward(self, x):
            return x.view(-1, 7)  # not every batch size divides

    try:
        Bad()(torch.randn(2, 4))
    except RuntimeError as exc:
        line = export_failure(exc)
    assert line.startswith("RuntimeError: shape '[-1, 7]' is invalid for input of size 8")
    where = inspect.getsourcelines(Bad.forward)[1] + 1
    assert line.endswith("(`return x.view(-1, 7)` at test_diagnostics.py:%d)" % where)
    assert "\n" not in line


def test_quantized_packed_params_are_named_as_what_torch_export_cannot_trace():
    model = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(4, 2)), {torch.nn.Linear},
                                                   dtype=torch.qint8)
    with pytest.raises(Exception) as info:
        torch.export.export(model, (torch.randn(2, 4),))
    assert export_failure(info.value) == ("the model holds LinearPackedParamsBase objects (packed weights of torch.ao "
                                          "quantized modules, e.g. quantize_dynamic), which torch.export cannot trace")


def test_build_fallback_logs_torch_output_and_a_failed_build_keeps_its_log(tmp_path):
    from aitune_triton.errors import ModelError
    from aitune_triton.export.torch_export import build_fallback, skipped_summary
    from aitune_triton.source import load_model_source
    from aitune_triton.spec import record_spec

    src = load_model_source(ZOO / "branchy.py")
    spec = record_spec(src.model, src.samples, src.outputs)
    with pytest.raises(ModelError, match=r"^fallback format 'export' failed: torch.export failed: control flow depends "
                                         r"on input values \(`if x.sum\(\) > 0` at branchy.py:12\)") as info:
        build_fallback(src.path, src.model, spec, src.samples, src.outputs, None, tmp_path / "m" / "1",
                       preferred="export")
    kept = Path(info.value.log_path)
    assert kept.parent != tmp_path / "m" and "GuardOnDataDependentSymNode" in kept.read_text()  # outlives the model dir
    assert kept.read_text() == (tmp_path / "m" / "logs" / "fallback.log").read_text()
    kept.unlink()
    summary = skipped_summary([("aoti", "x"), ("export", "x"), ("eager", "y")])
    assert summary == "aoti, export skipped: x; eager skipped: y"
