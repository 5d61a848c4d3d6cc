"""probe25: a fresh probing round (issue 12) over the long-running paths; each test
fails on main 5108c16."""

import os

import numpy as np
from helpers import sigterm_at


def _curve_case():
    """20,000 points of a * exp(-b x) + c with noise 0.01, the streaming tier in batches
    of 2,000: (x, y, p0, bounds)."""
    x = np.linspace(0, 10, 20_000)
    y = 2.0 * np.exp(-0.3 * x) + 0.5 + np.random.default_rng(0).normal(0, 0.01, x.size)
    return x, y, [1.0, 0.1, 0.0], ([0, 0, -5], [10, 5, 5])


def _decay(x, a, b, c):
    import jax.numpy as jnp

    return a * jnp.exp(-b * x) + c


def _stretched(x, a, b, c):
    import jax.numpy as jnp

    return a * jnp.exp(-b * x**1.01) + c


def _streaming(folder=None, callback=None):
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    ck = None if folder is None else {
        "enable_checkpoints": True, "checkpoint_dir": str(folder), "checkpoint_frequency": 1,
        "checkpoint_min_interval_s": 0}
    return NLSQWrapper(checkpoint_config=ck, callback=callback, strategy_override="streaming",
                       batch_size=2000)


def test_a_checkpoint_of_another_model_function_is_not_resumed(tmp_path):
    """A finished fit of one model function, then a fit of another on the same data and
    start in the same checkpoint_dir: the second 'resumed' from the first's final
    checkpoint and returned its parameters and cost (a = 1.99999, b = 0.30004, cost 10.02,
    where its own fit ends at b = 0.29715, cost 10.13). The model's code is in the
    fingerprint now; the same model still resumes bit for bit."""
    x, y, p0, bounds = _curve_case()
    alone = _streaming().fit(_stretched, x, y, p0=p0, bounds=bounds)
    first = _streaming(tmp_path).fit(_decay, x, y, p0=p0, bounds=bounds)
    other = _streaming(tmp_path).fit(_stretched, x, y, p0=p0, bounds=bounds)
    assert other.streaming_diagnostics["resumed_from_batch"] is None
    np.testing.assert_array_equal(other.parameters, alone.parameters)
    assert other.cost == alone.cost != first.cost

    cut = sigterm_at(25, lambda cb: _streaming(tmp_path / "b", cb).fit(
        _decay, x, y, p0=p0, bounds=bounds))
    assert cut.interrupted_by == "SIGTERM"
    resumed = _streaming(tmp_path / "b").fit(_decay, x, y, p0=p0, bounds=bounds)
    assert resumed.streaming_diagnostics["resumed_from_batch"] is not None
    np.testing.assert_array_equal(resumed.parameters, first.parameters)


def test_a_wrappers_second_fit_or_resume_perturbs_as_its_first(tmp_path):
    """The recovery restart's random stream lived on in the wrapper: its second fit of the
    same data ended elsewhere (D0 8016.5 vs 7785.7), and a fit stopped after its restart
    and resumed with the same wrapper said 'pass 27 does not replay identically' and ended
    away from the uninterrupted run. Each fit now starts the stream afresh."""
    from test_probe23 import _overflowing_case

    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    spec, y, p0, bounds = _overflowing_case()
    whole = NLSQWrapper().fit_two_time(None, spec, p0, bounds, y=y)
    assert whole.recovery_actions[0]["batch"] == 27
    again = NLSQWrapper()
    again.fit_two_time(None, spec, p0, bounds, y=y)
    np.testing.assert_array_equal(again.fit_two_time(None, spec, p0, bounds, y=y).parameters,
                                  whole.parameters)

    ck = {"enable_checkpoints": True, "checkpoint_dir": str(tmp_path), "checkpoint_frequency": 1,
          "checkpoint_min_interval_s": 0}
    w = NLSQWrapper(checkpoint_config=ck)
    w.callback = None
    cut = sigterm_at(30, lambda cb: (setattr(w, "callback", cb), w.fit_two_time(
        None, spec, p0, bounds, y=y))[1])
    assert cut.interrupted_by == "SIGTERM"
    w.callback = None
    resumed = w.fit_two_time(None, spec, p0, bounds, y=y)
    np.testing.assert_array_equal(resumed.parameters, whole.parameters)
    assert resumed.passes == whole.passes


