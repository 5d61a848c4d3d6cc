"""Where the data live and how they are cut into batches: the only thing a tier changes.

* ``InMemoryData``: columns padded to whole batches and placed on the JAX device
  once (STANDARD, LARGE, CHUNKED).
* ``StreamingData``: points read from disk in consecutive runs of whole batches,
  one run ahead in a background thread (STREAMING); memory does not grow with the
  dataset.
Both can hand out a deterministic strided subsample (held in memory) for the
coarse stage.
"""

from __future__ import annotations

import math
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from homodyne.jaxconf import jax
from homodyne.memory import limit_heap_arenas


def _pad(a: np.ndarray, length: int) -> np.ndarray:
    a = np.asarray(a)
    if a.shape[-1] == length:
        return a
    out = np.zeros(a.shape[:-1] + (length,), dtype=a.dtype)
    out[..., : a.shape[-1]] = a
    return out


@dataclass
class Chunk:
    """One call's worth of data: columns (point axis last) and where they sit."""

    columns: dict
    first_batch: int  # batch index inside ``columns`` to start at
    origin: int  # global point index of buffer position 0
    n_valid: int  # buffer positions >= n_valid are padding
    pass_batch: int  # index of the first batch within the whole pass
    n_batches: int
    device: object = None  # where the call runs (None: the default device)


def all_finite(columns: dict, step: int = 1 << 22) -> bool:
    """Whether every floating column holds no NaN or inf (checked in slices of ``step``
    points: the check's own memory stays small)."""
    for v in columns.values():
        a = np.asarray(v)
        if not np.issubdtype(a.dtype, np.floating):
            continue
        for lo in range(0, a.shape[-1], step):
            if not np.isfinite(a[..., lo: lo + step]).all():
                return False
    return True


class _Resident:
    """Shared by the in-memory sources: nothing streamed, nothing to adapt."""

    streamed = False
    can_spill = False
    # the data hold no NaN/inf (checked once, when placed): a pass then need not check
    # each point again (its sums are still checked)
    finite = False

    def adapt(self, seconds: float, memory_ok) -> bool:
        return False


class InMemoryData(_Resident):
    """Columns held on the device, padded to a whole number of batches."""

    def __init__(self, columns: dict, n_points: int, batch_size: int, *, origin: int = 0,
                 stride: int = 1, batches_per_call: int | None = None, device=None):
        self.n_points = int(n_points)
        self.batch_size = int(batch_size)
        self.stride = int(stride)
        self.origin = int(origin)
        self.n_batches = max(1, math.ceil(self.n_points / self.batch_size))
        self.batches_per_call = min(self.n_batches, batches_per_call or self.n_batches)
        length = self.padded_length(self.n_points, self.batch_size, batches_per_call)
        self.device = device
        self.finite = all_finite(columns)
        self.columns = {k: jax.device_put(_pad(np.asarray(v), length), device)
                        for k, v in columns.items()}

    @staticmethod
    def padded_length(n_points: int, batch_size: int, batches_per_call: int | None = None
                      ) -> int:
        """Length the columns are padded to: whole calls of whole batches."""
        n_batches = max(1, math.ceil(n_points / batch_size))
        per_call = min(n_batches, batches_per_call or n_batches)
        return math.ceil(n_batches / per_call) * per_call * batch_size

    def call_columns(self) -> dict:
        """Columns with the shapes and dtypes one call gets (to compile its kernel ahead)."""
        return self.columns

    def chunks(self, start_batch: int = 0):
        G = self.batches_per_call
        for first in range(start_batch - start_batch % G, self.n_batches, G):
            yield Chunk(self.columns, first, self.origin, self.n_points, first,
                        min(G, self.n_batches - first), self.device)

    def subsample(self, max_points: int, batch_size: int, dtype=None):
        """Every s-th point (s = ceil(n / max_points)), as a new in-memory dataset."""
        s = max(1, math.ceil(self.n_points / max_points))
        cols = {k: np.asarray(v[..., : self.n_points : s]) for k, v in self.columns.items()}
        if dtype is not None:
            cols = {k: v.astype(dtype) for k, v in cols.items()}
        n = cols["y"].shape[-1]
        return InMemoryData(cols, n, min(batch_size, n), origin=self.origin,
                            stride=self.stride * s)


def _round_robin(devices, i):
    return devices[i % len(devices)] if devices else None


