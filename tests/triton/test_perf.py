"""perf_analyzer runner: command building, CSV parsing, input data, unstable/failed points."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from aitune_triton.errors import PerfError
from aitune_triton.triton.perf import (
    PerfOptions,
    PerfRow,
    build_perf_command,
    failure_cause,
    parse_csv,
    run_perf,
    write_input_data_json,
)

PA = Path("/opt/pa/perf_analyzer")

# Captured from perf_analyzer 2.48.0 (-f out.csv --verbose-csv) against tritonserver 2.51 on this
# project's CPU test box: python-backend add model, gRPC, concurrency 1 and 2.
CSV_VERBOSE = textwrap.dedent(
    """\
    Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,Avg latency,request/response,response wait
    2,2768.79,3,215,205,16,168,108,1,697,856,911,1036,719,4,704
    1,1644.19,2,161,207,12,126,92,1,581,692,732,885,604,3,587
    """
)
CSV_PLAIN = textwrap.dedent(
    """\
    Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency
    4,755.2,5,300,1200,20,900,50,2,5100,7600,8800,10000
    """
)


def args_after(cmd: list[str], flag: str) -> list[str]:
    return [cmd[i + 1] for i, a in enumerate(cmd[:-1]) if a == flag]


def test_build_perf_command_defaults(tmp_path):
    cmd = build_perf_command("m", "127.0.0.1:8001", PerfOptions(), tmp_path / "o.csv", concurrency=(2,),
                             perf_analyzer=PA)
    assert cmd[0] == str(PA)
    assert args_after(cmd, "-m") == ["m"]
    assert args_after(cmd, "-i") == ["grpc"]
    assert args_after(cmd, "-u") == ["127.0.0.1:8001"]
    assert args_after(cmd, "-b") == ["1"]
    assert args_after(cmd, "--concurrency-range") == ["2:2"]
    assert args_after(cmd, "--measurement-mode") == ["count_windows"]
    assert args_after(cmd, "--measurement-request-count") == ["200"]
    assert args_after(cmd, "--max-trials") == ["10"]
    assert args_after(cmd, "-s") == ["20"]
    assert args_after(cmd, "-f") == [str(tmp_path / "o.csv")]
    assert "--verbose-csv" in cmd
    assert "--shared-memory" not in cmd and "--shape" not in cmd and "--input-data" not in cmd


def test_concurrency_ranges(tmp_path):
    def rng(levels):
        opts = PerfOptions(concurrency=levels)
        return args_after(build_perf_command("m", "u", opts, tmp_path / "o.csv", perf_analyzer=PA), "--concurrency-range")

    assert rng((3,)) == ["3:3"]
    assert rng((2, 4, 6)) == ["2:6:2"]

def test_concurrency_must_be_even_or_single(tmp_path):
    with pytest.raises(ValueError, match="evenly spaced"):
        build_perf_command("m", "u", PerfOptions(concurrency=(1, 2, 4)), tmp_path / "o.csv", perf_analyzer=PA)
    with pytest.raises(ValueError, match="concurrency values must be >= 1"):
        build_perf_command("m", "u", PerfOptions(concurrency=(0,)), tmp_path / "o.csv", perf_analyzer=PA)


def test_build_perf_command_options(tmp_path):
    opts = PerfOptions(
        concurrency=(8,), protocol="http", shared_memory="system", measurement_mode="time_windows",
        measurement_interval_ms=3000, batch_size=4, shapes={"IN": (3, 224, 224), "MASK": (7,)},
        input_data=tmp_path / "data.json", extra_args=("--percentile=95",),
    )
    cmd = build_perf_command("m", "h:8000", opts, tmp_path / "o.csv", perf_analyzer=PA)
    assert args_after(cmd, "-i") == ["http"]
    assert args_after(cmd, "--shared-memory") == ["system"]
    assert args_after(cmd, "-p") == ["3000"] and "--measurement-request-count" not in cmd
    assert args_after(cmd, "-b") == ["4"]
    assert args_after(cmd, "--shape") == ["IN:3,224,224", "MASK:7"]
    assert args_after(cmd, "--input-data") == [str(tmp_path / "data.json")]
    assert cmd[-1] == "--percentile=95"
    with pytest.raises(ValueError, match="shared_memory must be one of"):
        build_perf_command("m", "u", PerfOptions(shared_memory="gpu"), tmp_path / "o.csv", perf_analyzer=PA)
    with pytest.raises(ValueError, match="protocol must be 'grpc' or 'http'"):
        build_perf_command("m", "u", PerfOptions(protocol="ws"), tmp_path / "o.csv", perf_analyzer=PA)


def test_parse_verbose_csv(tmp_path):
    path = tmp_path / "v.csv"
    path.write_text(CSV_VERBOSE)
    rows = parse_csv(path)
    assert [r.concurrency for r in rows] == [1, 2]  # perf_analyzer sorts by throughput; we by concurrency
    assert rows[0] == PerfRow(
        concurrency=1, throughput=1644.19, p50_ms=0.581, p90_ms=0.692, p95_ms=0.732, p99_ms=0.885,
        avg_latency_ms=0.604, queue_us=207, compute_input_us=12, compute_infer_us=126, compute_output_us=92,
        client_send_us=2, client_recv_us=1,
    )


def test_parse_plain_csv_has_no_average(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text(CSV_PLAIN)
    (row,) = parse_csv(path)
    assert row.concurrency == 4 and row.avg_latency_ms is None and row.p99_ms == pytest.approx(10.0)


def test_parse_rejects_other_csv(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("Request Rate,Inferences/Second\n10,9\n")
    with pytest.raises(PerfError, match=r"is not a perf_analyzer concurrency CSV \(header \['Request Rate'"):
        parse_csv(path)


def fake_perf_analyzer(tmp_path: Path, unstable: int | None = None, fail: int | None = None) -> Path:
    """A stand-in binary: exit 2 (unstable) or 99 (error) at the given concurrency, else write a CSV row."""
    script = tmp_path / "perf_analyzer"
    script.write_text(textwrap.dedent(
        f"""\
        #!/bin/sh
        while [ $# -gt 0 ]; do
          case "$1" in
            --concurrency-range) c="${{2%%:*}}"; shift ;;
            -f) csv="$2"; shift ;;
          esac
          shift
        done
        if [ "$c" = "{unstable}" ]; then
          echo "Failed to obtain stable measurement within 10 measurement windows for concurrency $c."
          exit 2
        fi
        if [ "$c" = "{fail}" ]; then
          echo "error: failed to get model metadata: Request for unknown model" >&2
          exit 99
        fi
        echo "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,Avg latency,request/response,response wait" > "$csv"
        echo "$c,$((c * 100)),1,2,3,4,5,6,7,1000,2000,3000,4000,1500,1,1" >> "$csv"
        echo "Concurrency: $c, throughput: $((c * 100)) infer/sec"
        """
    ))
    script.chmod(0o755)
    return script


def test_run_perf_reports_unstable_points(tmp_path):
    pa = fake_perf_analyzer(tmp_path, unstable=2)
    result = run_perf("m", "u", PerfOptions(concurrency=(1, 2, 3)), workdir=tmp_path / "w", perf_analyzer=pa)
    assert [r.concurrency for r in result.rows] == [1, 3]
    assert result.unstable == (2,)
    assert result.ok and result.best().concurrency == 3 and result.rows[1].throughput == 300
    assert "stable measurement" in result.stdout_tail
    assert [p.name for p in result.csv_paths] == ["m_c1.csv", "m_c3.csv"]


def test_run_perf_error_quotes_perf_analyzer(tmp_path):
    pa = fake_perf_analyzer(tmp_path, fail=4)
    with pytest.raises(PerfError, match=r"^perf_analyzer failed \(exit 99\) at concurrency 4: error: failed to get "
                                         r"model metadata: Request for unknown model\n") as info:
        run_perf("m", "u", PerfOptions(concurrency=(1, 4)), workdir=tmp_path / "w", perf_analyzer=pa)
    assert [r.concurrency for r in info.value.partial.rows] == [1]


def test_run_perf_timeout(tmp_path):
    pa = tmp_path / "slow"
    pa.write_text("#!/bin/sh\nsleep 5\n")
    pa.chmod(0o755)
    with pytest.raises(PerfError, match=r"^perf_analyzer timed out after 0 s at concurrency 1: no responses from the "
                                         r"model in that time"):
        run_perf("m", "u", PerfOptions(concurrency=(1,), timeout_s=0.5), workdir=tmp_path, perf_analyzer=pa)


STALLED_STUB = """Successfully read data for 1 stream/streams with 4 step/steps.
*** Measurement Settings ***
  Batch size: 1
  Using "count_windows" mode for stabilization

