"""Issue 12, the weak items earlier probing rounds left (probe10-12 "Weak"): each test
fails on main a417fd7."""

import json
import os

import pytest


def _config(tmp_path, data, out="out", name="c.yaml", q=None, **streaming):
    cfg = tmp_path / name
    cfg.write_text(json.dumps({
        "analysis_mode": "static", "experimental_data": {"file_path": str(data), "q": q},
        "initial_parameters": {"values": [1e4, -0.5, 100.0]},
        "optimization": {"streaming": streaming},
        "performance": {"enable_progress": False},
        "output": {"directory": str(tmp_path / out), "plots": False}}))
    return cfg


def test_a_checkpoint_folder_another_run_holds_is_refused_like_the_output_folder(
        tmp_path, capsys, monkeypatch):
    """Was (probe11 W4): a run whose checkpoint_dir another live run holds read the data,
    then ended with exit 3 'fit failed'; the output folder's lock in the same situation is
    exit 2 before any data are read. Both are a folder to change: exit 2, one line naming
    the folder, the run that holds it and the fix, before the data are opened."""
    from helpers import small_two_time_file

    import homodyne.pipeline as pipeline
    from homodyne.cli import main
    from homodyne.optimization.checkpoint_manager import CheckpointManager
    from homodyne.optimization.exceptions import NLSQCheckpointError

    data = small_two_time_file(tmp_path / "b.h5", n_frames=20, n_phi=1)
    cfg = _config(tmp_path, data, enable_checkpoints=True,
                  checkpoint_dir=str(tmp_path / "ck"))
    holder = CheckpointManager(tmp_path / "ck")  # another run, alive
    holder.acquire_lock()

    def never(*a, **k):
        raise AssertionError("the data were opened")

    with monkeypatch.context() as m:
        m.setattr(pipeline, "open_two_time", never)
        assert main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"homodyne: error: checkpoint folder {tmp_path / 'ck'} is in use by pid "
                       f"{os.getpid()}; wait for it to finish or set "
                       "optimization.streaming.checkpoint_dir to another folder")
    assert not (tmp_path / "out" / "parameters.json").exists()
    # the fit's own refusal (a run that takes the folder after the check) is the same
    # error: still an NLSQCheckpointError for the API, exit 2 for the command line
    with pytest.raises(NLSQCheckpointError, match="is in use by pid") as caught:
        CheckpointManager(tmp_path / "ck").acquire_lock()
    from homodyne.output import OutputDirError

    assert isinstance(caught.value, OutputDirError)
    holder.release_lock()
    assert main(["--config", str(cfg), "--quiet"]) in (0, 4)  # free again: the fit runs


def test_a_checkpoint_folder_removed_during_the_run_is_locked_again_before_the_next_save(
        tmp_path, caplog):
    """Was (probe11 W5): the checkpoint folder removed mid-run took its .lock with it; the
    next save re-created the folder unlocked, so a second run of the same fit could take
    it and both would write there. Now the save locks the new folder first (one warning);
    once another run holds it, this run's saves are refused and write nothing there."""
    import shutil

    import numpy as np

    from homodyne.optimization.checkpoint_manager import CheckpointManager
    from homodyne.optimization.exceptions import NLSQCheckpointError

    ck = tmp_path / "ck"
    state = {"parameters": np.arange(3.0)}
    run = CheckpointManager(ck)
    run.acquire_lock()
    run.save_checkpoint(1, state, fingerprint="A" * 64)
    shutil.rmtree(ck)  # removed during the run
    run.save_checkpoint(2, state, fingerprint="A" * 64)
    assert [p.name for p in run.list_checkpoints()] == ["homodyne_state_batch_0002.h5"]
    assert "was removed or replaced during the run" in caplog.text
    with pytest.raises(NLSQCheckpointError, match=f"is in use by pid {os.getpid()}"):
        CheckpointManager(ck).acquire_lock()  # a second run of the fit: refused

    shutil.rmtree(ck)  # removed again, and another run takes the new folder first
    other = CheckpointManager(ck)
    other.acquire_lock()
    with pytest.raises(NLSQCheckpointError, match="removed during this run and cannot be "
                                                 "locked again: checkpoint folder .* is in use"):
        run.save_checkpoint(3, state, fingerprint="A" * 64)
    assert sorted(p.name for p in ck.iterdir()) == [".lock"]  # nothing written there
    other.release_lock()  # that run ends: the next save takes the folder again
    run.save_checkpoint(4, state, fingerprint="A" * 64)
    with pytest.raises(NLSQCheckpointError, match=f"is in use by pid {os.getpid()}"):
        CheckpointManager(ck).acquire_lock()
    run.release_lock()