class _Batched:
    """Shared by the streamed sources: batch count, and batch growth between passes."""

    streamed = True  # memory must not grow with the data (caps the coarse levels)
    can_spill = False  # big coarse levels can go to a temporary file (subsample(to_file))
    finite = False  # read anew in every pass: each point is checked there

    batch_size: int
    n_points: int
    batches_per_call: int
    stride: int
    origin: int
    devices: list
    max_batch_size: int | None = None
    _best_rate: float = 0.0

    @property
    def n_batches(self) -> int:
        return max(1, math.ceil(self.n_points / self.batch_size))

    def adapt(self, seconds: float, memory_ok) -> bool:
        """Double the batch after a pass while throughput improves and memory allows."""
        if not self.max_batch_size or seconds <= 0:
            return False
        rate = self.n_points / seconds
        improved = rate > 1.05 * self._best_rate
        self._best_rate = max(self._best_rate, rate)
        bigger = min(self.max_batch_size, 2 * self.batch_size)
        if improved and bigger > self.batch_size and memory_ok(bigger * self.batches_per_call):
            self.batch_size = bigger
            return True
        self.max_batch_size = None  # settled
        return False


class ShardedData(_Resident):
    """In-memory data split into contiguous shards, one per device; a pass runs the
    shards' calls concurrently and sums their partial sums (``parallel_batches``)."""

    def __init__(self, columns: dict, n_points: int, batch_size: int, devices: list,
                 batches_per_call: int | None = None):
        self.n_points = int(n_points)
        self.batch_size = int(batch_size)
        self.stride = 1
        self.origin = 0
        self.n_batches = max(1, math.ceil(self.n_points / self.batch_size))
        per = math.ceil(self.n_batches / len(devices))
        self.shards = []
        for d, dev in enumerate(devices):
            b0, b1 = d * per, min(self.n_batches, (d + 1) * per)
            if b0 >= b1:
                break
            lo, hi = b0 * batch_size, min(self.n_points, b1 * batch_size)
            cols = {k: np.asarray(v)[..., lo:hi] for k, v in columns.items()}
            self.shards.append((b0, InMemoryData(cols, hi - lo, batch_size, origin=lo,
                                                 batches_per_call=batches_per_call,
                                                 device=dev)))
        self.batches_per_call = self.shards[0][1].batches_per_call
        self.finite = all(shard.finite for _, shard in self.shards)
        self._host = columns

    def chunks(self, start_batch: int = 0):
        if start_batch:
            raise ValueError("sharded passes cannot resume mid-pass")
        iters = [((b0, c) for c in shard.chunks()) for b0, shard in self.shards]
        while iters:
            for it in list(iters):
                item = next(it, None)
                if item is None:
                    iters.remove(it)
                    continue
                b0, c = item
                yield Chunk(c.columns, c.first_batch, c.origin, c.n_valid, b0 + c.pass_batch,
                            c.n_batches, c.device)

    def subsample(self, max_points: int, batch_size: int, dtype=None):
        s = max(1, math.ceil(self.n_points / max_points))
        cols = {k: np.asarray(v)[..., :: s].astype(dtype or v.dtype) for k, v in
                self._host.items()}
        n = cols["y"].shape[-1]
        return InMemoryData(cols, n, min(batch_size, n), stride=s)


