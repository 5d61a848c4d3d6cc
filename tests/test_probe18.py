"""probe18: the guide's keys and API arguments do what they say, messages tell the truth
(issue 12, a fresh round; /work/notes/probe18_findings.md)."""

from __future__ import annotations

import time


def _two_time_fit(tmp_path, **wrapper_kw):
    """A small static two-time fit through the guide's NLSQWrapper (3,540 points)."""
    from helpers import small_two_time_file

    from homodyne.data.twotime import open_two_time
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    src = open_two_time(small_two_time_file(tmp_path / "d.h5", n_frames=60))
    spec = src.model_spec()
    p0 = spec.pack(0.25, 1.05, (8e3, -0.4, 80.0))
    bounds = (spec.pack(0.0, 0.5, (1.0, -2.0, -1e3)), spec.pack(1.0, 1.5, (1e5, 0.5, 1e3)))
    return NLSQWrapper(**wrapper_kw).fit_two_time(src, spec, p0, bounds)


def test_checkpoints_with_no_minimum_interval_are_saved_exactly_every_frequency_batches(
        tmp_path, monkeypatch):
    """Was: with checkpoint_min_interval_s 0 a save that fell due while the previous one was
    still being written was skipped, so the saves landed wherever the writer had finished
    (the guide's checkpoint_frequency 10: batches 10, 28, 48, 60 on one run, 10, 20, 48,
    60 on the next) although the README says 0 saves exactly every checkpoint_frequency
    batches (the guide's files: homodyne_state_batch_0010, 0020, 0030)."""
    from homodyne.optimization.checkpoint_manager import CheckpointManager

    saved = []
    original = CheckpointManager.save_checkpoint

    def slow_save(self, batch_idx, state, **kw):  # a disk slower than ten batches
        time.sleep(0.05)
        saved.append(batch_idx)
        return original(self, batch_idx, state, **kw)

    monkeypatch.setattr(CheckpointManager, "save_checkpoint", slow_save)
    result = _two_time_fit(tmp_path, strategy_override="streaming", batch_size=354,
                           checkpoint_config={
                               "enable_checkpoints": True,
                               "checkpoint_dir": str(tmp_path / "ck"),
                               "checkpoint_frequency": 10, "checkpoint_min_interval_s": 0,
                               "keep_last_checkpoints": 1000})
    total = result.streaming_diagnostics["total_batches_processed"]
    assert total >= 40
    assert [b for b in saved if b != total] == list(range(10, total, 10))  # + the final