def test_a_first_finish_kept_after_a_second_one_counts_and_lists_both(monkeypatch):
    """Was (probe12 W4): _finish_again_from_the_box kept the first finish with the
    evaluations and iterations of both finishes but only the first one's history: the
    history was shorter than the iterations counted. Now the kept end's history is the
    whole record (both finishes); its point, cost and reason stay the first finish's."""
    import dataclasses

    import numpy as np

    import homodyne.optimization.internal_stage as stage
    from homodyne.optimization.engine import LMState
    from homodyne.optimization.problems import NormalEquations

    def state(cost, iterations, evaluations, converged):
        history = [dict(iteration=k, cost=cost + 1.0 / (k + 1)) for k in range(iterations + 1)]
        return LMState(x=np.full(2, cost), ne=NormalEquations(cost, np.eye(2), np.zeros(2), 9),
                       lam=1.0, iteration=iterations, evaluations=evaluations,
                       converged=converged, reason=f"end at {cost}", history=history)

    first = state(1.0, 4, 6, converged=False)  # the finish from the predicted edge point

    def second_finish(spent, *a, **k):  # continues ``spent``: its counts and history
        st2 = state(5.0, 3, 4, converged=False)  # a worse end: the first one is kept
        st2.evaluations += spent.evaluations
        st2.iteration += spent.iteration
        st2.history = spent.history + st2.history
        return st2

    monkeypatch.setattr(stage, "_finish_in_user_coordinates", second_finish)
    internal = dataclasses.replace(first, history=[], evaluations=0, iteration=0)
    kept = stage._finish_again_from_the_box(first, internal, *[None] * 13)
    assert kept.reason == "end at 1.0" and kept.ne.cost == 1.0
    assert (kept.evaluations, kept.iteration) == (10, 7)
    assert [h["iteration"] for h in kept.history] == [0, 1, 2, 3, 4, 0, 1, 2, 3]


def test_model_spec_takes_a_numpy_scalar_or_0d_array_and_keeps_a_python_float():
    """Was (probe12 W5): ModelSpec(q=np.array(0.005)) (a 0-d array, as h5py's ds[()] gives
    for a scalar) was refused as not a number; a numpy scalar q or gap_h kept its numpy
    type (repr, equality with the same spec made of floats, json.dumps all differed)."""
    import numpy as np

    from homodyne.model import ModelSpec

    spec = ModelSpec(q=np.array(0.005), dt=np.float32(0.5), gap_h=np.array(2e6, np.float32))
    assert [type(v) for v in (spec.q, spec.dt, spec.gap_h)] == [float] * 3
    same = ModelSpec(q=0.005, dt=0.5, gap_h=2e6)
    assert spec == same and repr(spec) == repr(same) and hash(spec) == hash(same)
    assert json.dumps([spec.q, spec.dt, spec.gap_h]) == "[0.005, 0.5, 2000000.0]"
    for bad in (np.array([0.005]), np.array(np.nan), np.bool_(True), 10**400):
        with pytest.raises(ValueError, match="q, dt and gap_h must be finite numbers > 0"):
            ModelSpec(q=bad)


def test_two_angles_equal_modulo_360_are_one_angle_in_generate_and_in_a_file(tmp_path, capsys):
    """Was (probe12 W7): `homodyne generate --angles 0,360` was accepted, and a file with
    phi 0 and 360 at one q passed the one-bin-twice check (it compared the numbers): for
    the model they are one angle, fitted as two. Both are refused, naming the two angles."""
    import h5py
    from helpers import small_two_time_file

    from homodyne.cli import main
    from homodyne.data import DataFileError, open_two_time

    out = tmp_path / "g.h5"
    with pytest.raises(SystemExit) as stop:
        main(["generate", "--output", str(out), "--frames", "10", "--angles", "10,45,-350"])
    assert stop.value.code == 2 and not out.exists()
    assert "argument --angles: 10 and -350 are one angle (equal modulo 360 degrees); list " \
        "each once" in capsys.readouterr().err

    data = small_two_time_file(tmp_path / "b.h5", n_frames=12, n_phi=2)
    with h5py.File(data, "r+") as h5:
        phi = h5["/xpcs/qmap/dynamic_v_list_dim1"]
        phi[...] = [0.0, 360.0][: phi.size]
    with pytest.raises(DataFileError, match=r"c2_00001 and .*c2_00002 are both at q = "
                                            r"0.0054, phi = 0 and 360 deg \(one angle modulo "
                                            r"360\): the file lists one \(q, phi\) bin twice"):
        open_two_time(data, q=0.0054)


