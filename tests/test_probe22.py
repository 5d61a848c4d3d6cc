"""probe22: a fresh probing round (issue 12) over the Python API as the guide shows it,
the CLI's other options and the config keys the guide names; each test fails on main
36bbb56."""

import io

import numpy as np
import pytest


def test_the_progress_status_line_gives_the_best_loss_when_the_data_hold_nan_points():
    """Data with NaN points (skipped): the points bar counted only the fitted points, so
    it never reached its total and 'Best loss: inf' stood beside a finite average for the
    whole fit. A pass ends with its last batch."""
    from homodyne.optimization.progress import ProgressReporter

    out = io.StringIO()
    bar = ProgressReporter(enabled=True, force=True, file=out)
    bar.new_pass("full", 1, n_points=10, n_batches=2)
    bar.update(points=4, batches=1, failed=0, done=1, cost=0.4)  # one NaN point left out
    bar.update(points=5, batches=1, failed=0, done=2, cost=0.5)
    assert bar.best == pytest.approx(0.1)
    assert bar.points.n == bar.points.total == 10
    assert "Best loss: 0.1" in bar.status.desc
    bar.new_pass("full", 2, n_points=10, n_batches=2, start_batch=1)  # resumed at batch 1
    bar.update(points=5, batches=1, failed=0, done=3, cost=0.05)
    assert bar.best == pytest.approx(0.1)  # a part of a pass is no pass's loss
    bar.close()
