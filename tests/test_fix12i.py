"""Issue 12, weak items of probe rounds 19 and 20 (fix12i): each test fails on main."""

import errno
import logging
import os
import resource
import warnings
from contextlib import contextmanager

import numpy as np
import pytest
import yaml
from helpers import aging_series, fit_state, not_permitted

from homodyne.cli import main


def test_a_series_with_plots_false_draws_no_j_model_figure(tmp_path, monkeypatch):
    """probe20 W3: output.plots: false still drew j_model/*.png for a one-time series.
    The J-model's figures are left out (its fit itself, ~10 s here, is replaced by one
    that draws exactly when asked, as the real one does: ``if plots: _plots(...)``)."""
    import homodyne.production.aging as aging

    asked = []

    def fit_aging(paths, out_dir, **kw):
        asked.append(kw.get("plots", True))
        raise KeyboardInterrupt  # stop here: the per-q fits and the J-model are not tested

    monkeypatch.setattr(aging, "fit_aging", fit_aging)
    paths = aging_series(tmp_path, D0=3.0e6, alpha=-0.6, Doff=2.0e3, offset=1.0, n=2)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "analysis_mode": "one_time", "experimental_data": {"file_path": str(paths[0])},
        "one_time": {"series": [str(paths[1])], "errors": "measured", "min_tau_s": 1e-4,
                     "beta": "fixed", "max_iterations": 30},
        "output": {"plots": False}}))
    main(["--config", str(cfg), "--output-dir", str(tmp_path / "o"), "--quiet"])
    assert asked == [False]


def test_matplotlibs_warnings_of_a_figure_are_logged_at_debug_not_raised(tmp_path, caplog):
    """probe20 W3: 'Data has no positive values...' and 'No artists with labels...'
    reached the console raw; now they are DEBUG lines of homodyne's log."""
    from homodyne.onetime.plots import plot_rates

    with warnings.catch_warnings(), caplog.at_level(logging.DEBUG, logger="homodyne"):
        warnings.simplefilter("error")  # any warning that escapes fails the test
        plot_rates(tmp_path / "r.png", [], [], {})
    assert (tmp_path / "r.png").stat().st_size > 0
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("No artists with labels found" in m for m in debug), debug
    assert not [r for r in caplog.records if r.levelno > logging.DEBUG]


def test_a_bin_whose_job_record_was_deleted_is_named_when_left_out_of_the_table(
        tmp_path, caplog):
    """probe20 W2: a bin folder whose job.json was deleted was left out of the refreshed
    table without a word."""
    from helpers import a_bin_folder

    from homodyne.production.multiq import QFitJob, _complete

    kept, lost = a_bin_folder(tmp_path / "a"), a_bin_folder(tmp_path / "b")
    (lost / "job.json").unlink()
    jobs = [QFitJob("d.h5", "d", k, 0.005, f) for k, f in enumerate((kept, lost))]
    with caplog.at_level(logging.WARNING, logger="homodyne"):
        assert _complete(jobs) == [kept]
    assert [r.getMessage() for r in caplog.records] == [
        f"left out of summary.csv: {lost} holds a parameters.json but no job.json (the record "
        "of the file, q bin and settings it fits); rerun that bin with --overwrite to restore it"]


@contextmanager
def file_size_limit(n_bytes: int):
    """This process's file-size limit (ulimit -f) lowered to ``n_bytes`` inside (Python
    ignores SIGXFSZ, so a write past it fails with EFBIG)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_file_size_limit_is_named_as_such_not_as_free_space(tmp_path, caplog):
    """probe19 W2: `ulimit -f` (EFBIG) was said as 'free space or choose another
    --output-dir' for results and with no fix at all for a checkpoint save."""
    from homodyne.optimization.checkpoint_manager import CheckpointManager
    from homodyne.optimization.checkpoint_session import CheckpointSession
    from homodyne.pipeline import _write_error

    session = CheckpointSession(CheckpointManager(tmp_path), fingerprint="f" * 64)
    with caplog.at_level(logging.ERROR, logger="homodyne"), file_size_limit(4096):
        session.save(3, fit_state(np.arange(2000.0)), clock=0.0, wait=True)
        line = str(_write_error(tmp_path, OSError(errno.EFBIG, "File too large")))
    fix = "raise the file-size limit of this shell (ulimit -f, now 4,096 bytes)"
    assert line == (f"could not write the results to {tmp_path} (File too large); {fix}; "
                    "the previous results are untouched")
    assert session.errors == [
        f"checkpoint at batch 3 not written: [Errno 27] File too large; {fix}"]
    assert caplog.records[0].getMessage().startswith(session.errors[0])