def test_extreme_exponent_bounds_with_restarts_fit_without_numpy_warnings(tmp_path):
    """Was (probe10 W2): alpha bounds in the hundreds with restarts: starts where
    t_ref^alpha overflows put numpy RuntimeWarnings (coordinates.py divide/invalid/
    overflow, model.py multiply) on the console, though each such start is judged and
    skipped. Now silent; the fit still recovers the truth and says which starts it skipped."""
    import warnings

    import numpy as np
    from helpers import small_two_time_file, truth_for

    from homodyne.data import open_two_time
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    data = small_two_time_file(tmp_path / "b.h5", n_frames=80, n_phi=2, seed=3)
    with open_two_time(data) as src, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spec = src.model_spec()
        p0 = spec.pack([0.25] * 2, [1.0] * 2, [8000.0, -0.4, 80.0])
        bounds = (spec.pack(0.0, 0.5, [1.0, -1000.0, -1000.0]),
                  spec.pack(1.0, 1.5, [1e5, 1000.0, 1000.0]))
        fit = NLSQWrapper(restarts=8).fit_two_time(src, spec, p0, bounds)
    numpy_warnings = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught
                      if issubclass(w.category, RuntimeWarning)]
    assert numpy_warnings == []
    truth = truth_for(spec)
    assert fit.status == "converged" and fit.restarts["starts"] == 8
    assert np.all(np.abs(fit.parameters - truth) < 5 * fit.uncertainties)
    assert any("skipped: model not finite there" in m for m in fit.messages)


def test_the_results_name_their_data_file_also_by_its_absolute_path(tmp_path, monkeypatch):
    """Was (probe10 W3): parameters.json and fit.h5 named the data only by the path as given
    (relative to the folder the run started in): read elsewhere, a result could not say
    which file it fitted. `data_file` is kept as given; `data_file_abs` is added."""
    import h5py
    from helpers import small_two_time_file

    from homodyne.cli import main

    small_two_time_file(tmp_path / "b.h5", n_frames=20, n_phi=1)
    monkeypatch.chdir(tmp_path)
    cfg = _config(tmp_path, "b.h5")
    assert main(["--config", str(cfg), "--quiet"]) in (0, 4)
    where = str((tmp_path / "b.h5").resolve())
    params = json.loads((tmp_path / "out" / "parameters.json").read_text())
    assert (params["data_file"], params["data_file_abs"]) == ("b.h5", where)
    with h5py.File(tmp_path / "out" / "fit.h5", "r") as h5:
        assert (h5.attrs["data_file"], h5.attrs["data_file_abs"]) == ("b.h5", where)


