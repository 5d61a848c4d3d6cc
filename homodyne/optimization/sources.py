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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from homodyne.jaxconf import jax, jnp


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


class InMemoryData:
    """Columns held on the device, padded to a whole number of batches."""

    def __init__(self, columns: dict, n_points: int, batch_size: int, *, origin: int = 0,
                 stride: int = 1, batches_per_call: int | None = None, device=None):
        self.n_points = int(n_points)
        self.batch_size = int(batch_size)
        self.stride = int(stride)
        self.origin = int(origin)
        self.n_batches = max(1, math.ceil(self.n_points / self.batch_size))
        self.batches_per_call = min(self.n_batches, batches_per_call or self.n_batches)
        n_calls = math.ceil(self.n_batches / self.batches_per_call)
        length = n_calls * self.batches_per_call * self.batch_size
        self.columns = {k: jax.device_put(jnp.asarray(_pad(v, length)), device)
                        for k, v in columns.items()}

    @property
    def nbytes(self) -> int:
        return sum(int(v.nbytes) for v in self.columns.values())

    def chunks(self, start_batch: int = 0):
        G = self.batches_per_call
        for first in range(start_batch - start_batch % G, self.n_batches, G):
            yield Chunk(self.columns, first, self.origin, self.n_points, first,
                        min(G, self.n_batches - first))

    def subsample(self, max_points: int, batch_size: int):
        """Every s-th point (s = ceil(n / max_points)), as a new in-memory dataset."""
        s = max(1, math.ceil(self.n_points / max_points))
        cols = {k: np.asarray(v[..., : self.n_points : s]) for k, v in self.columns.items()}
        n = cols["y"].shape[-1]
        return InMemoryData(cols, n, min(batch_size, n), origin=self.origin,
                            stride=self.stride * s)


class HostArrayData:
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
        self.n_batches = max(1, math.ceil(self.n_points / self.batch_size))

    @property
    def nbytes(self) -> int:
        width = sum(np.dtype(v.dtype).itemsize * (v.size // max(v.shape[-1], 1))
                    for v in self.columns.values())
        return self.batch_size * self.batches_per_call * width

    def chunks(self, start_batch: int = 0):
        B, G = self.batch_size, self.batches_per_call
        for first in range(start_batch, self.n_batches, G):
            lo, hi = first * B, min(self.n_points, (first + G) * B)
            cols = {k: _pad(np.asarray(v[..., lo:hi]), B * G) for k, v in self.columns.items()}
            yield Chunk(cols, 0, lo, hi - lo, first, math.ceil((hi - lo) / B))

    def subsample(self, max_points: int, batch_size: int) -> InMemoryData:
        s = max(1, math.ceil(self.n_points / max_points))
        cols = {k: np.asarray(v[..., :: s]) for k, v in self.columns.items()}
        n = cols["y"].shape[-1]
        return InMemoryData(cols, n, min(batch_size, n), stride=s)


class StreamingData:
    """Points of a ``TwoTimeSource`` read from disk in runs of whole batches."""

    def __init__(self, source, batch_size: int, batches_per_call: int = 8,
                 prefetch: bool = True, dtype=np.float64):
        self.source = source
        self.n_points = source.n_points
        self.batch_size = int(batch_size)
        self.batches_per_call = int(batches_per_call)
        self.stride = 1
        self.origin = 0
        self.n_batches = max(1, math.ceil(self.n_points / self.batch_size))
        self.prefetch = prefetch
        self.dtype = dtype

    @property
    def nbytes(self) -> int:
        return 2 * self.batch_size * self.batches_per_call * np.dtype(self.dtype).itemsize

    def _runs(self, start_batch: int):
        B, G = self.batch_size, self.batches_per_call
        start = start_batch * B
        yield from self.source.iter_points(start, self.n_points - start, B * G,
                                                 target_points=max(B * G, 1 << 18))

    def chunks(self, start_batch: int = 0):
        B, G = self.batch_size, self.batches_per_call
        runs = self._runs(start_batch)

        def load():
            try:
                pos, vals = next(runs)
            except StopIteration:
                return None
            return pos, _pad(vals.astype(self.dtype, copy=False), B * G), vals.size

        if not self.prefetch:
            while (item := load()) is not None:
                pos, y, n = item
                yield Chunk({"y": y}, 0, pos, n, pos // B, math.ceil(n / B))
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="homodyne-read") as pool:
            fut = pool.submit(load)
            while (item := fut.result()) is not None:
                fut = pool.submit(load)
                pos, y, n = item
                yield Chunk({"y": y}, 0, pos, n, pos // B, math.ceil(n / B))

    def subsample(self, max_points: int, batch_size: int) -> InMemoryData:
        """Every s-th point, collected in one sequential read (memory: the sample)."""
        s = max(1, math.ceil(self.n_points / max_points))
        parts = []
        for pos, vals in self._runs(0):
            first = (-pos) % s
            parts.append(vals[first::s])
        y = np.concatenate(parts)
        return InMemoryData({"y": y}, y.size, min(batch_size, y.size), stride=s)
