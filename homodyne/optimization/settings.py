"""Every setting of a fit, with its one default: solver options, fault tolerance, checkpoints.

The config schema (``homodyne.config``), ``NLSQWrapper`` and the CLI read their defaults
from these dataclasses; the field names are the guide's public names (YAML keys under
``optimization``/``optimization.streaming`` and ``checkpoint_config`` keys). Plain
dataclasses, no imports from homodyne: any layer may use them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np


@dataclass
class EngineOptions:
    """Solver settings; defaults give results within ~1e-4 standard errors of the optimum."""

    # per solver stage: a fit runs up to a few (internal coordinates, then the user's, a
    # refit on a crossed bound), so its summary can count more iterations than this
    max_iterations: int = 100
    step_tol_se: float = 1e-4
    gtol: float = 1e-6
    ftol: float = 1e-15
    initial_damping: float = 1e-3
    coarse: bool = True
    coarse_points: int = 250_000
    coarse_max_level_points: int = 16_000_000
    # streamed data: the largest level held in memory (a 10M-point dataset gets levels up
    # to 2M anyway); bigger ones go to a temporary file, so memory stays constant
    streaming_coarse_max_points: int = 2_000_000
    coarse_level_factor: int = 8
    coarse_step_tol_se: float = 1e-2
    coarse_max_iterations: int = 200
    batch_size: int = 65_536
    # fit the power laws about a reference time inside the data, in Box-Cox form
    # (coordinates.py), and finish in the user's coordinates
    internal_coordinates: bool = True
    # geodesic acceleration of each LM step (Transtrum & Sethna 2012; geodesic.py): one
    # more pass per trial step; off by default
    geodesic_acceleration: bool = False
    # a static two-time fit from a plain start (J flat) first estimates J(t), contrast and
    # offset from one pass over the data or the densest coarse level (start_estimate.py);
    # with checkpoints a resumed fit recomputes it (deterministic)
    start_estimate: bool = True


# more starts than this is a typo, not a plan: each is a fit of the screening subsample,
# and the Sobol points alone of 1e9 starts would take tens of GB
MAX_RESTARTS = 10_000


@dataclass
class RestartSettings:
    """Deterministic multi-start (``optimization.restarts``; ``restarts.py``): 0 or 1 is
    a single fit from the start given, exactly as without it."""

    restarts: int = 0  # starts in all, the given one included (at most MAX_RESTARTS)
    finish_best: int = 3  # distinct minima of the screening finished on the full data
    seed: int = 0  # of the scrambled Sobol sequence


@dataclass
class FaultSettings:
    """How a pass treats failing batches (``optimization.streaming`` in the config)."""

    validate_numerics: bool = True  # NaN/Inf checks of data and sums (off in fast mode)
    enable_fault_tolerance: bool = True  # retry failing calls, exclude failing batches
    min_success_rate: float = 0.5  # below this in a stage's first pass the fit stops
    max_retries_per_batch: int = 2


# a save costs ~5-8 ms of CPU: at most one per 10 s of fitting keeps it under 0.1%
DEFAULT_MIN_INTERVAL_S = 10.0


@dataclass
class CheckpointSettings:
    """Checkpoints of a fit (``optimization.streaming`` in the config, the guide's
    ``checkpoint_config`` dict of ``NLSQWrapper``)."""

    enable_checkpoints: bool = False
    checkpoint_dir: str = "./checkpoints"
    # batches between saves; a save falls at the first call boundary (runs of <= 8
    # batches, a pass ends one) at or after the batch where it is due
    checkpoint_frequency: int = 10
    checkpoint_min_interval_s: float = DEFAULT_MIN_INTERVAL_S  # seconds of fitting
    resume_from_checkpoint: bool = True
    keep_last_checkpoints: int = 3
    enable_compression: bool = True

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any] | None) -> CheckpointSettings:
        """From a ``checkpoint_config`` dict; unknown keys are ignored, and the
        ``CheckpointManager`` name ``keep_last_n`` is accepted for ``keep_last_checkpoints``."""
        config = dict(config or {})
        if "keep_last_n" in config and "keep_last_checkpoints" not in config:
            config["keep_last_checkpoints"] = config["keep_last_n"]
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in names})


def is_whole(value) -> bool:
    """A whole number (an int or an integral float such as 1e6), never a bool."""
    if isinstance(value, bool | np.bool_):
        return False
    if isinstance(value, int | np.integer):
        return True
    return isinstance(value, float | np.floating) and math.isfinite(value) and \
        float(value).is_integer()


def _checkpoint_value_problem(key: str, value) -> str | None:
    """What a checkpoint_config value must be, when it is not (the text "false" is true to
    Python: it switched checkpoints or resuming on; "10" failed inside the manager)."""
    if key in ("enable_checkpoints", "resume_from_checkpoint", "enable_compression"):
        return None if isinstance(value, bool | np.bool_) else "True or False"
    if key in ("checkpoint_frequency", "keep_last_checkpoints", "keep_last_n"):
        return None if is_whole(value) and value >= 1 else "a whole number >= 1"
    if key == "checkpoint_min_interval_s":
        ok = isinstance(value, int | float | np.integer | np.floating) and \
            not isinstance(value, bool) and math.isfinite(value) and value >= 0
        return None if ok else "a number of seconds >= 0"
    if key == "checkpoint_dir":
        return None if isinstance(value, str | os.PathLike) and str(value).strip() else \
            "a folder (a non-empty str or path)"
    return None


def check_checkpoint_config(config: Mapping[str, Any] | None) -> None:
    """Refuse a ``checkpoint_config`` key that would be ignored (a typo) or a value of the
    wrong kind, naming it: ``NLSQWrapper`` and ``build_streaming_config`` take this dict."""
    known = {f.name for f in fields(CheckpointSettings)} | {"keep_last_n"}
    unknown = sorted(set(config or {}) - known)
    if unknown:
        raise ValueError(f"checkpoint_config: unknown key(s) {unknown}; the keys are "
                         f"{sorted(known)}")
    for key, value in (config or {}).items():
        why = _checkpoint_value_problem(key, value)
        if why:
            raise ValueError(f"checkpoint_config[{key!r}] must be {why}, got {value!r}")


# one_time.ages_s / fit_aging(ages_s=...): seconds since the sample was prepared; older than
# this (about 300 years) is a unit slip, and the J-model's start values overflow near 1e20 s
MAX_AGE_S = 1.0e10