def _multi_q_with_checkpoints(tmp_path):
    """helpers' 3-bin multi-q config (20 frames), streaming in batches of 50 with a
    checkpoint at every batch in tmp_path/ck."""
    import yaml
    from helpers import multi_q_cli_config

    cfg = multi_q_cli_config(tmp_path)
    raw = yaml.safe_load(cfg.read_text())
    raw["optimization"] = {"streaming": {
        "enable_checkpoints": True, "checkpoint_dir": str(tmp_path / "ck"),
        "checkpoint_frequency": 1, "checkpoint_min_interval_s": 0.0}}
    raw["performance"].update(strategy_override="streaming", batch_size=50)
    cfg.write_text(yaml.safe_dump(raw))
    return cfg


def test_a_multi_q_run_stopped_in_a_later_bin_says_the_rerun_that_resumes(
        tmp_path, capsys, monkeypatch):
    """SIGTERM in the second bin of a multi-q run with checkpoints said 'run the same
    command again to resume; bins fitted before the stop are kept: d/q00': the same
    command was refused (exit 2, d/q00 holds results). The line now says --overwrite, and
    that rerun resumes the stopped bin."""
    import os
    import signal

    from helpers import stop_signals_at_default

    import homodyne.pipeline as pipeline
    from homodyne.cli import main

    cfg = _multi_q_with_checkpoints(tmp_path)
    made, real = [], pipeline.make_wrapper

    def stop_in_the_second_bin(c):
        w = real(c)
        made.append(w)
        if len(made) == 2:
            def stop(batch, *_, sent=[]):  # noqa: B006
                if batch >= 3 and not sent:
                    sent.append(batch)
                    os.kill(os.getpid(), signal.SIGTERM)
            w.callback = stop
        return w

    monkeypatch.setattr(pipeline, "make_wrapper", stop_in_the_second_bin)
    with stop_signals_at_default():
        assert main(["--config", str(cfg), "--quiet"]) == 143
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "run the same command with --overwrite to resume; bins fitted before the stop " \
           f"are kept: {os.path.join('d', 'q00')};" in last, last
    monkeypatch.setattr(pipeline, "make_wrapper", real)
    assert main(["--config", str(cfg), "--quiet"]) == 2  # the same command: refused
    assert main(["--config", str(cfg), "--overwrite"]) == 0
    assert "resumes from batch" in capsys.readouterr().err


