"""Regression tests for the weak items of probing rounds 13 and 14 (issue 12): another
fit's checkpoint in a folder this run holds, folders and locks of a refused run, boolean
frame times, one-time rows dropped without a word, batch sizes and p0 the API accepted."""

import logging

import h5py
import numpy as np
import pytest
import yaml
from helpers import small_two_time_file, streaming_cli_config

from homodyne.cli import main
from homodyne.data.errors import DataFileError
from homodyne.data.twotime import APSU_Q, FRAME_TIME, open_two_time
from homodyne.optimization.checkpoint_manager import CheckpointManager, _owner
from homodyne.output import DirectoryLock


def test_a_locked_run_replaces_another_fits_checkpoint_of_the_same_batch(tmp_path, caplog):
    """probe14 W1: the earlier fit's file (data touched or edited since) refused every save
    of the new fit on its batch numbers, with an ERROR telling the user to change a setting."""
    state = {"parameters": np.arange(3.0), "batch_idx": 10}
    earlier = CheckpointManager(tmp_path / "ck").save_checkpoint(10, state,
                                                                 fingerprint="A" * 64)
    mine = CheckpointManager(tmp_path / "ck")
    mine.fingerprint = "B" * 64
    mine.acquire_lock()
    try:
        with caplog.at_level(logging.WARNING, logger="homodyne.checkpoint"):
            assert mine.find_latest_valid_checkpoint() is None  # not resumed from
            path = mine.save_checkpoint(10, {**state, "parameters": -np.arange(3.0)},
                                        fingerprint="B" * 64)
    finally:
        mine.release_lock()
    assert path == earlier and _owner(path) == "B" * 64
    np.testing.assert_array_equal(mine.load_checkpoint(path)["parameters"], -np.arange(3.0))
    assert "belong to another fit (other data or settings); they are not used, and one " \
        "on a batch this fit saves is replaced" in caplog.text
    assert "homodyne_state_batch_0010.h5 in" in caplog.text
    assert "belonged to another fit" in caplog.text and "replaced" in caplog.text


@pytest.fixture(scope="module")
def small_cfg(tmp_path_factory):
    """The folder of a 60-frame dataset and its streaming config (cfg.yaml)."""
    return streaming_cli_config(tmp_path_factory.mktemp("f12f")).parent


