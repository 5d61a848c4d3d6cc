"""Files this user may not read or write (found running as a non-root user): each is said
as a permission problem with its fix, never as a corrupt file, a symlink or a traceback."""

import errno
import os

import pytest
from helpers import streaming_cli_config

import homodyne.config
from homodyne.cli import main
from homodyne.optimization import checkpoint_manager
from homodyne.output import DirectoryLock, OutputDirError


def _deny_reading(monkeypatch, denied):
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k:
                        False if os.fspath(p) == str(denied) and mode == os.R_OK
                        else real(p, mode, *a, **k))


def test_unreadable_config_is_one_clean_error(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("analysis_mode: static\n")

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(cfg))

    monkeypatch.setattr(homodyne.config, "open", denied, raising=False)
    assert main(["validate", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "is not readable by this user (permission denied)" in err and "Traceback" not in err


@pytest.mark.parametrize("how", ["config", "--data-file"])
def test_unreadable_data_file_is_named_as_such_not_corrupt(tmp_path, monkeypatch, capsys, how):
    cfg = streaming_cli_config(tmp_path)
    data = tmp_path / "data.h5"
    _deny_reading(monkeypatch, data)
    args = ["--config", str(cfg), "--output-dir", str(tmp_path / "out")]
    assert main(args + (["--data-file", str(data)] if how == "--data-file" else [])) == 2
    err = capsys.readouterr().err
    assert "not readable by this user (permission denied)" in err
    assert "corrupt" not in err and not (tmp_path / "out" / "parameters.json").exists()


def test_lock_file_of_another_user_says_permissions_not_symlink(tmp_path, monkeypatch):
    lock = tmp_path / ".homodyne.lock"
    real = os.open

    def fake_open(path, flags, *a, **k):
        if os.fspath(path) == str(lock):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", fake_open)
    with pytest.raises(OutputDirError, match="belongs to another user or is read-only") as exc:
        DirectoryLock(lock).acquire()
    assert "symbolic link" not in str(exc.value)


def test_unreadable_checkpoint_is_not_called_corrupt(tmp_path, monkeypatch):
    path = tmp_path / "homodyne_state_batch_0001.h5"
    path.write_bytes(b"x" * 64)

    def denied(p):
        raise PermissionError(errno.EACCES, "Permission denied", str(p))

    monkeypatch.setattr(checkpoint_manager, "_verify_bytes", denied)
    manager = checkpoint_manager.CheckpointManager(tmp_path)
    with pytest.raises(checkpoint_manager.NLSQCheckpointError,
                       match="cannot be read by this user") as exc:
        manager.check_checkpoint(path)
    assert "corrupt" not in str(exc.value)


def test_summary_names_a_coarse_subsample_only_when_there_was_one():
    from helpers import bounds_for, make_spec, noisy_data, start_for, truth_for

    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    spec = make_spec("static", n_frames=30, n_phi=1)
    truth = truth_for(spec)
    lb, ub = bounds_for(spec)
    result = NLSQWrapper().fit_two_time(None, spec, start_for(spec, truth), (lb, ub),
                                        y=noisy_data(spec, truth))
    line = result.summary().splitlines()[1]
    assert result.coarse_passes == 0 and f"{result.passes} full passes, " in line
    assert "subsample" not in line


def test_a_stop_landing_as_a_bins_commit_releases_its_handlers_still_counts_that_bin(
        tmp_path, capsys, monkeypatch):
    """A stop taken by another thread (JAX's) while the set was renamed into place can run
    its handler only once the handlers are back: it escaped the commit as a plain stop, and
    a multi-q run said the bin whose new results were in place was untouched (CI, under
    load: 'kept: d/q00' for a run that had replaced q01 too)."""
    import signal
    import time

    from helpers import multi_q_cli_config, multi_q_stop_line, stop_signals_at_default

    import homodyne.output as output

    cfg = multi_q_cli_config(tmp_path)
    real_release, releases = output._release_stops, []

    def late_release(held, stops):
        out = real_release(held, stops)
        releases.append(1)
        if len(releases) == 2:  # q01's commit: the stop lands just as its handlers return
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        return out

    monkeypatch.setattr(output, "_release_stops", late_release)
    with stop_signals_at_default():
        assert main(["--config", str(cfg), "--quiet"]) == 143
    assert capsys.readouterr().err.strip().splitlines()[-1] == multi_q_stop_line("d/q00",
                                                                           "d/q01")
    assert (tmp_path / "out" / "d" / "q01" / "parameters.json").is_file()
