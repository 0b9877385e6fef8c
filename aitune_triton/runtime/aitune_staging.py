"""Host staging for GPU instances of the served model: request inputs in host memory go to the GPU,
and outputs for such requests come back, each batch in one pass through reused pinned buffers.

Copied verbatim next to ``model.py``. It imports torch only (no Triton), so CPU unit tests run it
(``device`` cpu: plain buffers, no streams). Why it exists: a request that arrives over gRPC or system
shared memory is one host tensor per request. Copying each to the GPU costs one synchronous transfer
from pageable memory per request, and a fresh pinned buffer per batch costs a page-locking call each
time. Here the requests of a batch are gathered in chunks into a pinned buffer, and each chunk's
host-to-device copy is queued on a side stream as soon as the chunk is gathered, so gathering the
next chunk overlaps with the transfer of the previous one; the compute stream waits for the copies
on the GPU, not on the host. Each buffer has two slots used in turn, so the gather of the next batch
never waits for the transfer of the previous one, only for the one before it.
"""

import torch

MAX_KEYS = 64  # distinct (name, shape, dtype) buffers kept; dynamic non-batch dims could grow it without bound
STAGING_CHUNK_ROWS = 16  # rows gathered before their copy starts: big enough to amortise a copy launch
# torch threads of one GPU instance: its CPU work is gathering request tensors and Python. Measured on a
# two-H200, 32-core host (BENCHMARKS.md, GPU matrix): torch's default (every core per stub) made two
# instances on one GPU 9x slower than one; 4 threads each gave 1.34x one instance, 1 thread each 1.90x,
# and one instance ran as fast with 1 thread as with 4.
GPU_INSTANCE_MAX_THREADS = 1


