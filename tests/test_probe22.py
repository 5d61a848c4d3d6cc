"""probe22: a fresh probing round (issue 12) over the Python API as the guide shows it,
the CLI's other options and the config keys the guide names; each test fails on main
36bbb56."""

import io

import numpy as np
import pytest


def test_the_progress_status_line_gives_the_best_loss_when_the_data_hold_nan_points():
    """Data with NaN points (skipped): the points bar counted only the fitted points, so
    it never reached its total and 'Best loss: inf' stood beside a finite average for the
    whole fit. A pass ends with its last batch."""
    from homodyne.optimization.progress import ProgressReporter

    out = io.StringIO()
    bar = ProgressReporter(enabled=True, force=True, file=out)
    bar.new_pass("full", 1, n_points=10, n_batches=2)
    bar.update(points=4, batches=1, failed=0, done=1, cost=0.4)  # one NaN point left out
    bar.update(points=5, batches=1, failed=0, done=2, cost=0.5)
    assert bar.best == pytest.approx(0.1)
    assert bar.points.n == bar.points.total == 10
    assert "Best loss: 0.1" in bar.status.desc
    bar.new_pass("full", 2, n_points=10, n_batches=2, start_batch=1)  # resumed at batch 1
    bar.update(points=5, batches=1, failed=0, done=3, cost=0.05)
    assert bar.best == pytest.approx(0.1)  # a part of a pass is no pass's loss
    bar.close()


def test_max_batch_size_below_the_usual_minimum_is_the_batch_size_used():
    """performance.max_batch_size: 10 (or the guide's max_batch_size=) was validated and
    then raised to the 1,000-point minimum without a word: the cap the user set did
    nothing. It is honoured now; an initial_batch_size above it and a negative n_points
    are refused as the wrapper refuses them."""
    from helpers import make_spec

    from homodyne.optimization.nlsq_wrapper import NLSQWrapper
    from homodyne.optimization.strategy import DatasetSizeStrategy

    build = DatasetSizeStrategy(memory_limit_gb=4.0).build_streaming_config
    assert build(n_points=9_900, n_parameters=5, max_batch_size=10)["batch_size"] == 10
    assert build(n_points=9_900, n_parameters=5, max_batch_size=600,
                 adaptive_batching=True)["batch_size"] == 600
    spec = make_spec("static", n_frames=30, n_phi=2)
    plan = NLSQWrapper(max_batch_size=50, memory_limit_gb=4.0).plan_two_time(
        None, spec, strategy="streaming", y=np.ones(spec.n_points))
    assert plan.batch_size == 50
    with pytest.raises(ValueError, match=r"initial_batch_size \(5000\) is larger than "
                                         r"max_batch_size \(1000\)"):
        build(n_points=10**8, n_parameters=9, adaptive_batching=True,
              initial_batch_size=5000, max_batch_size=1000)
    with pytest.raises(ValueError, match="n_points must be a number of points >= 0, got -5"):
        build(n_points=-5, n_parameters=9)


def test_a_home_folder_tilde_in_the_output_and_checkpoint_folders_is_the_home_folder(
        tmp_path, monkeypatch):
    """experimental_data.file_path: ~/data.h5 read the home folder's file, but
    output.directory: ~/out (or --output-dir=~/out) made a folder named '~' in the working
    folder, and the run said 'results in ~/out'."""
    from homodyne.config import validate_config

    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = validate_config({"initial_parameters": {"parameter_names": ["D0", "alpha", "D_offset"],
                                                  "values": [1e3, -1.2, 0.0]},
                           "output": {"directory": "~/out"},
                           "optimization": {"streaming": {"checkpoint_dir": "~/ck"}}},
                          require_data=False)
    assert cfg.output["directory"] == str(tmp_path / "out")
    assert cfg.streaming["checkpoint_dir"] == str(tmp_path / "ck")


@pytest.mark.parametrize("kw, message", [
    ({"min_success_rate": "0.5"}, "min_success_rate must lie in [0, 1], got '0.5'"),
    ({"max_retries_per_batch": 2.5}, "max_retries_per_batch must be a whole number >= 0, "
                                     "got 2.5"),
])
def test_a_wrapper_setting_that_is_no_usable_number_is_refused_when_given(kw, message):
    """NLSQWrapper(min_success_rate='0.5') was accepted and the fit then died in its first
    pass with "TypeError: '<' not supported between instances of 'float' and 'str'";
    max_retries_per_batch=2.5 was taken as 2 without a word."""
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    with pytest.raises(ValueError) as err:
        NLSQWrapper(**kw)
    assert str(err.value) == message
    NLSQWrapper(min_success_rate=np.float32(0.9), max_retries_per_batch=np.int64(1))