Request concurrency: 1
Failed to maintain requested inference load. Worker thread(s) failed to generate concurrent requests.
Thread [0] had error: Stub process 'cnn_0_0' is not healthy.
"""


def test_failure_cause_is_the_error_line_not_the_banner():
    """A stopped stub: the message quoted perf_analyzer's first line ("Successfully read data ...")."""
    assert failure_cause(STALLED_STUB) == ("Failed to maintain requested inference load. Worker thread(s) failed to "
                                           "generate concurrent requests. Thread [0] had error: Stub process "
                                           "'cnn_0_0' is not healthy.")
    assert failure_cause("*** Measurement Settings ***\n  Batch size: 1\n") is None


def test_write_input_data_json(tmp_path):
    path = write_input_data_json(
        [{"IN": np.arange(6, dtype=np.float32).reshape(1, 2, 3), "IDS": np.array([[7, 8]], np.int64)},
         {"IN": np.zeros((1, 2, 3), np.float32), "IDS": np.array([[1, 2]], np.int64)}],
        tmp_path / "d.json",
    )
    data = json.loads(path.read_text())["data"]
    assert data[0]["IN"] == {"content": [0, 1, 2, 3, 4, 5], "shape": [2, 3]}
    assert data[0]["IDS"] == {"content": [7, 8], "shape": [2]}
    assert data[1]["IN"]["content"] == [0] * 6


