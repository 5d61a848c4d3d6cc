"""What one run of the CLI/pipeline produced, and how its outcome is logged (two-time and
one-time runs alike)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from homodyne.model import ModelSpec
from homodyne.optimization.result import FitResult

log = logging.getLogger("homodyne")


@dataclass
class FitRun:
    """What one run produced: the result, where it went, and what it was fitted to."""

    result: FitResult
    output_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    spec: ModelSpec | None = None


def log_summary(result) -> None:
    """The summary in the log; its first line (the outcome) as a warning unless converged
    (with sigma that look overstated: warned too), so --quiet still shows a fit that
    failed or determined nothing (a stopped fit: the stop's own message says it once,
    FitInterrupted)."""
    first, *rest = result.summary().splitlines()
    quiet = result.status == "interrupted" or (
        result.status == "converged" and not getattr(result, "sigma_overstated", False))
    log.log(logging.INFO if quiet else logging.WARNING, "%s", first)
    for line in rest:
        log.info(line)
