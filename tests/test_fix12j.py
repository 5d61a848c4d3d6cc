"""fix12j: issue 12's lie on noise-free data without dynamics (probe21 N1) and weak
items of earlier probing rounds; each test fails on main 36bbb56."""

import numpy as np
from helpers import make_spec, noisy_data


def _noise_free_fit(contrast: float):
    """A fit of noise-free float64 data of 2 angles x 40 frames (truth D0 1e4, alpha -0.5,
    D_offset 100) with the given contrast, from 20% off the truth."""
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    spec = make_spec("static", n_frames=40, n_phi=2)
    truth = spec.pack([contrast, contrast], [1.0, 1.0], [1e4, -0.5, 100.0])
    y = noisy_data(spec, truth, sigma=0.0)
    lb, ub = spec.pack(0.0, 0.5, [1.0, -2.0, -1e3]), spec.pack(1.0, 1.5, [1e5, 0.5, 1e3])
    p0 = spec.pack([0.2, 0.2], [1.0, 1.0], [8000.0, -0.4, 80.0])
    return NLSQWrapper().fit_two_time(None, spec, p0, (lb, ub), y=y)


def test_noise_free_data_without_dynamics_do_not_determine_the_dynamics():
    """c2 = offset exactly (contrast 0, no noise) does not depend on D0, alpha, D_offset:
    the fit said 'converged', every standard error '+/- 0' (the covariance times a
    residual variance of exactly 0), undetermined [] and --strict exit 0, while the same
    data with noise 0.01 are NOT DETERMINED (exit 5). The residual variance is floored at
    the working precision's: the dynamics are undetermined, status 'undetermined'. With
    dynamics (contrast 0.3) noise-free data stay determined, to ~1e-12 relative."""
    flat = _noise_free_fit(0.0)
    assert flat.reduced_chi_squared < 1e-25, flat.summary()
    assert {"D0", "alpha", "D_offset"} - set(flat.at_bounds) <= set(flat.undetermined), \
        flat.summary()
    assert flat.status == "undetermined", flat.summary()
    assert any("standard errors are taken at that floor" in m for m in flat.messages)

    exact = _noise_free_fit(0.3)
    assert exact.status == "converged" and not exact.undetermined, exact.summary()
    se = dict(zip(exact.parameter_names, exact.uncertainties, strict=True))
    assert 0 < se["D0"] < 1e-6 * 1e4 and 0 < se["alpha"] < 1e-8, exact.summary()


def test_when_no_checkpoint_of_the_fit_is_usable_the_fresh_start_is_said(tmp_path, caplog):
    """Every checkpoint of the fit refused (root's 0600 files for another user, or
    corrupt): each said 'falling back to the previous one', the oldest too (there is
    none), and the fit then started afresh without a line saying so."""
    from helpers import fit_state

    from homodyne.optimization.checkpoint_manager import CheckpointManager
    from homodyne.optimization.checkpoint_session import CheckpointSession

    session = CheckpointSession(CheckpointManager(tmp_path, keep_last_n=5), fingerprint="fp")
    for batch in (2, 4):
        session.manager.save_checkpoint(batch, fit_state(np.array([1.0, 2.0, 3.0])),
                                        fingerprint="fp")
    for path in session.manager.list_checkpoints():
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF  # its digest no longer matches
        path.write_bytes(bytes(raw))
    with caplog.at_level("WARNING"):
        assert session.load_resume() is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert "batch_0004" in lines[0] and lines[0].endswith("falling back to the previous one")
    assert "batch_0002" in lines[1] and lines[1].endswith(
        "it is the oldest checkpoint of this fit")
    assert lines[2] == (f"none of this fit's 2 checkpoints in {tmp_path} can be resumed "
                        "from: the fit starts from the beginning")


def test_a_multi_q_exit_status_does_not_read_the_bins_results_again(tmp_path, monkeypatch):
    """The exit status of a multi-q run read each bin's parameters.json once more with an
    unbounded read_text, after the folder's lock was released: a concurrent run replacing
    it (its marker removed first) meant a FileNotFoundError traceback. The status word
    comes with the row read under the lock; the table has no column for it."""
    import json

    from helpers import a_bin_folder

    from homodyne import cli
    from homodyne.output import write_json
    from homodyne.production import multiq

    folder = a_bin_folder(tmp_path)
    result = json.loads((folder / "parameters.json").read_text())
    write_json(folder / "parameters.json", {**result, "status": "undetermined"})
    row = multiq.summary_row(folder)
    (folder / "parameters.json").unlink()  # another run is committing its result set
    monkeypatch.setattr(multiq, "run_all", lambda *a, **k: ([row], tmp_path / "summary.csv"))
    assert cli._fit_many(None, None, strict=True) == cli.EXIT_UNDETERMINED
    assert cli._fit_many(None, None, strict=False) == 0
    assert "outcome" not in multiq.table_columns([row])