def test_write_input_data_json_single_and_unbatched(tmp_path):
    one = json.loads(write_input_data_json({"X": np.ones((1, 4))}, tmp_path / "a.json").read_text())
    assert one == {"data": [{"X": {"content": [1.0] * 4, "shape": [4]}}]}
    raw = json.loads(write_input_data_json({"X": np.ones((1, 4))}, tmp_path / "b.json", has_batch_dim=False).read_text())
    assert raw["data"][0]["X"]["shape"] == [1, 4]
    text = json.loads(write_input_data_json({"S": np.array([[b"hi"]], dtype=object)}, tmp_path / "c.json").read_text())
    assert text["data"][0]["S"] == {"content": ["hi"], "shape": [1]}
    with pytest.raises(ValueError, match="batch dim of 1"):
        write_input_data_json({"X": np.ones((2, 4))}, tmp_path / "d.json")
    with pytest.raises(ValueError, match="no samples"):
        write_input_data_json([], tmp_path / "e.json")


def test_half_precision_inputs_are_written_as_base64_bytes(tmp_path):
    """perf_analyzer 2.48 refuses explicit values for FP16 tensors ("Can not use explicit tensor
    description for fp16 datatype"); their raw bytes go base64-encoded instead."""
    import base64

    half = np.arange(6, dtype=np.float16).reshape(1, 2, 3)
    entry = json.loads(write_input_data_json({"X": half, "I": np.ones((1, 2), np.int64)}, tmp_path / "h.json")
                       .read_text())["data"][0]
    assert entry["X"]["shape"] == [2, 3] and entry["I"]["content"] == [1, 1]
    raw = base64.b64decode(entry["X"]["content"]["b64"])
    assert np.array_equal(np.frombuffer(raw, np.float16).reshape(2, 3), half[0])
