"""Regression tests for the weak items of probing rounds 13 and 14 (issue 12): another
fit's checkpoint in a folder this run holds, folders and locks of a refused run, boolean
frame times, one-time rows dropped without a word, batch sizes and p0 the API accepted."""

import logging

import numpy as np

from homodyne.optimization.checkpoint_manager import CheckpointManager, _owner


def test_a_locked_run_replaces_another_fits_checkpoint_of_the_same_batch(tmp_path, caplog):
    """probe14 W1: the earlier fit's file (data touched or edited since) refused every save
    of the new fit on its batch numbers, with an ERROR telling the user to change a setting."""
    state = {"parameters": np.arange(3.0), "batch_idx": 10}
    earlier = CheckpointManager(tmp_path / "ck").save_checkpoint(10, state,
                                                                 fingerprint="A" * 64)
    mine = CheckpointManager(tmp_path / "ck")
    mine.acquire_lock()
    try:
        with caplog.at_level(logging.WARNING, logger="homodyne.checkpoint"):
            path = mine.save_checkpoint(10, {**state, "parameters": -np.arange(3.0)},
                                        fingerprint="B" * 64)
    finally:
        mine.release_lock()
    assert path == earlier and _owner(path) == "B" * 64
    np.testing.assert_array_equal(mine.load_checkpoint(path)["parameters"], -np.arange(3.0))
    assert "homodyne_state_batch_0010.h5 in" in caplog.text
    assert "belonged to another fit" in caplog.text and "replaced" in caplog.text
