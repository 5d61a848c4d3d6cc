"""Regression tests for the weak items earlier probing rounds left on issue 12 (fix12g):
a checkpoint disk with room for fewer files than keep_last_checkpoints + 1, saves skipped
while the writer was busy, a killed run's temporary file whose pid was reused, the q
source in the 'no q bin within' message, the cache folder's XDG rules, a one-time series'
files, near-equal angles, an overstated sigma, the workflow gather's settings_match and
the shipped multi-q CHX config's degenerate fit."""

import logging

import numpy as np
import pytest
from helpers import disk_with_room_for, fit_state

from homodyne.optimization.checkpoint_manager import CheckpointManager
from homodyne.optimization.checkpoint_session import CheckpointSession


def test_a_checkpoint_disk_without_room_for_keep_plus_one_files_keeps_saving(
        tmp_path, monkeypatch, caplog):
    """probe14 W2: room for 2 files, keep 3: the new file was written before old ones were
    pruned, so every save after the 2nd failed for the rest of the fit (resume point stuck
    at the 2nd). Now a save without room deletes this fit's older checkpoints (never the
    newest valid one) and tries once more; another fit's file is not touched."""
    other = CheckpointManager(tmp_path).save_checkpoint(1, fit_state([9, 9, 9]),
                                                        fingerprint="o" * 64)
    disk_with_room_for(monkeypatch, 3)  # the other fit's file + 2 of ours
    session = CheckpointSession(CheckpointManager(tmp_path, keep_last_n=3),
                                fingerprint="f" * 64)
    with caplog.at_level(logging.WARNING, logger="homodyne"):
        for batch in range(2, 14, 2):
            session.save(batch, fit_state([batch, 0, 1]), clock=0.0, wait=True)
    assert session.errors == []
    names = sorted(p.name for p in tmp_path.glob("homodyne_state_batch_*.h5"))
    assert names == ["homodyne_state_batch_0001.h5", "homodyne_state_batch_0010.h5",
                     "homodyne_state_batch_0012.h5"]
    assert other.is_file()
    resumed = CheckpointSession(CheckpointManager(tmp_path), fingerprint="f" * 64)
    assert resumed.load_resume().batch == 12
    np.testing.assert_array_equal(resumed.replay["current_x"], [12, 0, 1])
    said = [r.getMessage() for r in caplog.records if "no room" in r.getMessage()]
    assert len(said) == 1 and "at batch 6 (No space left on device)" in said[0], said