@pytest.mark.parametrize("stop", ["outside a fit", "in a fit", "while the table is written"])
def test_a_multi_q_run_stopped_after_some_bins_says_which_bins_it_replaced(
        tmp_path, capsys, monkeypatch, stop):
    """Was (probe12 W2): a multi-q run stopped after some bins were refitted ended with
    'results already in the output folder are untouched', untrue of the bins it had
    already replaced. The line names them; a stop before any bin keeps the old line."""
    import types

    import homodyne.production.multiq as multiq
    from homodyne.cli import main
    from homodyne.data.synthetic import generate_synthetic
    from homodyne.model import ModelSpec
    from homodyne.pipeline import FitInterrupted

    spec = ModelSpec(mode="static", n_frames=20, phi_deg=(0.0,))
    generate_synthetic(tmp_path / "d.h5", spec, spec.pack(0.3, 1.0, [1e4, -0.5, 100.0]),
                       more_q=(0.007, 0.009))
    cfg = _config(tmp_path, tmp_path / "d.h5", q="all")
    fit_job, calls = multiq.fit_job, []
    reason = "interrupted by SIGTERM: run the same command again to resume"

    def stopped_at_the_third(*a, **k):
        calls.append(1)
        if len(calls) == 3 and stop != "while the table is written":
            if stop == "in a fit":
                raise FitInterrupted(types.SimpleNamespace(stop_reason=reason,
                                                           interrupted_by="SIGTERM"))
            raise KeyboardInterrupt
        return fit_job(*a, **k)

    def table_stopped(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(multiq, "fit_job", stopped_at_the_third)
    if stop == "while the table is written":
        monkeypatch.setattr(multiq, "write_summary", table_stopped)
    code = main(["--config", str(cfg), "--quiet"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    bins = ("q00", "q01", "q02") if stop == "while the table is written" else ("q00", "q01")
    kept = (f"bins fitted before the stop are kept: "
            f"{', '.join(os.path.join('d', b) for b in bins)}; the other bins' results are "
            "untouched")
    if stop == "in a fit":  # (probe25: the same command is refused, q00 holds results)
        resume = reason.replace("again to resume", "with --overwrite to resume")
        assert (code, last) == (143, f"homodyne: {resume}; {kept}")
    else:
        assert (code, last) == (130, f"homodyne: interrupted (Ctrl-C); {kept}")
    if stop == "while the table is written":
        return
    calls.clear()
    calls.extend([1, 1])  # the next run stops in its first bin: nothing replaced
    assert main(["--config", str(cfg), "--quiet", "--overwrite"]) in (130, 143)
    assert capsys.readouterr().err.strip().splitlines()[-1] in (
        f"homodyne: {reason}",
        "homodyne: interrupted (Ctrl-C); results already in the output folder are untouched")


def test_a_non_ascii_path_under_an_ascii_locale_names_the_locale_not_a_missing_file(tmp_path):
    """Was (probe10 W1): LC_ALL=C with Python's UTF-8 mode off (PYTHONUTF8=0) and a
    non-ASCII data path in the config: 'file not found' although the file exists (the
    file-name encoding, ASCII, cannot hold the name); a non-ASCII output folder: a
    UnicodeEncodeError traceback. Both are one exit-2 line naming the locale and the fix."""
    import shutil
    import subprocess
    import sys

    from helpers import small_two_time_file

    small_two_time_file(tmp_path / "b.h5", n_frames=20, n_phi=1)
    shutil.copy(tmp_path / "b.h5", tmp_path / "nö.h5")
    data_cfg = _config(tmp_path, tmp_path / "nö.h5")
    out_cfg = _config(tmp_path, tmp_path / "b.h5", out="outü", name="o.yaml")
    as_argv = "os.fsdecode(b'n\\xc3\\xb6.h5')"  # a name as argv gives it: bytes not ASCII
    code = ("import os\nfrom homodyne.cli import main\n"
            f"print(main(['--config', {str(data_cfg)!r}]), main(['--config', {str(out_cfg)!r}]),"
            f" main(['--config', {str(out_cfg)!r}, '--data-file', {as_argv}]))")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG", "PYTHONIO"))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120,
                          env={**env, "LC_ALL": "C", "PYTHONUTF8": "0"}, cwd=tmp_path)
    err = done.stderr.decode("ascii", "backslashreplace")
    assert (done.returncode, done.stdout.split()) == (0, [b"2", b"2", b"2"]), err
    fix = ("cannot be used as a path in this locale: Python's file names are ascii here "
           "(LC_ALL/LC_CTYPE/LANG = 'C', UTF-8 mode off), which cannot hold this name; set "
           "PYTHONUTF8=1 or a UTF-8 locale (e.g. LC_ALL=C.UTF-8)")
    assert err.splitlines() == [
        f"homodyne: error: {data_cfg}: experimental_data.file_path: {tmp_path}/n\\xf6.h5 {fix}",
        f"homodyne: error: output folder {tmp_path}/out\\xfc {fix}",
        f"homodyne: error: --data-file: n\\udcc3\\udcb6.h5 {fix}"]


def test_a_power_law_at_the_logarithmic_edge_is_labelled_by_the_point_reported(tmp_path):
    """Was (probe12 W3): a static fit of data with alpha = 0 (J constant: D0 and D_offset
    one rate) reported D0 = 110104 and D_offset = -100000 on its bound, labelled
    'logarithmic edge, pushed there by the bounds: D0 >= 0.001 binds ... (D0 = -14.95...)',
    which describes the internal-coordinate fit's end, not the point reported. The label
    now says which is which, and names the bound the reported point lies on."""
    from homodyne.cli import main
    from homodyne.data.synthetic import generate_synthetic
    from homodyne.model import ModelSpec

    spec = ModelSpec(mode="static", n_frames=120, phi_deg=(0.0, 60.0))
    generate_synthetic(tmp_path / "z.h5", spec, spec.pack(0.3, 1.0, [1e4, 0.0, 0.0]),
                       noise_sigma=0.01, seed=4)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({
        "analysis_mode": "static", "experimental_data": {"file_path": str(tmp_path / "z.h5")},
        "initial_parameters": {"values": [8000.0, -0.4, 80.0]},
        "parameter_space": {"bounds": [{"name": "alpha", "min": -2.0, "max": 0.5}]},
        "output": {"directory": str(tmp_path / "out"), "plots": False}}))
    assert main(["--config", str(cfg), "--quiet"]) == 0
    p = json.loads((tmp_path / "out" / "parameters.json").read_text())
    label, at = p["power_law_optimum"]["alpha"], p["parameters_by_name"]
    assert p["status"] == "undetermined" and p["at_bounds"] == ["D_offset"]
    assert label.startswith("logarithmic edge, pushed there by the bounds (the "
                            "internal-coordinate fit: D0 >= ")
    assert label.endswith("); the reported point lies along the edge, where D0 and D_offset "
                          f"part with J(t) unchanged, on the bound D_offset = "
                          f"{at['D_offset']['value']:.6g}")