class HostArrayData(_Batched):
    """Columns kept in host memory (or a np.memmap) and sent to the device one run of
    batches at a time: the STREAMING tier for data given as arrays."""

    def __init__(self, columns: dict, n_points: int, batch_size: int,
                 batches_per_call: int = 8):
        self.columns = columns
        self.n_points = int(n_points)
        self.batch_size = int(batch_size)
        self.batches_per_call = int(batches_per_call)
        self.stride = 1
        self.origin = 0
        self.devices: list = []

    def call_columns(self) -> dict:
        """Columns with the shapes and dtypes one call gets (to compile its kernel ahead)."""
        L = self.batch_size * self.batches_per_call
        return {k: np.zeros(np.shape(v)[:-1] + (L,), np.asarray(v[..., :0]).dtype)
                for k, v in self.columns.items()}

    def chunks(self, start_batch: int = 0):
        B, G = self.batch_size, self.batches_per_call
        for first in range(start_batch, self.n_batches, G):
            lo, hi = first * B, min(self.n_points, (first + G) * B)
            cols = {k: _pad(np.asarray(v[..., lo:hi]), B * G) for k, v in self.columns.items()}
            yield Chunk(cols, 0, lo, hi - lo, first, math.ceil((hi - lo) / B),
                        _round_robin(self.devices, first // G))

    def subsample(self, max_points: int, batch_size: int, dtype=None,
                  stop=None) -> InMemoryData:  # host memory: quick, ``stop`` not needed
        s = max(1, math.ceil(self.n_points / max_points))
        cols = {k: np.asarray(v[..., :: s]).astype(dtype or v.dtype) for k, v in
                self.columns.items()}
        n = cols["y"].shape[-1]
        return InMemoryData(cols, n, min(batch_size, n), stride=s)


class _RunSource(_Batched):
    """Streamed data read in runs of whole batches into a fixed ring of buffers
    (``_runs``), one run ahead in a background thread; memory does not grow with the
    data. Local position j is global point ``stride * j``."""

    prefetch: bool = True
    can_spill = True
    dtype: np.dtype

    def _runs(self, start_batch: int, ring: int | None = None):
        raise NotImplementedError

    def _ring(self) -> int:
        # one being computed on, one being read, spares for calls in flight elsewhere
        return max(1, len(self.devices)) + 2

    def call_columns(self) -> dict:
        """Columns with the shapes and dtypes one call gets (to compile its kernel ahead)."""
        return {"y": np.zeros(self.batch_size * self.batches_per_call, self.dtype)}

    def chunks(self, start_batch: int = 0):
        B, G = self.batch_size, self.batches_per_call
        runs = self._runs(start_batch)

        def load():
            return next(runs, None)

        def chunk(item):
            pos, y, n = item
            return Chunk({"y": y}, 0, self.stride * pos, n, pos // B, math.ceil(n / B),
                         _round_robin(self.devices, pos // (B * G)))

        if not self.prefetch:
            while (item := load()) is not None:
                yield chunk(item)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="homodyne-read") as pool:
            fut = pool.submit(load)
            while (item := fut.result()) is not None:
                fut = pool.submit(load)
                yield chunk(item)

    def subsample(self, max_points: int, batch_size: int, dtype=None, *,
                  to_file: bool = False, stop=None):
        """Every s-th point in one sequential read: straight into the padded array the
        device copy is made from (memory: the sample, twice, briefly), or, with
        ``to_file``, into a temporary file streamed like the data (memory: none).
        ``stop()`` true between runs (a signal arrived) ends the read: None is returned
        (the read is a full pass over the data, minutes on a large file)."""
        s = max(1, math.ceil(self.n_points / max_points))
        n = math.ceil(self.n_points / s)
        batch = min(batch_size, n)
        dtype = np.dtype(dtype or self.dtype)
        if to_file:
            fh = tempfile.TemporaryFile(prefix="homodyne-level-")  # noqa: SIM115 - kept open
            for pos, vals, nv in self._runs(0, ring=1):
                if stop is not None and stop():
                    fh.close()
                    return None
                fh.write(np.ascontiguousarray(vals[(-pos) % s : nv : s], dtype).tobytes())
            fh.flush()
            return FileLevelData(fh, n, batch, self.stride * s, dtype, self.batches_per_call,
                                 self.devices)
        y = np.zeros(InMemoryData.padded_length(n, batch), dtype=dtype)
        for pos, vals, nv in self._runs(0, ring=1):
            if stop is not None and stop():
                return None
            first = (-pos) % s
            picked = vals[first:nv:s]
            y[(pos + first) // s : (pos + first) // s + picked.size] = picked
        return InMemoryData({"y": y}, n, batch, stride=self.stride * s)


class FileLevelData(_RunSource):
    """A coarse level bigger than the streaming memory budget: its values in an unlinked
    temporary file (gone with the process), read run by run like the data."""

    def __init__(self, fh, n_points: int, batch_size: int, stride: int, dtype,
                 batches_per_call: int = 8, devices=()):
        self._fh = fh
        self.n_points = int(n_points)
        self.batch_size = int(batch_size)
        self.batches_per_call = int(batches_per_call)
        self.stride = int(stride)
        self.origin = 0
        self.dtype = np.dtype(dtype)
        self.devices = list(devices)

    def _runs(self, start_batch: int, ring: int | None = None):
        chunk = self.batch_size * self.batches_per_call
        bufs = [np.empty(chunk, self.dtype) for _ in range(ring or self._ring())]
        fd, size = self._fh.fileno(), self.dtype.itemsize
        for k, lo in enumerate(range(start_batch * self.batch_size, self.n_points, chunk)):
            buf, m = bufs[k % len(bufs)], min(chunk, self.n_points - lo)
            got = os.preadv(fd, [memoryview(buf[:m]).cast("B")], lo * size)
            if got != m * size:
                raise OSError(f"coarse level file: read {got} of {m * size} bytes")
            buf[m:] = 0
            yield lo, buf, m


class StreamingData(_RunSource):
    """Points of a ``TwoTimeSource`` read from disk in runs of whole batches."""

    def __init__(self, source, batch_size: int, batches_per_call: int = 8,
                 prefetch: bool = True, dtype=np.float64):
        limit_heap_arenas()
        self.source = source
        self.n_points = source.n_points
        self.batch_size = int(batch_size)
        self.batches_per_call = int(batches_per_call)
        self.stride = 1
        self.origin = 0
        self.devices: list = []
        self.prefetch = prefetch
        self.dtype = dtype

    def _runs(self, start_batch: int, ring: int | None = None):
        """(first point, buffer, n valid) for runs of whole batches, read from the file
        into a fixed ring of buffers."""
        B, G = self.batch_size, self.batches_per_call
        start = start_batch * B
        ring = ring or self._ring()
        yield from self.source.iter_points_into(start, self.n_points - start, B * G,
                                                ring=ring, dtype=self.dtype,
                                                target_points=max(B * G, 1 << 18))