def gpu_instance_threads(config, cpu_count, visible_gpus):
    """Torch threads per GPU instance: the host's cores shared by every GPU instance of the model
    (``count`` per listed GPU, every visible GPU when the group lists none), at most
    GPU_INSTANCE_MAX_THREADS and at least 1. The config's TORCH_NUM_THREADS overrides it (model.py)."""
    instances = 0
    for group in config.get("instance_group", []):
        if group.get("kind", "KIND_GPU") == "KIND_GPU":
            instances += int(group.get("count", 1)) * max(1, len(group.get("gpus") or []) or visible_gpus)
    return max(1, min(GPU_INSTANCE_MAX_THREADS, cpu_count // max(1, instances)))


def chunk_spans(sizes, chunk_rows):
    """Split requests of ``sizes`` rows, in order, into chunks of at least ``chunk_rows`` rows (the last
    may be smaller): ``(first, last, lo, hi)`` per chunk, requests ``first..last-1`` filling rows
    ``lo..hi-1``. A request is never split."""
    spans, first, lo, rows = [], 0, 0, 0
    for i, n in enumerate(sizes):
        rows += n
        if rows - lo >= chunk_rows or i == len(sizes) - 1:
            spans.append((first, i + 1, lo, rows))
            first, lo = i + 1, rows
    return spans


class _Slot:
    __slots__ = ("buffer", "event")

    def __init__(self, buffer):
        self.buffer = buffer
        self.event = None  # the last transfer that reads or writes ``buffer``


class HostStaging:
    """Reused (pinned, on CUDA) host buffers with ``slots`` slots per input/output tensor kind.

    ``capacity_rows`` is the smallest buffer allocated (max_batch_size, so that one buffer fits every
    batch); ``chunk_rows`` is how many rows are gathered before their copy is started.
    """

    def __init__(self, device, capacity_rows, chunk_rows=STAGING_CHUNK_ROWS, slots=2):
        if slots < 1 or chunk_rows < 1:
            raise ValueError("slots and chunk_rows must be >= 1")
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.capacity_rows = max(1, int(capacity_rows))
        self.chunk_rows = chunk_rows
        self.slots = slots
        self.copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        self._buffers = {}  # key -> [_Slot]
        self._turn = {}  # key -> next slot
        self._used = {}  # key -> output slots handed out since begin()
        self.allocations = 0  # buffers allocated so far (tests and the stage-time log read it)

    def begin(self):
        """A new execute(): output slots handed out before it have been sent."""
        self._used.clear()

    def _allocate(self, shape, dtype):
        self.allocations += 1
        return torch.empty(shape, dtype=dtype, pin_memory=self.cuda)

    def _acquire(self, key, rows, inner, dtype):
        slots = self._buffers.get(key)
        if slots is None:
            if len(self._buffers) >= MAX_KEYS:
                self._buffers.clear()
                self._turn.clear()
            slots = self._buffers[key] = [None] * self.slots
            self._turn[key] = 0
        turn = self._turn[key]
        self._turn[key] = (turn + 1) % self.slots
        slot = slots[turn]
        if slot is not None and slot.event is not None:
            slot.event.synchronize()  # the transfer that last used this slot (normally long finished)
        if slot is None or slot.buffer.shape[0] < rows:
            slot = slots[turn] = _Slot(self._allocate((max(rows, self.capacity_rows),) + inner, dtype))
        return slot

    def upload(self, name, parts, dst):
        """Copy the host tensors ``parts`` of input ``name`` (one per request, batch-major) in order into
        ``dst[:rows]`` on the device; returns that slice. The compute stream waits for the copies."""
        rows = sum(p.shape[0] for p in parts)
        if rows > dst.shape[0]:
            raise ValueError("%d rows do not fit a destination of %d" % (rows, dst.shape[0]))
        inner, dtype = tuple(parts[0].shape[1:]), parts[0].dtype
        slot = self._acquire(("in", name, inner, dtype), rows, inner, dtype)
        buf = slot.buffer
        compute = torch.cuda.current_stream(self.device) if self.cuda else None
        if self.cuda:
            self.copy_stream.wait_stream(compute)  # dst may still be read by work queued earlier
        for first, last, lo, hi in chunk_spans([p.shape[0] for p in parts], self.chunk_rows):
            seg = buf[lo:hi]
            if last - first == 1:
                seg.copy_(parts[first])
            else:
                torch.cat(parts[first:last], out=seg)
            if self.cuda:
                with torch.cuda.stream(self.copy_stream):
                    dst[lo:hi].copy_(seg, non_blocking=True)
            else:
                dst[lo:hi].copy_(seg)
        if self.cuda:
            slot.event = torch.cuda.Event()
            slot.event.record(self.copy_stream)
            compute.wait_event(slot.event)
        return dst[:rows]

    def download(self, name, y):
        """One device-to-host copy of ``y`` into a staging slot, queued on the current stream; the caller
        synchronises before the host reads it. A slot is not handed out twice between begin() calls (its
        views are still waiting to be sent): past ``slots`` outputs of one name, a fresh buffer is used."""
        key = ("out", name, tuple(y.shape[1:]), y.dtype)
        rows = y.shape[0]
        used = self._used.get(key, 0)
        self._used[key] = used + 1
        if used >= self.slots:
            buf = self._allocate((rows,) + tuple(y.shape[1:]), y.dtype)
        else:
            slot = self._acquire(key, rows, tuple(y.shape[1:]), y.dtype)
            buf = slot.buffer
        out = buf[:rows]
        out.copy_(y, non_blocking=self.cuda)
        if self.cuda and used < self.slots:
            slot.event = torch.cuda.Event()
            slot.event.record(torch.cuda.current_stream(self.device))
        return out


def fill_padding(x, total):
    """Rows ``total..`` of ``x`` become copies of rows ``0..total-1`` in order (row i = row i mod total):
    padding with real rows keeps masks and lengths valid. log2 copies, all on the device."""
    filled, target = total, x.shape[0]
    while filled < target:
        n = min(filled, target - filled)
        x[filled:filled + n].copy_(x[:n])
        filled += n
    return x