def test_a_save_without_room_never_deletes_the_newest_valid_checkpoint(tmp_path, monkeypatch):
    """Room for two files: a corrupt newer file of this fit goes, the newest valid one stays;
    room for one: nothing of this fit can go, the save fails and says which one is kept."""
    manager = CheckpointManager(tmp_path, keep_last_n=3)
    session = CheckpointSession(manager, fingerprint="f" * 64)
    session.save(2, fit_state([2, 0, 1]), clock=0.0, wait=True)
    damaged = manager.save_checkpoint(3, fit_state([3, 0, 1]), fingerprint="f" * 64)
    raw = bytearray(damaged.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # digest no longer matches; the trailer still names this fit
    damaged.write_bytes(bytes(raw))
    disk_with_room_for(monkeypatch, 2)
    session.save(4, fit_state([4, 0, 1]), clock=0.0, wait=True)
    assert session.errors == []
    assert [p.name[-7:-3] for p in manager.list_checkpoints()] == ["0002", "0004"]
    disk_with_room_for(monkeypatch, 1)
    session.save(6, fit_state([6, 0, 1]), clock=0.0, wait=True)
    assert [p.name[-7:-3] for p in manager.list_checkpoints()] == ["0004"]
    session.save(8, fit_state([8, 0, 1]), clock=0.0, wait=True)
    assert [p.name[-7:-3] for p in manager.list_checkpoints()] == ["0004"]
    assert len(session.errors) == 2 and "No space left" in session.errors[0]
    assert "batch 4" in session.kept_checkpoint()


def test_with_no_minimum_interval_a_save_is_never_skipped_for_a_slow_writer(tmp_path,
                                                                           monkeypatch):
    """probe15 W9: keep 3 on a 1M-point run kept 19, 59, 75 (checkpoint_frequency 4,
    checkpoint_min_interval_s 0): the kept set was the fit's newest 3, but every save due
    while the previous one was still being written had been skipped. With interval 0 a save
    now falls every checkpoint_frequency batches (the README's promise) and the kept set is
    the newest keep_last_checkpoints of them."""
    import time

    manager = CheckpointManager(tmp_path, checkpoint_frequency=2, keep_last_n=3,
                                min_interval_s=0)
    real = manager.save_checkpoint

    def slow_disk(*args, **kw):
        time.sleep(0.05)
        return real(*args, **kw)

    monkeypatch.setattr(manager, "save_checkpoint", slow_disk)
    session = CheckpointSession(manager, fingerprint="f" * 64)
    for batch in range(1, 13):  # the fit asks after each call whether a save is due
        if session.due(batch, clock=float(batch)):
            session.save(batch, fit_state([batch, 0, 1]), clock=float(batch))
    session.flush()
    assert [p.name[-7:-3] for p in manager.list_checkpoints()] == ["0008", "0010", "0012"]
    assert len(session.save_seconds) == 6


def test_a_killed_runs_temporary_file_goes_when_its_pid_belongs_to_another_process(tmp_path):
    """probe14 W3: '.tmp-1.<host>-deadbeef-fit.h5' (pid 1, alive) was never removed. The
    name now carries the writer's start time after its pid; a live pid that started at
    another time is another process. A running writer's files and legacy names whose pid
    runs are kept."""
    import os
    import re

    from homodyne.output import DirectoryLock, _host, _start_time, _temp_name

    me = os.getpid()
    mine = _start_time(me)
    if mine is None:
        pytest.skip("no /proc: the pid alone is judged here")
    host = _host()
    name = _temp_name(tmp_path / "fit.h5").name
    assert re.fullmatch(rf"\.tmp-{me}s{mine}\.{host}-[0-9a-f]{{8}}-fit\.h5", name)
    planted = {f".tmp-1s{_start_time(1) + 1}.{host}-deadbeef-fit.h5": False,  # pid reused
               f".tmp-{me}s{mine + 7}.{host}-0123abcd-parameters.json": False,
               name: True,  # this (running) writer's
               f".tmp-{me}.{host}-4567abcd-fit.log": True,  # no start time: pid runs
               f".tmp-1s{_start_time(1)}.{host}-89abcdef-fit.h5": True}  # pid 1's own
    for planted_name in planted:
        (tmp_path / planted_name).write_bytes(b"x")
    lock = DirectoryLock(tmp_path / ".lock")
    lock.acquire()
    lock.release()
    assert {n: (tmp_path / n).exists() for n in planted} == planted


def test_a_q_far_from_every_bin_names_where_the_q_came_from(tmp_path, capsys):
    """probe16 W2: with the q from --q the message said 'set experimental_data.q to one of
    the bins or widen q_tolerance' (and the multi-q one 'experimental_data.q: ...'), and
    q_tolerance was named without its section."""
    import yaml
    from helpers import small_two_time_file

    from homodyne.cli import main

    small_two_time_file(tmp_path / "d.h5", n_frames=20)
    config = {"analysis_mode": "static", "experimental_data": {"file_path": "d.h5"},
              "initial_parameters": {"parameter_names": ["D0", "alpha", "D_offset"],
                                     "values": [1.0, 0.0, 0.0]}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    config["experimental_data"]["q"] = 0.01
    (tmp_path / "q.yaml").write_text(yaml.safe_dump(config))
    c, q = str(tmp_path / "c.yaml"), str(tmp_path / "q.yaml")
    fix = {"--q": "give --q one of the bins or widen experimental_data.q_tolerance",
           "key": "set experimental_data.q to one of the bins or widen "
                  "experimental_data.q_tolerance"}
    for argv, said in ((["validate", "--config", c, "--q", "0.01"], fix["--q"]),
                       (["--config", c, "--q", "0.01"], fix["--q"]),
                       (["validate", "--config", q], fix["key"]),
                       (["validate", "--config", q, "--q", "0.02"], fix["--q"])):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "no q bin within 0.001 of q = 0.01" in err or "of q = 0.02" in err
        assert err.rstrip().endswith(said), (argv, err)
    assert main(["validate", "--config", c, "--q", "0.01,0.02"]) == 2
    assert capsys.readouterr().err.startswith("homodyne: error: --q: no q bin of ")


def test_the_cache_folder_follows_the_xdg_spec_and_refuses_an_unknown_users_home(
        tmp_path, monkeypatch, caplog):
    """probe16 W3: XDG_CACHE_HOME=relative/cache made ./relative/cache/homodyne/jax in the
    current folder (the XDG spec: ignore a relative value), and
    HOMODYNE_COMPILATION_CACHE='~nouser/x' a folder literally named '~nouser' there."""
    from homodyne.jaxconf import CACHE_ENV, compilation_cache_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    assert compilation_cache_dir({"XDG_CACHE_HOME": "relative/cache"}) == \
        str(tmp_path / ".cache" / "homodyne" / "jax")
    assert compilation_cache_dir({"XDG_CACHE_HOME": "/abs/cache"}) == "/abs/cache/homodyne/jax"
    assert compilation_cache_dir({CACHE_ENV: "~/x"}) == str(tmp_path / "x")
    with caplog.at_level(logging.WARNING, logger="homodyne"):
        assert compilation_cache_dir({CACHE_ENV: "~no_such_user_f12g/x"}) is None
    assert "the compilation cache ~no_such_user_f12g/x cannot be used (~no_such_user_f12g " \
        "is the home of no user here); kernels are compiled in every run: set " \
        f"{CACHE_ENV} to an absolute folder, or to 'off'" in caplog.text


def test_angles_equal_modulo_360_up_to_rounding_are_one_angle(tmp_path, capsys):
    """probe15 W8: 10 and 370.0000000001 were two angles (compared exactly modulo 360);
    angles 1e-4 degrees apart across 0/360 too. Distinct bins 0.01 degrees apart stay two."""
    from homodyne.cli import main
    from homodyne.model import same_angle_pair

    assert same_angle_pair([10.0, 370.0000000001]) == (0, 1)
    assert same_angle_pair([0.0, 45.0, 359.99999]) == (0, 2)
    assert same_angle_pair([np.float32(10.1), np.float32(370.1)]) == (0, 1)
    assert same_angle_pair([10.0, 10.01, 370.02]) is None
    with pytest.raises(SystemExit):
        main(["generate", "--output", str(tmp_path / "d.h5"), "--angles", "10,370.0000000001"])
    assert "argument --angles: 10 and 370 are one angle (equal modulo 360 degrees)" in \
        capsys.readouterr().err


def test_a_one_time_series_lists_every_file_by_its_absolute_path(tmp_path, monkeypatch):
    """probe15 W7: data_file_abs names the first file of a one-time aging series only, and
    j_model's files were as given (relative). j_model.files_abs lists them all, in the
    series' order (by age), each resolved. (The joint fit itself is tested in
    test_onetime's series test, which checks files_abs too; here only the listing.)"""
    import types

    from homodyne.onetime import run
    from homodyne.production import aging

    monkeypatch.chdir(tmp_path)
    summary = {"files": ["b.hdf", "a.hdf"], "ages_s": [1.0, 2.0], "J_negative_in_window": False,
               "J_min_in_window": 1.0}
    names = ["D0", "alpha", "D_offset", "offset"]
    result = types.SimpleNamespace(status="converged", stop_reason="", parameter_names=names,
                                   parameters=np.ones(4), uncertainties=np.ones(4),
                                   reduced_chi_squared=1.0, undetermined=[], at_bounds=[])
    monkeypatch.setattr(aging, "fit_aging", lambda paths, folder, **kw: {
        "result": result, "summary": summary})
    cfg = types.SimpleNamespace(
        experimental_data={"file_path": "a.hdf"}, raw={}, output={"plots": False},
        one_time={"series": ["b.hdf"], "min_tau_s": None, "max_tau_s": None, "errors": "x",
                  "max_iterations": 10, "ages_s": None, "nonnegative_J": False})
    jm = run.fit_j_model(cfg, tmp_path / "j_model")
    assert jm["files"] == ["b.hdf", "a.hdf"]
    assert jm["files_abs"] == [str(tmp_path.resolve() / "b.hdf"), str(tmp_path.resolve() / "a.hdf")]


def test_a_sigma_far_too_large_is_said_not_passed_as_a_plain_converged():
    """probe15 W8: a sigma 100x too large was "converged" (reduced chi2 2.5e-5, p = 1) with
    nothing said. chi2 below the lower 1e-6 tail of a correct model's distribution is now a
    note in the first line and in parameters.json (sigma_overstated), the status stays
    converged (the standard errors are scaled by the reduced chi2: the same either way)."""
    import json

    import jax.numpy as jnp

    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    x = np.linspace(0.0, 5.0, 400)
    y = 0.8 * np.exp(-1.5 * x) + 1.0 + np.random.default_rng(0).normal(0.0, 2e-3, x.size)

    def decay(x, a, b, c):
        return a * jnp.exp(-b * x) + c

    fits = {s: NLSQWrapper().fit(decay, x, y, [1.0, 1.0, 0.5], ([0, 0, -5], [10, 10, 5]),
                                 sigma=np.full(x.size, s)) for s in (2e-3, 0.2)}
    right, large = fits[2e-3], fits[0.2]
    assert right.status == large.status == "converged" and not right.sigma_overstated
    assert large.sigma_overstated and large.reduced_chi_squared < 2e-4
    np.testing.assert_allclose(large.uncertainties, right.uncertainties, rtol=1e-6)
    first = large.summary().splitlines()[0]
    assert first.startswith("converged, but the data's sigma look overstated: reduced chi2 = "
                            f"{large.reduced_chi_squared:.4g} with the data's sigma"), first
    assert f"the sigma look about {1 / np.sqrt(large.reduced_chi_squared):.3g}x too large" \
        in first and first.endswith(f"({large.stop_reason})")
    saved = json.loads(json.dumps(large.as_dict(), allow_nan=False))
    assert saved["sigma_overstated"] is True and "too large" in saved["goodness_of_fit"]
    assert right.summary().splitlines()[0] == f"converged: {right.stop_reason}"


def test_the_workflows_gather_marks_each_bin_fitted_with_other_settings(tmp_path):
    """probe16 W6: the workflow's summary.csv had no settings_match column (the command
    line's multi-q table has one): a bin fitted with other settings could not be told."""
    import runpy

    import pandas as pd
    from helpers import REPO, gather_rule_job

    from homodyne.config import load_config
    from homodyne.optimization.result import FitResult
    from homodyne.output import write_json
    from homodyne.production.multiq import JOB_FILE, settings_digest

    bins = [tmp_path / "run" / "a" / f"q{k:02d}" for k in range(2)]
    job = gather_rule_job(tmp_path, bins, tmp_path / "run" / "summary.csv")
    now = settings_digest(load_config(job.params.config))
    names = ["contrast", "offset", "D0", "alpha", "D_offset"]
    for k, (folder, settings) in enumerate(zip(bins, [now, "f" * 64], strict=True)):
        folder.mkdir(parents=True)
        write_json(folder / JOB_FILE, {"file": "a.h5", "file_id": "a", "q_index": k,
                                       "q": 0.001 * (k + 1), "age_s": None,
                                       "settings": settings})
        write_json(folder / "parameters.json", FitResult(
            parameter_names=tuple(names), parameters=np.arange(1.0, 6.0),
            uncertainties=np.full(5, 0.1), covariance=np.eye(5) * 0.01, cost=1.0,
            n_points=500, reduced_chi_squared=1.0, converged=True, stop_reason="converged",
            strategy="STANDARD", iterations=4, passes=5).as_dict())
    runpy.run_path(str(REPO / "workflow" / "scripts" / "gather_q_fits.py"),
                   init_globals={"snakemake": job})
    table = pd.read_csv(tmp_path / "run" / "summary.csv")
    assert table["settings_match"].tolist() == [True, False]


def test_the_shipped_multi_q_chx_config_gives_a_determined_fit(real_data, tmp_path):
    """probe10 W5: config/fits/chx_two_time.yaml (the workflow's multiq_chx run on the
    measured CHX matrix) ended degenerate: D0 on its upper bound 1000, D_offset -999.8,
    alpha ~ 0, all undetermined (its bound D0 >= 1e-6 kept out the minimum, where J(t) > 0
    falls as the sample ages with D0 < 0). Now every parameter is determined, inside the
    bounds, and J(t) > 0 at every frame."""
    import json

    import pandas as pd
    import yaml
    from helpers import REPO

    from homodyne.cli import main

    raw = yaml.safe_load((REPO / "config" / "fits" / "chx_two_time.yaml").read_text())
    raw["experimental_data"]["files"] = [str(real_data / "chx_two_time" / "test_g2.npy")]
    raw["output"] = {"directory": str(tmp_path / "out"), "plots": False}
    (tmp_path / "chx.yaml").write_text(yaml.safe_dump(raw))
    assert main(["--config", str(tmp_path / "chx.yaml")]) == 0
    [row] = pd.read_csv(tmp_path / "out" / "summary.csv").to_dict("records")
    assert row["status"] == "ok", row["status"]
    p = json.loads((tmp_path / "out" / "test_g2" / "q00" / "parameters.json").read_text())
    assert p["status"] == "converged" and p["at_bounds"] == [] and p["undetermined"] == []
    v = {n: d["value"] for n, d in p["parameters_by_name"].items()}
    t = np.arange(1.0, 351.0)  # frames, dt = 1
    J = v["D0"] * t ** v["alpha"] + v["D_offset"]
    assert v["D0"] < 0 < v["alpha"] and np.all(J > 0) and J[-1] < J[0]
