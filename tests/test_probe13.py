"""Issue 12, a fresh probing round (probe13) over main a417fd7: each test fails there."""

import json

import numpy as np
import pytest


@pytest.mark.parametrize("listed", ['[["fit.h5"]]', '[{"a": 1}]', "[1, 2]",
                                    "[" * 50_000 + "]" * 50_000])
def test_an_edited_result_list_in_the_marker_means_every_result_name(tmp_path, listed):
    """Was: parameters.json whose result_files held lists, objects or numbers (or was nested
    50,000 deep) -> TypeError 'unhashable type' / RecursionError from previous_set_files
    while an --overwrite run committed its results: a traceback, exit 1."""
    from homodyne.output import SET_FILES, previous_set_files

    (tmp_path / "fit.h5").write_bytes(b"x")
    (tmp_path / "parameters.json").write_text('{"result_files": ' + listed + "}")
    assert previous_set_files(tmp_path) == SET_FILES


@pytest.mark.parametrize("text, message", [
    (None, "nested too deeply"),  # deeper than Python's recursion limit, 1,000 as in the CLI
    # (mypy, run in-process by the suite, raises it to 16,384: reading that deep takes 17 s)
    ("initial_parameters: {values: [" + "9" * 400 + ", -0.5, 100.0]}\n",
     r"initial_parameters.values\[0\]: must be a finite number, got an integer of 400 digits"),
])
def test_a_config_nested_too_deeply_or_with_a_huge_integer_is_a_config_error(tmp_path, text,
                                                                              message):
    """Was: RecursionError from the YAML composer, OverflowError ('int too large to convert
    to float') from the number check: tracebacks, exit 1."""
    import sys

    from homodyne.config import ConfigError, load_config

    text = text or "x: " + "[" * 1000 + "]" * 1000 + "\n"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("analysis_mode: static\n" + text)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        with pytest.raises(ConfigError, match=message):
            load_config(cfg, require_data=False)
    finally:
        sys.setrecursionlimit(limit)


def test_a_callback_stop_in_the_first_pass_is_not_reported_as_too_few_points():
    """Was: a callback returning False at the first batch gave status 'too_few_points' and
    the summary 'NOT DETERMINED: fewer points than parameters' for 3,000 points: no pass had
    finished, so n_points was 0. It is a stop: NOT converged, 'stopped by callback'."""
    import jax.numpy as jnp
    import numpy as np

    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    x = np.linspace(0.01, 5, 3000)
    y = 0.1 + np.exp(-2.0 * x)
    r = NLSQWrapper(callback=lambda *a: False).fit(
        lambda x, a, b, c: c + a * jnp.exp(-b * x), x, y, [0.5, 1.0, 0.1],
        ([0, 0, -1], [10, 10, 1]), strategy="streaming")
    assert r.status == "not_converged"
    assert r.summary().splitlines()[0] == "NOT converged: stopped by callback at batch 0"


@pytest.mark.parametrize("q", [0.0, -0.0054])
def test_a_two_time_file_whose_q_map_holds_zero_or_negative_q_is_a_data_error(tmp_path, q):
    """Was: q = 0 in /xpcs/qmap/dynamic_v_list_dim0 (an int 0, a placeholder) passed the
    file checks; ModelSpec then raised 'q, dt and gap_h must be finite numbers > 0': a
    traceback from a file we read, exit 1."""
    import h5py
    from helpers import small_two_time_file

    from homodyne.data.errors import DataFileError
    from homodyne.data.twotime import open_two_time

    path = small_two_time_file(tmp_path / "d.h5")
    with h5py.File(path, "a") as h5:
        h5["xpcs/qmap/dynamic_v_list_dim0"][...] = q
    with pytest.raises(DataFileError, match=r"dynamic_v_list_dim0 holds q values <= 0"):
        open_two_time(path)