def _checkpointed(small_cfg, tmp_path) -> str:
    raw = yaml.safe_load((small_cfg / "cfg.yaml").read_text())
    raw["optimization"] = {"streaming": {"enable_checkpoints": True,
                                         "checkpoint_dir": str(tmp_path / "ck" / "deep")}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    return str(tmp_path / "c.yaml")


def test_a_run_refused_by_the_output_lock_creates_no_checkpoint_folder(small_cfg, tmp_path,
                                                                        capsys):
    """probe14 W5: the checkpoint folder was created before the output folder's lock."""
    (tmp_path / "out").mkdir()
    held = DirectoryLock(tmp_path / "out" / ".homodyne.lock")
    held.acquire()
    try:
        rc = main(["--config", _checkpointed(small_cfg, tmp_path),
                   "--output-dir", str(tmp_path / "out")])
    finally:
        held.release()
    assert rc == 2 and "is in use by pid" in capsys.readouterr().err
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize("name", [FRAME_TIME, APSU_Q])
def test_a_boolean_frame_time_or_q_in_the_file_is_refused_naming_the_dataset(tmp_path, name):
    """probe13 W1: a frame time stored as an HDF5 boolean True was read as dt = 1 s."""
    path = small_two_time_file(tmp_path / "d.h5")
    with h5py.File(path, "r+") as h5:
        shape = h5[name].shape if name in h5 else ()
        if name in h5:
            del h5[name]
        h5[name] = np.ones(shape, dtype=bool)
    with pytest.raises(DataFileError, match=f"{name} holds booleans .*not"):
        with open_two_time(path) as source:
            source.model_spec()


def test_one_time_points_dropped_for_their_sigma_are_counted_per_bin(tmp_path, caplog):
    """probe13 W2: rows with sigma <= 0 or inf (or g2 NaN) were dropped without a word."""
    from homodyne.onetime.data import read_one_time
    from homodyne.onetime.fit import OneTimeOptions, usable_bins

    tau = np.geomspace(1e-5, 1.0, 20)
    g2 = 1 + 0.3 * np.exp(-2 * 50.0 * tau)
    sig = np.full(20, 0.01)
    bad = sig.copy()
    bad[[3, 4]] = [0.0, np.inf]
    bad[8:17] = -1.0
    g2_nan = g2.copy()
    g2_nan[7] = np.nan
    few = sig.copy()
    few[19] = 0.0  # one point of sigma = 0 at the longest delay, as measured files hold
    rows = np.column_stack([tau, g2, sig, g2_nan, bad, g2, few])
    (tmp_path / "g2.csv").write_text(
        "tau,g2(q=0.005),sigma(q=0.005),g2(q=0.007),sigma(q=0.007),g2(q=0.009),"
        "sigma(q=0.009)\n" +
        "\n".join(",".join(repr(float(v)) for v in row) for row in rows))
    with caplog.at_level(logging.WARNING, logger="homodyne"):
        *_, usable = usable_bins(read_one_time(tmp_path / "g2.csv"), OneTimeOptions())
    assert [int(ok.sum()) for _, ok in usable] == [20, 8, 19]
    # the bin that lost more than half is warned about; one point of sigma = 0 is not
    assert [r.getMessage() for r in caplog.records] == [
        "delay points dropped (more than half) in 1 of 3 q bins (g2 or sigma not finite, or "
        "sigma <= 0), of 20 in the window: q = 0.007: 8 kept, 12 dropped"]


def test_the_wrapper_refuses_a_first_batch_larger_than_the_largest():
    """probe13 W4: initial_batch_size 5000 above max_batch_size 1000 was accepted."""
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    with pytest.raises(ValueError, match=r"initial_batch_size \(5000\) is larger than "
                                         r"max_batch_size \(1000\)"):
        NLSQWrapper(adaptive_batching=True, initial_batch_size=5000, max_batch_size=1000)
    assert NLSQWrapper(adaptive_batching=True, initial_batch_size=1000,
                       max_batch_size=1000).initial_batch_size == 1000


@pytest.mark.parametrize("p0", [["0.5", "1", "0"], [b"0.5", 1.0, 0.0], ["0.5", 1.0, 0.0],
                                [True, 1.0, 0.0]])
def test_the_wrapper_refuses_a_start_given_as_text_or_booleans(p0):
    """probe13 W4: p0 as text was converted to numbers by numpy without a word."""
    from homodyne.optimization.nlsq_wrapper import validate_start

    with pytest.raises(TypeError, match=r"p0 must hold numbers .*got \["):
        validate_start(p0, ([0.0] * 3, [2.0] * 3))
    x0, _, _ = validate_start([0.5, 1, np.float32(0.0)], ([0.0] * 3, [2.0] * 3))
    np.testing.assert_array_equal(x0, [0.5, 1.0, 0.0])


def test_the_checkpoint_folder_is_held_from_the_early_check_to_the_end_of_the_fit(
        small_cfg, tmp_path, monkeypatch, capsys):
    """probe14 W4: the lock was taken and let go before the data were read, so a second
    run started at the same instant passed that check too and was refused only after
    reading the data, leaving fit.incomplete.log. A rival that tries the folder while this
    run reads its data is now refused, and this run's fit goes on with the folder."""
    import homodyne.pipeline as pipeline
    from homodyne.output import LockHeld

    cfg = _checkpointed(small_cfg, tmp_path)
    ck = tmp_path / "ck" / "deep"
    rival, real_open = [], pipeline.open_data

    def open_after_a_rival_tried(c):
        lock = DirectoryLock(ck / ".lock")  # a second run at the same instant
        try:
            lock.acquire()
            rival.append("took the folder")
            lock.release()
        except LockHeld:
            rival.append("refused")
        return real_open(c)

    monkeypatch.setattr(pipeline, "open_data", open_after_a_rival_tried)
    assert main(["--config", cfg, "--output-dir", str(tmp_path / "out"), "--quiet"]) in (0, 4)
    assert rival == ["refused"]
    assert sorted(ck.glob("homodyne_state_batch_*.h5")) and \
        (tmp_path / "out" / "parameters.json").exists()
    lock = DirectoryLock(ck / ".lock")  # the run is over: the folder is free again
    lock.acquire()
    lock.release()


def test_the_console_log_writes_to_the_stderr_of_the_moment(monkeypatch, capsys):
    """A console handler from an earlier in-process main() (a notebook, another test) wrote
    to the stream that was stderr then: closed since, a warning was 'Logging error: I/O
    operation on closed file' plus a traceback on the new stderr."""
    import io

    from homodyne.cli import configure_console_logging

    old = io.StringIO()
    monkeypatch.setattr("sys.stderr", old)
    configure_console_logging(quiet=True)
    old.close()
    monkeypatch.undo()
    logging.getLogger("homodyne.test").warning("seen on the stderr of now")
    err = capsys.readouterr().err
    assert err == "WARNING seen on the stderr of now\n"


def test_generate_refuses_a_file_no_fit_could_use(tmp_path, capsys):
    """probe16 W5: `generate --frames 2` wrote a one-point file (exit 0) that every fit then
    refused ("needs at least 100"); now an argparse error before anything is written."""
    from homodyne.cli import main

    out = tmp_path / "g.h5"
    with pytest.raises(SystemExit) as stop:
        main(["generate", "--output", str(out), "--frames", "2", "--angles", "0"])
    assert stop.value.code == 2 and not out.exists()
    assert ("arguments --frames/--angles: 1 angle x 2 frames make 1 points; a static fit "
            "needs at least 100: use more frames or angles") in capsys.readouterr().err
    assert main(["generate", "--output", str(out), "--frames", "20", "--angles", "0"]) == 0
