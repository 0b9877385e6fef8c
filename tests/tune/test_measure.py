"""Reading perf_analyzer's windows into a median and a spread, and the interleaved re-measurement."""

from __future__ import annotations

import textwrap

import pytest

from aitune_triton.tune.measure import from_run, looser, parse_passes, perf_flags, remeasure, settled_stubs
from aitune_triton.tune.points import Measurement, Point, Remeasured, Status, Variant
from aitune_triton.tune.options import tune_perf_options
from aitune_triton.triton.perf import PerfOptions

POINT = Point(Variant(1, 500), 8)

# perf_analyzer 2.48.0 -v against the embedded tritonserver 2.51 on the loaded 2-core CPU box (cnn example)
UNSTABLE = textwrap.dedent("""\
    Request concurrency: 8
      Pass [1] throughput: 687.289 infer/sec. Avg latency: 10886 usec (std 35869 usec). 
      Pass [2] throughput: 164.938 infer/sec. Avg latency: 51210 usec (std 62793 usec). 
      Pass [3] throughput: 84.643 infer/sec. Avg latency: 87645 usec (std 148791 usec). 
      Pass [4] throughput: 1056.41 infer/sec. Avg latency: 8106 usec (std 23898 usec). 
      Pass [5] throughput: 110.444 infer/sec. Avg latency: 55229 usec (std 95740 usec). 
      Pass [6] throughput: 153.512 infer/sec. Avg latency: 57161 usec (std 130754 usec). 
    Failed to obtain stable measurement within 6 measurement windows for concurrency 8. Please try to increase the --measurement-interval.
    Failed to obtain stable measurement.
    """)  # noqa: E501, W291 - perf_analyzer's output verbatim
STABLE = textwrap.dedent("""\
    Request concurrency: 2
      Pass [1] throughput: 2500.1 infer/sec. Avg latency: 790 usec (std 100 usec). 
      Pass [2] throughput: 2700.5 infer/sec. Avg latency: 730 usec (std 90 usec). 
      Pass [3] throughput: 2900.0 infer/sec. Avg latency: 690 usec (std 80 usec). 
      Pass [4] throughput: 2768.0 infer/sec. Avg latency: 719 usec (std 85 usec). 
      Client: 
        Request count: 8000
    """)  # noqa: W291 - perf_analyzer's output verbatim
CSV = ("Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
       "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,"
       "Avg latency,request/response,response wait\n2,2768.79,3,215,205,16,168,108,1,697,856,911,1036,719,4,704\n")


def test_windows_give_the_median_and_the_spread(tmp_path):
    assert parse_passes(UNSTABLE)[3] == (1056.41, pytest.approx(8.106))
    csv = tmp_path / "c.csv"
    csv.write_text(CSV)
    m = from_run(POINT, 0, STABLE, csv, index=4)
    assert m.ok and m.index == 4
    assert m.windows == (2700.5, 2900.0, 2768.0)  # the last three: the ones perf_analyzer judged stable
    assert (m.throughput, m.throughput_low, m.throughput_high) == (2768.0, 2700.5, 2900.0)
    assert m.p99_ms == pytest.approx(1.036) and m.p99_low < m.p99_ms < m.p99_high
    assert m.spread_pct() == pytest.approx(100 * 199.5 / 2768.0)


def test_unstable_keeps_its_windows_and_stalled_has_no_number(tmp_path):
    m = from_run(POINT, 2, UNSTABLE, tmp_path / "none.csv")
    assert m.status == Status.UNSTABLE.value and not m.ok
    assert (m.throughput, m.throughput_low, m.throughput_high) == (153.512, 110.444, 1056.41)
    assert m.p99_ms is None and "Failed to obtain stable measurement" in m.detail
    stalled = from_run(POINT, 2, "Request concurrency: 8\nFailed to obtain stable measurement.\n", tmp_path / "n.csv")
    assert stalled.status == "stalled" and stalled.throughput is None
    assert stalled.to_dict()["throughput"] is None
    failed = from_run(POINT, 99, "error: failed to get model metadata", tmp_path / "n.csv")
    assert failed.status == "failed" and failed.throughput is None
    with pytest.raises(ValueError, match="'zero' is not a valid Status"):
        Measurement(POINT, status="zero")


def test_remeasure_interleaves_and_summarises_over_rounds():
    a, b = POINT, Point(Variant(2, 0), 8)
    order = []
    values = {a: iter([1000.0, 1300.0, 1100.0]), b: iter([900.0, None, 950.0])}

    def measure(p: Point) -> Measurement:
        order.append(p)
        v = next(values[p])
        return Measurement(p, v, 2.0, 3.0, 4.0 + len(order)) if v else Measurement(p, status="stalled")

    ra, rb = remeasure(measure, [a, b], rounds=3)
    assert order == [a, b, a, b, a, b]
    sa, sb = ra.summary(), rb.summary()
    assert (sa.throughput, sa.throughput_low, sa.throughput_high, sa.p99_ms) == (1100.0, 1000.0, 1300.0, 7.0)
    assert sa.ok and sb.ok and sb.detail == "2 of 3 rounds settled" and sb.windows == (900.0, 950.0)
    one = Remeasured(a, (Measurement(a, 5.0, 1, 1, 1), Measurement(a, status="stalled"),
                         Measurement(a, status="stalled")))
    assert one.summary().status == "unstable"  # fewer than half the rounds settled: never chosen


def test_perf_flags_are_perf_analyzer_option_names():
    flags = perf_flags(tune_perf_options())
    assert flags == {"measurement-mode": "time_windows", "stability-percentage": 30, "max-trials": 6,
                     "measurement-interval": 1000}


def test_a_reload_waits_for_stubs_only_where_there_are_any_and_per_gpu():
    """The expected count ``before - serving + instances`` went negative for models without stubs
    (ONNX, TensorRT: before 0), so lowering their instance count waited the full 10 s on every
    load, and it ignored that a GPU group's count applies to each GPU."""
    assert settled_stubs(0, 2, 1, 1) is None and settled_stubs(None, 2, 1, 1) is None
    assert settled_stubs(2, 2, 1, 1) == 1 and settled_stubs(1, 1, 2, 1) == 2  # one CPU/GPU group
    assert settled_stubs(4, 2, 1, 2) == 2  # 2 per GPU on 2 GPUs -> 1 per GPU: 2 stubs, not 3
    assert settled_stubs(2, 1, 2, 2) == 4  # 1 -> 2 per GPU: 4 stubs (3 was never reached: a 10 s wait)
    assert settled_stubs(5, 2, 1, 2) == 3  # another model's stub stays


@pytest.mark.parametrize("band, retried", [(10, 20), (50, 100), (80, 100), (1000, 1000)])
def test_the_retry_doubles_the_windows_and_never_narrows_the_band(band, retried):
    # a caller's band wider than 100 % (a busy machine, a mechanics-only run) must survive the retry
    perf = PerfOptions(measurement_interval_ms=500, stability_percentage=band)
    retry = looser(perf)
    assert retry.stability_percentage == retried and retry.measurement_interval_ms == 1000
