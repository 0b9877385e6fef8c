"""The server statistics the dynamic-batching check reads."""

from __future__ import annotations

from aitune_triton.validate.checks import batching


def test_batch_histogram():
    stats = {"batch_stats": [{"batch_size": 1, "compute_infer": {"count": 5, "ns": 10}},
                             {"batch_size": 8, "compute_infer": {"count": "2", "ns": 10}}]}
    assert batching.batch_histogram(stats) == {1: 5, 8: 2}
    assert batching.batch_histogram({}) == {}