def test_a_multi_q_run_into_a_folder_with_a_later_bins_results_fits_nothing(tmp_path, capsys):
    """A run of every bin without --overwrite where only the last bin held results fitted
    and wrote d/q00 and d/q01, then stopped at d/q02 with exit 2 ('already holds
    results'), its line silent about the bins it had replaced. It is refused before any
    fit now."""
    from helpers import multi_q_cli_config

    from homodyne.cli import main

    cfg = multi_q_cli_config(tmp_path)
    assert main(["--config", str(cfg), "--q", "0.009", "--quiet"]) == 0
    held = (tmp_path / "out" / "d" / "q02" / "parameters.json").read_bytes()
    capsys.readouterr()
    assert main(["--config", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == (f"homodyne: error: {tmp_path / 'out' / 'd' / 'q02'} already holds results "
                   "(1 of 3 bins; nothing was fitted); choose another --output-dir or pass "
                   "--overwrite (output.overwrite: true) to replace them\n")
    assert sorted(p.name for p in (tmp_path / "out" / "d").iterdir()) == ["q02"]
    assert (tmp_path / "out" / "d" / "q02" / "parameters.json").read_bytes() == held


def test_a_one_time_run_past_the_file_size_limit_is_one_line(tmp_path):
    """A one-time run (its aging J-model too) whose figures met the shell's file-size
    limit (ulimit -f 30) ended in a PIL traceback, exit 1 ('OSError: [Errno 27] File too
    large'); the two-time fit's line and exit 2 now, the previous set untouched."""
    import shlex
    import subprocess
    import sys

    import yaml
    from helpers import HANGUP_DEFAULT, REPO, aging_series

    from homodyne.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "analysis_mode": "one_time",
        "experimental_data": {"file_path": str(aging_series(tmp_path, D0=1e3, alpha=-0.5,
                                                            Doff=10.0, offset=1.0, n=1)[0])},
        "output": {"directory": str(tmp_path / "out")}}))
    assert main(["--config", str(cfg), "--quiet"]) == 0
    before = {p: p.read_bytes() for p in (tmp_path / "out").iterdir() if p.is_file()
              and not p.name.startswith(".")}
    child = (HANGUP_DEFAULT
             + "import sys\nfrom homodyne.cli import main\nsys.exit(main(sys.argv[1:]))")
    argv = [sys.executable, "-c", child, "--config", str(cfg), "--quiet", "--overwrite"]
    run = subprocess.run(f"ulimit -f 30; exec {shlex.join(argv)}", shell=True,
                         executable="/bin/bash", cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.strip().splitlines()[-1] == (
        f"homodyne: error: could not write the results to {tmp_path / 'out'} (File too large); "
        "raise the file-size limit of this shell (ulimit -f, now 30,720 bytes); the previous "
        "results are untouched")
    assert {p: p.read_bytes() for p in before} == before


def test_a_stop_while_screening_small_data_does_not_call_it_a_subsample(monkeypatch):
    """Restarts on data too small for a subsample screen the starts on all the points; a
    SIGTERM there said 'on a 239,400-point subsample, not on the full data' of 239,400
    points (the CLI, restarts 4, streaming)."""
    from helpers import lower_corner_case

    import homodyne.optimization.restarts as restarts
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper
    from homodyne.optimization.passes import FitMonitor

    spec, y, p0, bounds = lower_corner_case()

    def fit(callback):  # the screening fits' monitor calls back after each batch
        monkeypatch.setattr(restarts, "FitMonitor", lambda: FitMonitor(callback=callback))
        return NLSQWrapper(restarts=3).fit_two_time(None, spec, p0, bounds, y=y)

    cut = sigterm_at(2, fit)
    assert cut.stop_reason == (
        "interrupted by SIGTERM while screening start 1 of 3 (multi-start): the parameters "
        f"are the fit of start 1 as it stood, on the full data ({spec.n_points:,} points: "
        "too few for a subsample)")


def test_a_production_set_past_the_file_size_limit_is_one_line_exit_2(tmp_path, capsys):
    """A production fit's set (committed_set, as fit_aps_aging's rule writes it: fit_aging
    under ulimit -f 30 ended in a PIL traceback, exit 1, in the rule's log) that meets the
    file-size limit: one line naming ulimit -f, exit 2, the previous set untouched."""
    import resource

    from homodyne.cli import run_reporting_errors
    from homodyne.output import committed_set

    out = tmp_path / "aging"

    def write(size):
        with committed_set(out, ("a.bin", "parameters.json")) as results:
            results.stage("a.bin").write_bytes(b"x" * size)
            results.stage("parameters.json").write_text("{}")
        return 0

    assert run_reporting_errors("fit_aps_aging", lambda: write(10)) == 0
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (30 * 1024, hard))
    try:
        code = run_reporting_errors("fit_aps_aging", lambda: write(100_000))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("fit_aps_aging: error: could not write the results") and \
        err.endswith(": File too large; raise the file-size limit of this shell (ulimit -f, "
                     "now 30,720 bytes)\n") and err.count("\n") == 1, err
    assert (out / "a.bin").read_bytes() == b"x" * 10
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == \
        ["a.bin", "parameters.json"]


def test_the_model_identity_is_the_same_in_every_process_and_sees_an_instance(tmp_path):
    """The model's part of the fingerprint must let another process resume: a set constant
    in the model (its order follows the per-process string hash) is read sorted; a bound
    method's instance attributes are part of the model."""
    import subprocess
    import sys

    from homodyne.optimization.nlsq_wrapper import _model_identity

    script = tmp_path / "m.py"
    script.write_text(
        "from homodyne.optimization.driver import fingerprint\n"
        "from homodyne.optimization.nlsq_wrapper import _model_identity\n"
        "def model(x, a):\n"
        "    return a * x if 'mode' in {'alpha', 'beta', 'mode', 'gamma', 'delta'} else x\n"
        "print(fingerprint(_model_identity(model)))\n")
    seen = {subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout
            for seed in ("1", "2", "3")}
    assert len(seen) == 1 and len(seen.pop()) == 65

    class Scaled:
        def __init__(self, k):
            self.k = k

        def model(self, x, a):
            return a * x * self.k

    assert _model_identity(Scaled(1.0).model) != _model_identity(Scaled(2.0).model)
    assert _model_identity(Scaled(1.0).model) == _model_identity(Scaled(1.0).model)