def test_parameter_names_as_a_numpy_array_and_bounds_of_a_wrong_shape():
    """parameter_names=np.array([...]) failed with NumPy's 'The truth value of an array
    with more than one element is ambiguous'; bounds of shape (1, 3) were refused with
    'one value per parameter (3), got 3 lower and 3 upper', a contradiction without
    the shapes."""
    from homodyne.jaxconf import jnp
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    x = np.linspace(0.0, 5.0, 200)
    y = 2.0 * np.exp(-1.3 * x) + 0.5 + np.random.default_rng(0).normal(0.0, 0.01, x.size)

    def model(x, a, k, c):
        return a * jnp.exp(-k * x) + c

    box = ([0.0, 0.0, -1.0], [10.0, 10.0, 1.0])
    r = NLSQWrapper().fit(model, x, y, [1.0, 1.0, 0.5], box,
                          parameter_names=np.array(["a", "k", "c"]), fixed=["c"])
    assert r.parameter_names == ("a", "k", "c")
    assert r.parameters[2] == 0.5 and list(r.fixed) == ["c"]
    assert abs(r.parameters[1] - 1.3) < 5 * r.uncertainties[1]
    with pytest.raises(ValueError, match=r"got 3 lower and 3 upper of shapes \(1, 3\) and "
                                         r"\(1, 3\) \(give one axis\)"):
        NLSQWrapper().fit(model, x, y, [1.0, 1.0, 0.0], (np.array([box[0]]), np.array([box[1]])))


def test_a_dt_argument_given_as_text_is_named_not_blamed_on_the_file(tmp_path):
    """source.model_spec(dt='0.1') said 's.h5: 0.1; fix the file or set 'dt' in the
    config': the file was fine, the argument was text."""
    from helpers import small_two_time_file

    from homodyne import open_two_time

    path = small_two_time_file(tmp_path / "s.h5", n_frames=12, n_phi=1)
    with open_two_time(path) as src:
        with pytest.raises(ValueError) as err:
            src.model_spec(dt="0.1")
        assert str(err.value) == ("dt must be a number of seconds per frame (None: the file's "
                                  "frame time), got '0.1'")
        assert src.model_spec(dt=np.float32(0.2)).dt == pytest.approx(0.2)


@pytest.mark.parametrize("kw, message", [
    ({"checkpoint_dir": None}, "checkpoint_dir must be a folder name (a str or path), got None"),
    ({"checkpoint_frequency": 2.5}, "checkpoint_frequency must be a whole number >= 1, got 2.5"),
    ({"keep_last_n": 1.5}, "keep_last_n must be a whole number >= 1, got 1.5"),
])
def test_the_guides_checkpoint_manager_refuses_unusable_values_by_name(tmp_path, kw, message):
    """CheckpointManager(None) raised os.fspath's 'expected str, bytes or os.PathLike
    object, not NoneType'; checkpoint_frequency=2.5 was taken as 2 without a word (the
    same key in checkpoint_config is refused)."""
    from homodyne.optimization.checkpoint_manager import CheckpointManager

    with pytest.raises(ValueError) as err:
        CheckpointManager(**{"checkpoint_dir": tmp_path, **kw})
    assert str(err.value) == message
    assert CheckpointManager(tmp_path, checkpoint_frequency=np.int64(5)).checkpoint_frequency == 5


def test_data_that_are_all_nan_are_refused_before_the_fit_as_with_sigma():
    """ydata all NaN without sigma ended in the first pass with NLSQConvergenceError 'only
    0.0% of batches succeeded ... Check the data for NaN/Inf regions and p0'; with sigma
    the same data were refused up front ('no point is left to fit')."""
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    x = np.linspace(0.0, 1.0, 50)
    with pytest.raises(ValueError, match=r"^no point is left to fit: every value of ydata \(50\) "
                                         r"is NaN or infinite"):
        NLSQWrapper().fit(lambda x, a: a * x, x, np.full(50, np.nan), [1.0])