def test_one_angle_is_no_plural(tmp_path, capsys):
    """'1 angles x 291 frames' in the first line of a one-angle fit (and of generate's)."""
    from homodyne.cli import main

    assert main(["generate", "--output", str(tmp_path / "one.h5"), "--frames", "20",
                 "--angles", "30"]) == 0
    assert "(1 angle x 20 frames)" in capsys.readouterr().out
    assert make_spec(n_phi=1, n_frames=291).shape_text == "1 angle x 291 frames"
    assert make_spec(n_phi=2, n_frames=40).shape_text == "2 angles x 40 frames"


def test_a_save_that_fails_after_making_room_names_the_checkpoints_it_deleted(
        tmp_path, monkeypatch, caplog):
    """The disk still full after make_room: 'checkpoint at batch 6 not written: No space
    left on device; the previous checkpoint stays valid (batch 4 ...)', true, but the
    older checkpoint it had just deleted (batch 2) went without a word (the warning about
    deleting is said only when the retry succeeds)."""
    from helpers import disk_with_room_for, fit_state

    from homodyne.optimization.checkpoint_manager import CheckpointManager
    from homodyne.optimization.checkpoint_session import CheckpointSession

    manager = CheckpointManager(tmp_path, keep_last_n=3)
    session = CheckpointSession(manager, fingerprint="f" * 64)
    for batch in (2, 4):
        session.save(batch, fit_state([batch, 0, 1]), clock=0.0, wait=True)
    disk_with_room_for(monkeypatch, 1)  # room for the newest file only: batch 2 must go
    with caplog.at_level("ERROR"):
        session.save(6, fit_state([6, 0, 1]), clock=0.0, wait=True)
    assert [p.name for p in manager.list_checkpoints()] == ["homodyne_state_batch_0004.h5"]
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("checkpoint at batch 6 not written: [Errno 28] No space left on "
                           "device; this fit's older checkpoint homodyne_state_batch_0002.h5 "
                           "was deleted to make room, and it still did not fit; the previous "
                           "checkpoint stays valid (batch 4, "), line


def test_a_save_onto_another_users_checkpoint_says_why_it_failed(tmp_path, monkeypatch):
    """Another user's checkpoints (0600, unreadable here) in a folder with the sticky bit:
    resume falls back past them and starts afresh, right, but the saves at their batch
    numbers failed with the raw rename error "[Errno 1] Operation not permitted:
    '.tmp-...' -> '.../homodyne_state_batch_0006.h5'", naming no file of theirs nor a fix."""
    import errno
    import os

    from helpers import fit_state

    from homodyne.optimization.checkpoint_manager import CheckpointManager
    from homodyne.optimization.checkpoint_session import CheckpointSession

    manager = CheckpointManager(tmp_path, keep_last_n=3)
    theirs = manager.path_for(6)
    theirs.write_bytes(b"another user's checkpoint")
    real = os.replace

    def replace(src, dst, *a, **k):  # root may replace anything: the sticky bit, faked
        if os.path.abspath(dst) == str(theirs):
            raise PermissionError(errno.EPERM, "Operation not permitted", str(src), str(dst))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    session = CheckpointSession(manager, fingerprint="f" * 64)
    for batch in (3, 6, 9):
        session.save(batch, fit_state([batch, 0, 1]), clock=0.0, wait=True)
    assert session.errors == [
        "checkpoint at batch 6 not written: [Errno 1] homodyne_state_batch_0006.h5 in "
        f"{tmp_path} cannot be replaced by this user (Operation not permitted): it is another "
        "user's file in a folder with the sticky bit; its owner can remove it, or give this "
        "fit its own optimization.streaming.checkpoint_dir"]
    assert session.last_batch == 9 and theirs.read_bytes() == b"another user's checkpoint"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_a_q_bin_some_files_lack_is_fitted_in_the_files_that_have_it(tmp_path, caplog):
    """probe20 W1: --q 0.009 on a multi-file config where one file has no such bin was
    refused for every file (exit 2), so the other files' 0.009 bins could not be refreshed
    alone. Those files are fitted there and the file without the bin is named in a
    warning; a value no file has a bin for is refused as before."""
    import pytest

    from homodyne.config import ConfigError, validate_config
    from homodyne.data.synthetic import generate_synthetic
    from homodyne.production.multiq import plan_jobs

    spec = make_spec(n_phi=1, n_frames=20)
    truth = spec.pack(0.3, 1.0, [1e4, -0.5, 100.0])
    generate_synthetic(tmp_path / "a.h5", spec, truth, more_q=(0.009,))
    generate_synthetic(tmp_path / "b.h5", spec, truth)

    def jobs(q):
        return [(j.file_id, j.q_index) for j in plan_jobs(validate_config({
            "analysis_mode": "static", "initial_parameters": {"values": [1e4, -0.5, 100.0]},
            "experimental_data": {"files": [str(tmp_path / "a.h5"), str(tmp_path / "b.h5")],
                                  "q": q}}))]

    with caplog.at_level("WARNING"):
        assert jobs(0.009) == [("a", 1)]
        assert jobs([0.0054, 0.009]) == [("a", 0), ("a", 1), ("b", 0)]
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and said[0].startswith(
        "1 of 2 files has no q bin at q = 0.009 and is not fitted there: no q bin of "
        f"{tmp_path / 'b.h5'} within 0.0009 of 0.009 (bins: 0.0054)"), said
    with pytest.raises(ConfigError, match="no q bin of .*a.h5 within 0.002 of 0.02"):
        jobs(0.02)


