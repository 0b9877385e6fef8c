"""Tables stay readable when the output is not a terminal (CI logs, pipes)."""

from __future__ import annotations

import io

from rich.table import Table

from aitune_triton.console import PIPE_WIDTH, make_console, output_width


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_width_is_fixed_and_wide_when_not_a_terminal():
    assert output_width(Tty()) is None
    assert output_width(io.StringIO(), {}) == PIPE_WIDTH
    assert output_width(io.StringIO(), {"COLUMNS": "300"}) == 300
    assert output_width(io.StringIO(), {"COLUMNS": "80"}) == PIPE_WIDTH


def test_a_wide_table_is_not_wrapped_into_narrow_cells(capsys):
    table = Table()
    for name in ("model", "check", "status", "detail", "latency p50 ms", "throughput infer/s"):
        table.add_column(name)
    table.add_row("cnn_with_a_long_name", "reference outputs over gRPC", "PASS",
                  "max |err| 3.7e-08 within atol 1e-05 on 6 cases", "1.234", "5678.9")
    make_console().print(table)  # pytest's captured stdout is not a terminal
    lines = capsys.readouterr().out.splitlines()
    assert any("cnn_with_a_long_name" in line and "max |err| 3.7e-08 within atol 1e-05 on 6 cases" in line
               for line in lines)
    assert len(lines) == 5  # top border, header, rule, one row, bottom border: nothing wrapped