def _bin_folder(root, file_id, q_index):
    """A bin folder as fit_job leaves it (parameters.json with the pipeline's data_file/q)."""
    from homodyne.optimization.result import FitResult
    from homodyne.output import write_json
    from homodyne.production.multiq import JOB_FILE

    folder = root / file_id / f"q{q_index:02d}"
    folder.mkdir(parents=True)
    q = 0.001 * (q_index + 1)
    r = FitResult(parameter_names=("contrast", "offset", "D0", "alpha", "D_offset"),
                  parameters=np.arange(1.0, 6.0) * (q_index + 1), uncertainties=np.full(5, 0.1),
                  covariance=np.eye(5) * 0.01, cost=1.0, n_points=500,
                  reduced_chi_squared=1.0, converged=True, stop_reason="converged",
                  strategy="STANDARD", iterations=4, passes=5)
    write_json(folder / "parameters.json",
               {"data_file": f"{file_id}.h5", "q": q, **r.as_dict()})
    write_json(folder / JOB_FILE, {"file": f"{file_id}.h5", "file_id": file_id,
                                   "q_index": q_index, "q": q, "age_s": None})
    return folder


@pytest.mark.parametrize("copied", ["folder", "parameters.json"])
def test_gather_refuses_a_bin_folder_or_result_copied_from_another_bin(tmp_path, copied):
    """Was: a bin folder copied over another (cp -r a/q00 a/q02) gave summary.csv two rows
    of bin a/q00 and none of a/q02; another bin's parameters.json copied into a folder gave
    that bin's parameters under this bin's file and q: both without a word."""
    import shutil

    from homodyne.production.multiq import ResultFileError, gather

    folders = [_bin_folder(tmp_path, "a", k) for k in range(3)]
    assert len(gather(folders, tmp_path).read_text().splitlines()) == 4  # as written: fine
    if copied == "folder":
        shutil.rmtree(folders[2])
        shutil.copytree(folders[0], folders[2])
        problem = f"{folders[2] / 'job.json'}: names the bin a/q00, not this folder's (a/q02)"
    else:
        shutil.copy(folders[0] / "parameters.json", folders[2] / "parameters.json")
        problem = (f"{folders[2] / 'parameters.json'}: a fit of a.h5 at q = 0.001, but the "
                   "folder's job.json names a.h5 at q = 0.003")
    with pytest.raises(ResultFileError) as err:
        gather(folders, tmp_path)
    assert str(err.value).startswith(problem), err.value