def test_two_selected_names_that_lead_to_one_dataset_are_refused(tmp_path):
    """probe17 W3: c2_00001 soft-linked to c2_00002 fitted angle 45's matrix for angle 0
    as well; a multi-tau normalized_g2 soft-linked to normalized_g2_err fitted the errors
    as g2. Two selected names that lead to one HDF5 object are refused, naming both."""
    import datetime

    import pytest
    from helpers import small_two_time_file, soft_link_over, write_multitau

    from homodyne.data import DataFileError
    from homodyne.data.multitau import read_multitau
    from homodyne.data.twotime import open_two_time

    path = small_two_time_file(tmp_path / "c2.h5", n_frames=10)
    maps = "/xpcs/twotime/correlation_map"
    soft_link_over(path, f"{maps}/c2_00001", f"{maps}/c2_00002")
    with pytest.raises(DataFileError, match="c2_00001 and /xpcs/twotime/correlation_map/"
                       "c2_00002 are one dataset .a link leads from one to the other., not "
                       "two: give each its own values .re-export the file.$"):
        open_two_time(path, q=0.0054)

    g2 = tmp_path / "g2.h5"
    write_multitau(g2, datetime.datetime(2024, 1, 1), np.ones((5, 1)), np.full((5, 1), 0.01),
                   np.arange(1, 6), np.array([0.005]), 0.1)
    soft_link_over(g2, "/xpcs/multitau/normalized_g2", "/xpcs/multitau/normalized_g2_err")
    with pytest.raises(DataFileError, match="normalized_g2 and /xpcs/multitau/normalized_g2_err "
                       "are one dataset"):
        read_multitau(g2)


def test_a_q_refresh_sees_data_rewritten_with_their_old_mtime(tmp_path, caplog):
    """probe20 W6: a --q refresh left out bins whose data file is newer than their result
    (by mtime): data rewritten with the old mtime (cp -p, touch -d) kept the old fits in
    the table as fits of the new data. job.json keeps the file's stamp and SHA-256; a
    stamp that differs (ctime cannot be set back) and a digest that differs leave the bin
    out; a file only touched stays in."""
    import os

    from helpers import multi_q_cli_config

    from homodyne.cli import main
    from homodyne.config import load_config
    from homodyne.data.synthetic import generate_synthetic
    from homodyne.model import ModelSpec
    from homodyne.production.multiq import _of_this_data, plan_jobs

    cfg = multi_q_cli_config(tmp_path, more_q=(0.007,))
    assert main(["--config", str(cfg), "--quiet"]) == 0
    jobs = plan_jobs(load_config(cfg))
    folders = [j.output_dir for j in jobs]
    data = tmp_path / "d.h5"
    old = os.stat(data)
    os.utime(data, ns=(1, 1))  # only touched: its bins stay
    assert _of_this_data(jobs, folders) == folders
    spec = ModelSpec(mode="static", n_frames=20, phi_deg=(0.0,))
    generate_synthetic(data, spec, spec.pack(0.3, 1.0, [2e4, -0.5, 100.0]), more_q=(0.007,),
                       overwrite=True)
    os.utime(data, ns=(old.st_atime_ns, old.st_mtime_ns))  # rewritten, its mtime set back
    assert os.stat(data).st_size == old.st_size
    with caplog.at_level("WARNING"):
        assert _of_this_data(jobs, folders) == []
    assert f"d q bin 0 ({data} changed after the fit); d q bin 1 (" in caplog.text
