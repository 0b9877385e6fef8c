"""Host staging of the served model's GPU instances (aitune_staging.py), run on the CPU: thread bounds,
chunked gathers, buffer reuse, outputs not overwritten before they are sent, padding rows."""
import pytest
import torch

from aitune_triton.runtime import aitune_staging as st


def _group(count, kind="KIND_GPU", gpus=None):
    g = {"count": count, "kind": kind}
    if gpus is not None:
        g["gpus"] = gpus
    return g


def test_gpu_instances_take_one_thread_by_default():
    for groups, cpus in (([_group(1, gpus=[0])], 16), ([_group(2, gpus=[0, 1])], 32), ([_group(64, gpus=[0])], 2)):
        assert st.gpu_instance_threads({"instance_group": groups}, cpus, 2) == 1


@pytest.mark.parametrize("groups,cpus,visible,expected", [
    ([_group(1, gpus=[0])], 16, 1, 4),  # capped: a GPU instance's CPU work is gathering and Python
    ([_group(2, gpus=[0, 1])], 32, 2, 4),  # 4 instances on 32 cores
    ([_group(2, gpus=[0, 1])], 8, 2, 2),
    ([_group(4)], 8, 2, 1),  # no list: count on every visible GPU -> 8 instances
    ([_group(2, gpus=[0]), _group(3, kind="KIND_CPU")], 4, 1, 2),  # CPU groups are not GPU instances
    ([_group(64, gpus=[0])], 2, 1, 1),
])
def test_gpu_instance_threads_share_the_host_under_a_higher_cap(monkeypatch, groups, cpus, visible, expected):
    monkeypatch.setattr(st, "GPU_INSTANCE_MAX_THREADS", 4)
    assert st.gpu_instance_threads({"instance_group": groups}, cpus, visible) == expected


@pytest.mark.parametrize("sizes,chunk,expected", [
    ([1] * 40, 16, [(0, 16, 0, 16), (16, 32, 16, 32), (32, 40, 32, 40)]),
    ([20, 1, 1], 16, [(0, 1, 0, 20), (1, 3, 20, 22)]),  # a request is never split
    ([8, 8], 64, [(0, 2, 0, 16)]),
    ([], 16, []),
])
def test_chunk_spans(sizes, chunk, expected):
    assert st.chunk_spans(sizes, chunk) == expected


def test_upload_gathers_in_order_and_reuses_two_slots():
    staging = st.HostStaging("cpu", capacity_rows=64, chunk_rows=4)
    dst = torch.full((64, 3), -1.0)
    for _ in range(3):
        parts = [torch.randn(n, 3) for n in (1, 5, 2, 1, 7)]
        out = staging.upload("x", parts, dst)
        assert out.shape == (16, 3) and torch.equal(out, torch.cat(parts))
        assert torch.equal(dst[16:], torch.full((48, 3), -1.0))  # rows past the batch untouched
    assert staging.allocations == 2  # two slots, allocated once, at max batch, then reused
    staging.upload("x", [torch.randn(100, 3)], torch.empty(100, 3))  # above capacity: that slot grows
    assert staging.allocations == 3
    with pytest.raises(ValueError, match="do not fit"):
        staging.upload("x", [torch.randn(5, 3)], torch.empty(4, 3))


def test_inputs_with_the_same_shape_get_their_own_buffers():
    staging = st.HostStaging("cpu", capacity_rows=8)
    a, b = torch.arange(8).view(4, 2), torch.arange(8, 16).view(4, 2)
    out_a = staging.upload("input_ids", [a], torch.empty(8, 2, dtype=a.dtype))
    out_b = staging.upload("attention_mask", [b], torch.empty(8, 2, dtype=b.dtype))
    assert torch.equal(out_a, a) and torch.equal(out_b, b) and staging.allocations == 2


def test_download_never_hands_out_a_slot_twice_before_begin():
    staging = st.HostStaging("cpu", capacity_rows=8, slots=2)
    staging.begin()
    ys = [torch.full((3, 2), float(i)) for i in range(4)]
    outs = [staging.download("logits", y) for y in ys]  # four groups in one execute()
    for i, out in enumerate(outs):
        assert torch.equal(out, ys[i])  # none overwritten by a later group
    before = staging.allocations
    staging.begin()
    again = staging.download("logits", torch.ones(3, 2))
    assert staging.allocations == before and torch.equal(again, torch.ones(3, 2))  # slots reused next time


def test_fill_padding_repeats_real_rows_in_order():
    x = torch.zeros(8, 2, dtype=torch.int64)
    x[:3] = torch.tensor([[1, 1], [2, 2], [3, 3]])
    st.fill_padding(x, 3)
    assert x[:, 0].tolist() == [1, 2, 3, 1, 2, 3, 1, 2]
    y = torch.arange(4)
    assert st.fill_padding(y, 4).tolist() == [0, 1, 2, 3]
