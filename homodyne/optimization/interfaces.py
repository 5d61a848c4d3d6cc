"""What the pass runner and the driver need from a problem and from a data source.

``Problem``: turns parameters and a run of batches into sums and assembles them into
normal equations (``TwoTimeProblem``, ``CurveProblem``). ``DataSource``: where the
points live and how a pass walks them (``InMemoryData``, ``ShardedData``,
``HostArrayData``, ``StreamingData``, ``FileLevelData``). Structural types: a class
conforms by having these members, nothing is inherited.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from homodyne.optimization.problems import ChunkLayout, NormalEquations
    from homodyne.optimization.sources import Chunk


class Problem(Protocol):
    """A least-squares problem the engine can stream (see ``problems``)."""

    n_params: int
    parameter_names: tuple[str, ...]

    def prepare(self, params: Any) -> Any:
        """Per-parameter-vector context shared by every batch of a pass."""
        ...

    def chunk_fn(self, layout: ChunkLayout) -> Callable[..., Any]:
        """(params, ctx, columns, first_batch, origin, n_valid, batch_mask) ->
        (sums, (n, cost, finite) per batch) for one call of ``layout``."""
        ...

    def zero_stats(self, layout: ChunkLayout) -> dict[str, Any]:
        ...

    def assemble(self, stats: dict[str, Any]) -> NormalEquations:
        ...


class DataSource(Protocol):
    """Points cut into batches; a pass asks for its calls with ``chunks``."""

    n_points: int
    batch_size: int
    batches_per_call: int
    stride: int
    origin: int
    streamed: bool  # memory must not grow with the data (caps the coarse levels)
    can_spill: bool  # big coarse levels may go to a temporary file

    @property
    def n_batches(self) -> int:
        ...

    def chunks(self, start_batch: int = 0) -> Iterator[Chunk]:
        ...

    def subsample(self, max_points: int, batch_size: int, dtype: Any = None) -> DataSource:
        ...

    def adapt(self, seconds: float, memory_ok: Callable[[int], bool]) -> bool:
        """After a pass: grow the batch when that pays (True when it did)."""
        ...