def test_the_rate_power_law_of_two_nearly_equal_q_has_its_true_large_uncertainty():
    """Was: two q bins 2e-7 apart (a CSV naming q = 0.005 and 0.005000001): n = 9.056e+04
    +/- 0.002 (the pseudo-inverse of a singular AᵀA dropped the variance) and numpy's
    'overflow encountered in exp' for the prefactor on the console. Two points fix the line
    exactly: var(n) = (s1² + s2²) / (ln q1 - ln q2)² with s = sigma_Gamma / Gamma."""
    import warnings

    from homodyne.onetime.fit import rate_power_law

    class Fit:
        def __init__(self, q, gamma, err):
            self.q, self._v = q, {"gamma": (gamma, err)}

        def value(self, name):
            return self._v[name][0]

        def error(self, name):
            return self._v[name][1]

    fits = [Fit(0.005, 12.513, 0.2), Fit(0.005000001, 12.742, 0.2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pl = rate_power_law(fits)
    s1, s2 = 0.2 / 12.513, 0.2 / 12.742
    expected = np.sqrt(s1**2 + s2**2) / abs(np.log(0.005) - np.log(0.005000001))
    assert pl["exponent_err"] == pytest.approx(expected, rel=1e-3)
    assert pl["exponent"] == pytest.approx(np.log(12.742 / 12.513) / np.log(1.0000002),
                                           rel=1e-6)


@pytest.mark.parametrize("key, value, must", [
    ("enable_checkpoints", "false", "True or False"),
    ("resume_from_checkpoint", "no", "True or False"),
    ("checkpoint_frequency", "10", "a whole number >= 1"),
    ("checkpoint_min_interval_s", float("nan"), "a number of seconds >= 0"),
])
def test_checkpoint_config_values_of_the_wrong_kind_are_refused_by_name(key, value, must):
    """Was: the guide's checkpoint_config dict was checked for its keys only: the text
    'false' (or 'no') is true to Python and switched checkpoints (or resuming) on; '10'
    failed inside CheckpointManager with "'<' not supported between 'str' and 'int'"."""
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    with pytest.raises(ValueError, match=rf"checkpoint_config\['{key}'\] must be {must}, "):
        NLSQWrapper(checkpoint_config={key: value})
    NLSQWrapper(checkpoint_config={"enable_checkpoints": True, "checkpoint_frequency": 10.0,
                                   "keep_last_n": 2, "checkpoint_min_interval_s": 0})


@pytest.mark.parametrize("field, value", [("q", 0.01), ("phi_deg", (0.0, 90.0)),
                                          ("n_frames", 20)])
def test_fit_two_time_refuses_a_spec_that_does_not_describe_the_source(tmp_path, field, value):
    """Was: a hand-built ModelSpec whose q differs from the file's fitted other rates without
    a word (D0 2808 instead of 9630 for q 0.01 against 0.0054), other angles likewise; other
    frames failed inside the passes ('could not broadcast input array from shape (6320,)
    into shape (2450,)')."""
    import dataclasses

    from helpers import small_two_time_file

    from homodyne.data.twotime import open_two_time
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    src = open_two_time(small_two_time_file(tmp_path / "d.h5"))
    spec = src.model_spec()
    p0 = spec.pack(0.3, 1.0, (1e4, -0.5, 100.0))
    bounds = (spec.pack(0.0, 0.5, (1.0, -2.0, -1e3)), spec.pack(1.0, 1.5, (1e5, 0.5, 1e3)))
    other = dataclasses.replace(spec, **{field: value})
    with pytest.raises(ValueError, match=rf"spec.{field} = .* but the source holds .*: the "
                                         "spec must describe the data fitted"):
        NLSQWrapper().fit_two_time(src, other, p0, bounds)


def _write_set(folder, tag, with_j_model=True):
    """A complete result set in ``folder`` as run_one_time stages it (j_model a folder)."""
    from homodyne.output import ResultSet

    results = ResultSet(folder)
    results.stage("per_q.csv").write_text(tag)
    if with_j_model:
        jm = results.stage("j_model")
        jm.mkdir()
        (jm / "parameters.json").write_text(tag)
    results.stage("parameters.json").write_text(json.dumps({"tag": tag}))
    return results


def test_a_one_time_series_j_model_folder_is_committed_with_its_set(tmp_path, monkeypatch):
    """Was: run_one_time wrote j_model/ straight into the output folder during the run, not
    through the result set: an --overwrite run stopped (SIGTERM) after the J-model fit left
    the new j_model/ beside the old parameters.json, exit 143 'results ... untouched'. Now it
    is staged and replaces the old folder when the set is committed (parameters.json last),
    and a set without one removes it; a discarded run leaves the old one."""
    from homodyne.onetime import run as onetime_run

    _write_set(tmp_path, "old").commit()
    assert json.loads((tmp_path / "parameters.json").read_text())["result_files"] == \
        ["j_model", "parameters.json", "per_q.csv"]
    staged = _write_set(tmp_path, "new")
    assert (tmp_path / "j_model" / "parameters.json").read_text() == "old"  # until committed
    staged.discard()
    assert (tmp_path / "j_model" / "parameters.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []
    _write_set(tmp_path, "new").commit()
    assert (tmp_path / "j_model" / "parameters.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []
    _write_set(tmp_path, "plain", with_j_model=False).commit()
    assert not (tmp_path / "j_model").exists()

    seen = []  # run_one_time hands fit_j_model the staged folder, not <out>/j_model
    monkeypatch.setattr(onetime_run, "fit_j_model", lambda cfg, folder: seen.append(folder))
    monkeypatch.setattr(onetime_run, "read_one_time", lambda path: None)
    monkeypatch.setattr(onetime_run, "fit_one_time", lambda data, options: _Stop())

    class Cfg:
        experimental_data = {"file_path": "x.csv"}
        one_time = {"series": ["y.hdf"], "beta": "free", "errors": "measured",
                    "min_tau_s": None, "max_tau_s": None, "max_iterations": 10,
                    "q_range": None}

    stage = _StageRecorder(tmp_path)
    with pytest.raises(_StopHere):
        onetime_run.run_one_time(Cfg(), tmp_path, stage)
    assert seen == [stage.paths["j_model"]]


class _StopHere(Exception):
    pass


class _Stop:
    """A one-time result whose summary ends the run right after the J-model fit."""

    j_model = None

    def __setattr__(self, name, value):
        object.__setattr__(self, name, value)
        if name == "j_model":
            raise _StopHere


class _StageRecorder:
    """A stage(name) that records the paths it gives."""

    def __init__(self, folder):
        self.folder, self.paths = folder, {}

    def __call__(self, name):
        from pathlib import Path

        self.paths[name] = Path(self.folder, f".tmp-staged-{name}")
        return self.paths[name]


def test_a_stop_while_a_set_is_committed_is_acted_on_once_the_set_is_complete(tmp_path):
    """Was: commit blocked SIGINT/SIGTERM/SIGHUP in its own thread only; another thread
    (JAX's) took the signal and Python ran the handler in the main thread at once, inside the
    renames: a folder without parameters.json (the new j_model/ and plots, the old j_model/
    renamed aside) and 'results already in the output folder are untouched'. The stop now
    waits for the complete set and says so (StoppedAfterCommit names the folder)."""
    import os
    import signal
    import threading

    from homodyne import output
    from homodyne.output import StoppedAfterCommit

    _write_set(tmp_path, "old").commit()
    staged = _write_set(tmp_path, "new")
    go = threading.Event()

    def other_thread():  # a thread that does not block SIGINT receives it
        go.wait()
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)

    sender = threading.Thread(target=other_thread)
    sender.start()
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        real_replace(src, dst)
        if len(calls) == 1:
            go.set()
            sender.join()

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        output.os.replace = replace
        with pytest.raises(StoppedAfterCommit) as stop:
            staged.commit()
    finally:
        output.os.replace = real_replace
        signal.signal(signal.SIGINT, previous)
    assert stop.value.folder == tmp_path
    assert json.loads((tmp_path / "parameters.json").read_text())["tag"] == "new"
    assert (tmp_path / "j_model" / "parameters.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_the_cli_says_a_set_committed_before_the_stop_is_kept(tmp_path, monkeypatch, capsys):
    """The stop's line named the old results as untouched when the new set was complete."""
    import signal

    from helpers import small_two_time_file

    from homodyne import pipeline
    from homodyne.cli import main
    from homodyne.output import StoppedAfterCommit

    data = small_two_time_file(tmp_path / "d.h5")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"experimental_data": {"file_path": str(data)},
                               "initial_parameters": {"values": [1e4, -0.5, 100.0]},
                               "output": {"directory": str(tmp_path / "out")}}))

    def stopped(*a, **k):
        raise StoppedAfterCommit(tmp_path / "out")

    monkeypatch.setattr(pipeline, "run_from_config", stopped)
    defaults = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert main(["--config", str(cfg)]) == 130
    finally:
        for s, h in defaults.items():
            signal.signal(s, h)
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"homodyne: interrupted (Ctrl-C); the results in {tmp_path / 'out'} were complete "
        "and are kept")