def test_another_users_lock_file_in_a_sticky_folder_says_choose_another_folder(
        tmp_path, monkeypatch):
    """probe19 W3: root's .lock (0644) in a sticky folder: 'remove it or fix its
    permissions', neither of which this user can do there. (This user is made 'another
    user' by its effective uid; the open fails as it does for them.)"""
    from homodyne.output import DirectoryLock, OutputDirError

    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o1777)
    lock = folder / ".lock"
    lock.write_text("")
    real_open = os.open

    def refused(path, *args, **kwargs):
        if str(path) == str(lock):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refused)
    monkeypatch.setattr(os, "geteuid", lambda: lock.stat().st_uid + 1)
    with pytest.raises(OutputDirError) as err:
        DirectoryLock(lock).acquire()
    assert str(err.value) == (
        f"cannot open the lock file {lock} (Permission denied); it belongs to another user "
        "and the folder has the sticky bit (as /tmp): this user can neither remove it nor "
        "change its permissions; choose another folder (or have its owner remove it)")
    monkeypatch.setattr(os, "geteuid", lambda: lock.stat().st_uid)  # their own: chmod helps
    with pytest.raises(OutputDirError, match="fix the permissions$"):
        DirectoryLock(lock).acquire()


def test_several_checkpoints_this_user_cannot_delete_make_one_warning(
        tmp_path, monkeypatch, caplog):
    """probe19 W5: one warning line per undeletable checkpoint (3 lines for 3 files)."""
    from homodyne.optimization.checkpoint_manager import CheckpointManager

    manager = CheckpointManager(tmp_path, keep_last_n=3)
    for batch in (2, 4, 6):
        manager.save_checkpoint(batch, fit_state([batch, 0, 1]), fingerprint="f" * 64)
    not_permitted(monkeypatch, *manager.list_checkpoints())
    with caplog.at_level(logging.WARNING, logger="homodyne"):
        assert manager.remove_checkpoints() == []
        assert manager.remove_checkpoints() == []  # said once, not again
    assert [r.getMessage() for r in caplog.records] == [
        f"3 checkpoints (homodyne_state_batch_0002.h5, homodyne_state_batch_0004.h5, "
        f"homodyne_state_batch_0006.h5) in {tmp_path} cannot be deleted by this user "
        "(Operation not permitted); they are kept beside this fit's newest checkpoints: "
        "their owner can remove them"]


def test_the_workflows_synthetic_series_refuses_one_age_twice_when_parsed():
    """probe20 W5: multiq.synthetic.ages_s [0, 0] was accepted (two files of one age)."""
    from helpers import REPO

    text = (REPO / "workflow" / "rules" / "multiq_common.smk").read_text()
    series = {"q": [0.003, 0.004], "angles": [0, 90], "frames": 20}
    with pytest.raises(ValueError) as err:
        exec(compile(text, "multiq_common.smk", "exec"),
             {"config": {"multiq": {"runs": {}, "synthetic": {**series, "ages_s": [0, 0]}}}})
    assert str(err.value) == ("multiq.synthetic.ages_s lists 0 twice (two files of one "
                              "sample age); give each age once")
    exec(compile(text, "multiq_common.smk", "exec"),
         {"config": {"multiq": {"runs": {}, "synthetic": {**series, "ages_s": [0, 600]}}}})


def test_a_one_time_series_with_a_csv_table_is_refused_before_any_fit(tmp_path, capsys):
    """probe20 W4: a one-time series of CSV files ran every per-q fit, then failed with
    'ot_ok.csv: not a readable HDF5 file' (the J-model needs multi-tau HDF5)."""
    (hdf,) = aging_series(tmp_path, D0=3.0e6, alpha=-0.6, Doff=2.0e3, offset=1.0, n=1)
    csv = tmp_path / "ot.csv"
    tau = np.logspace(-5, 0, 20)
    np.savetxt(csv, np.c_[tau, 1 + 0.2 * np.exp(-100 * tau), np.full(20, 1e-3)],
               delimiter=",", header="tau,g2(q=0.005),sigma(q=0.005)", comments="")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "analysis_mode": "one_time", "experimental_data": {"file_path": str(hdf)},
        "one_time": {"series": [str(csv)]}, "output": {"plots": False}}))
    assert main(["--config", str(cfg), "--output-dir", str(tmp_path / "o")]) == 2
    captured = capsys.readouterr()
    assert (f"one_time.series[0]: {csv} is not a multi-tau HDF5 file; the aging J-model of "
            "one_time.series is fitted from multi-tau HDF5 files (each records its start "
            "time): list those files, or fit a g2 table alone (without one_time.series)"
            ) in captured.err
    assert "fit" not in captured.out and not (tmp_path / "o").exists()
