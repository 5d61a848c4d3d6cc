"""Strategy tiers (the guide's "Strategy Selection") and streaming batch sizing.

Every tier runs the same engine; a tier only decides where the data live and how
they are batched:

* STANDARD (< 1M points) and LARGE (1M-10M): data on the device, one call per pass;
* CHUNKED (10M-100M): data on the device, several calls per pass (progress);
* STREAMING (> 100M, or when the data would not fit the memory budget): batches
  read from disk (or host arrays) one run at a time; memory independent of size.
"""

from __future__ import annotations

import math
import numbers
from enum import StrEnum

from homodyne.memory import available_bytes
from homodyne.optimization.settings import CheckpointSettings, check_checkpoint_config


class OptimizationStrategy(StrEnum):
    STANDARD = "STANDARD"
    LARGE = "LARGE"
    CHUNKED = "CHUNKED"
    STREAMING = "STREAMING"


# the tier names users write (config performance.strategy_override, CLI --strategy)
TIER_NAMES = tuple(s.value.lower() for s in OptimizationStrategy)

THRESHOLDS = ((1_000_000, OptimizationStrategy.STANDARD),
              (10_000_000, OptimizationStrategy.LARGE),
              (100_000_000, OptimizationStrategy.CHUNKED))

MIN_BATCH = 1_000
MAX_BATCH = 100_000
# Measured on the 2-core CI-class machine (benchmarks/bench_batch_size.py): 65,536 points per
# batch was fastest in memory (23.6M residuals/s vs 19.5M at 16k and 19.3M at 262k).
DEFAULT_BATCH = 65_536


def available_memory_gb() -> float:
    """Free memory for this process (``homodyne.memory.available_bytes``: the machine's,
    capped by the job's or container's cgroup limit)."""
    return available_bytes() / 2**30


def bytes_per_point(n_parameters: int) -> int:
    """Engine working set per point of a batch: data, residual, model and Jacobian
    columns plus the per-point rows of the JᵀJ accumulation, all float64."""
    return 8 * (3 + 3 * int(n_parameters) + 5)


def _check_counts(n_points, n_parameters) -> None:
    """ValueError naming a point count below 0 or a parameter count below 1 (a fit has
    at least one parameter); both must be numbers (a negative count picked STANDARD)."""
    if isinstance(n_points, bool) or not isinstance(n_points, numbers.Real) \
            or not float(n_points) >= 0:
        raise ValueError(f"n_points must be a number of points >= 0, got {n_points!r}")
    if isinstance(n_parameters, bool) or not isinstance(n_parameters, numbers.Integral) \
            or int(n_parameters) < 1:
        raise ValueError(f"n_parameters must be a whole number >= 1, got {n_parameters!r}")


def checked_memory_limit(memory_limit_gb):
    """A memory limit in GB: None (this machine's memory) or a finite number > 0 (NaN
    would fail later as "cannot convert float NaN to integer"; 0 or less forces STREAMING
    and the smallest batch without a word)."""
    if memory_limit_gb is None:
        return None
    if isinstance(memory_limit_gb, bool) or not isinstance(memory_limit_gb, numbers.Real) \
            or not (math.isfinite(memory_limit_gb) and memory_limit_gb > 0):
        raise ValueError(f"memory_limit_gb must be a finite number > 0 (None: this machine's "
                         f"memory), got {memory_limit_gb!r}")
    return memory_limit_gb


class DatasetSizeStrategy:
    """Chooses the tier by size and memory, and sizes streaming batches."""

    def __init__(self, memory_limit_gb: float | None = None, memory_fraction: float = 0.5):
        self.memory_limit_gb = checked_memory_limit(memory_limit_gb)
        self.memory_fraction = memory_fraction

    def _memory_gb(self, memory_limit_gb=None) -> float:
        limit = checked_memory_limit(memory_limit_gb) if memory_limit_gb is not None \
            else self.memory_limit_gb
        avail = available_memory_gb()
        return min(limit, avail) if limit is not None else avail

    def select_strategy(self, n_points: int, n_parameters: int = 5, *,
                        strategy_override: str | None = None,
                        bytes_per_stored_point: int = 8,
                        memory_limit_gb: float | None = None) -> OptimizationStrategy:
        """Tier for ``n_points``; STREAMING when in-memory data would exceed the budget."""
        _check_counts(n_points, n_parameters)
        if strategy_override:
            try:
                return OptimizationStrategy(str(strategy_override).upper())
            except ValueError:
                names = ", ".join(s.value.lower() for s in OptimizationStrategy)
                raise ValueError(f"performance.strategy_override: unknown strategy "
                                 f"{strategy_override!r}; choose one of {names}") from None
        tier = OptimizationStrategy.STREAMING
        for limit, name in THRESHOLDS:
            if n_points < limit:
                tier = name
                break
        need_gb = n_points * bytes_per_stored_point / 2**30
        if tier != OptimizationStrategy.STREAMING and \
                need_gb > self.memory_fraction * self._memory_gb(memory_limit_gb):
            tier = OptimizationStrategy.STREAMING
        return tier

    def build_streaming_config(self, n_points: int, n_parameters: int, *,
                               checkpoint_config: dict | None = None,
                               memory_limit_gb: float | None = None,
                               adaptive_batching: bool = False,
                               initial_batch_size: int | None = None,
                               min_batch_size: int = MIN_BATCH,
                               max_batch_size: int = MAX_BATCH) -> dict:
        """Streaming settings; batch_size = 10% of memory / bytes per point, bounded."""
        for name, v in (("initial_batch_size", initial_batch_size),
                        ("min_batch_size", min_batch_size), ("max_batch_size", max_batch_size)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Integral)
                                  or v < 1):
                raise ValueError(f"{name} must be a whole number >= 1, got {v!r}")
        _check_counts(n_points, n_parameters)
        if initial_batch_size is not None and initial_batch_size > max_batch_size:
            raise ValueError(f"initial_batch_size ({initial_batch_size}) is larger than "
                             f"max_batch_size ({max_batch_size}); make initial_batch_size <= "
                             "max_batch_size")
        mem_gb = self._memory_gb(memory_limit_gb)
        raw = int(0.1 * mem_gb * 2**30 / bytes_per_point(n_parameters))
        # max_batch_size is the user's cap, also below min_batch_size (it was raised to
        # min_batch_size silently: performance.max_batch_size: 10 gave batches of 1,000)
        batch = min(max_batch_size, max(min_batch_size, min(raw, max(n_points, 1))))
        if adaptive_batching:
            start = initial_batch_size or max(min_batch_size, batch // 8)
            batch = min(start, batch)
        check_checkpoint_config(checkpoint_config)  # a typo was copied and ignored
        settings = CheckpointSettings.from_mapping(checkpoint_config)  # keep_last_n too
        ckpt = {k: getattr(settings, k) for k in (
            "enable_checkpoints", "checkpoint_dir", "checkpoint_frequency",
            "resume_from_checkpoint", "keep_last_checkpoints")}
        ckpt.update({k: v for k, v in (checkpoint_config or {}).items() if k != "keep_last_n"})
        return {
            "batch_size": int(batch),
            "n_batches": math.ceil(n_points / batch) if n_points else 0,
            "memory_limit_gb": mem_gb,
            "bytes_per_point": bytes_per_point(n_parameters),
            "adaptive_batching": adaptive_batching,
            "min_batch_size": int(min_batch_size),
            "max_batch_size": int(max_batch_size),
            **ckpt,
        }
