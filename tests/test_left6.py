"""Items a sixth probe round left open (issue 12, probe6 "Weak / left"): result files the
workflow's gather reads back (hand-edited, foreign, another model's), keys that did nothing
or silently lost to another key, a laminar summary that contradicted itself, checkpoint
folders and batch sizes accepted until they failed later, and --config given a pipe."""

import types

import numpy as np
import pytest

from homodyne.config import ConfigError, validate_config

STATIC = {"analysis_mode": "static", "initial_parameters": {"values": [8000.0, -0.4, 80.0]}}


def _result(names, at_bounds=()):
    """A FitResult as the engine builds it (only what parameters.json needs)."""
    from homodyne.optimization.result import FitResult

    k = len(names)
    return FitResult(parameter_names=tuple(names), parameters=np.arange(1.0, k + 1),
                     uncertainties=np.full(k, 0.1), covariance=np.eye(k) * 0.01, cost=1.0,
                     n_points=500, reduced_chi_squared=1.02, converged=True,
                     stop_reason="converged", strategy="STANDARD", iterations=4, passes=5,
                     at_bounds=list(at_bounds))


STATIC_NAMES = ["contrast", "offset", "D0", "alpha", "D_offset"]
LAMINAR_NAMES = [*STATIC_NAMES, "gamma_dot_t0", "beta", "gamma_dot_t_offset", "phi0"]


def _job_folder(root, q_index, names=STATIC_NAMES):
    """One bin folder as fit_job leaves it: parameters.json and job.json."""
    from homodyne.output import write_json
    from homodyne.production.multiq import JOB_FILE

    folder = root / "a" / f"q{q_index:02d}"
    folder.mkdir(parents=True)
    write_json(folder / "parameters.json", _result(names).as_dict())
    write_json(folder / JOB_FILE, {"file": "a.h5", "file_id": "a", "q_index": q_index,
                                   "q": 0.001 * (q_index + 1), "age_s": None})
    return folder


@pytest.mark.parametrize("name, text, problem", [
    ("parameters.json", '{"n_points": 5', "unreadable (JSONDecodeError"),
    ("parameters.json", "[1, 2]", "holds a JSON list, not an object"),
    ("parameters.json", b"\xff\xfe{}", "unreadable (UnicodeDecodeError"),
    ("job.json", '{"file_id": "a", "q": 0.001, "age_s": null}', "has no 'q_index'"),
    ("job.json", '{"file_id": "a", "q_index": "2", "q": 0.001, "age_s": null}',
     "'q_index' is '2', not int"),
])
def test_gather_names_a_result_file_that_is_not_a_result_of_the_run(tmp_path, name, text,
                                                                    problem):
    """Was: a hand-edited parameters.json / job.json in a bin folder -> a raw
    JSONDecodeError / KeyError / TypeError traceback from summary_row in the rule log."""
    from homodyne.production.multiq import ResultFileError, gather

    good, bad = _job_folder(tmp_path, 0), _job_folder(tmp_path, 1)
    target = bad / name
    target.unlink()
    (target.write_bytes if isinstance(text, bytes) else target.write_text)(text)
    with pytest.raises(ResultFileError) as err:
        gather([good, bad], tmp_path / "run")
    message = str(err.value)
    assert message.startswith(f"{target}: {problem}") and "\n" not in message, message
    assert not (tmp_path / "run" / "summary.csv").exists()


def test_gather_refuses_another_models_result_instead_of_mixing_it_in(tmp_path):
    """Was: a laminar run's parameters.json dropped into a static run's bin went into
    summary.csv without a word (columns no other row has, blanks elsewhere)."""
    from homodyne.production.multiq import ResultFileError, gather

    folders = [_job_folder(tmp_path, 0), _job_folder(tmp_path, 1),
               _job_folder(tmp_path, 2, LAMINAR_NAMES)]
    with pytest.raises(ResultFileError) as err:
        gather(folders, tmp_path / "run")
    assert str(err.value).startswith(
        f"{folders[2] / 'parameters.json'} holds parameters {LAMINAR_NAMES}, the other "
        f"results of this run {STATIC_NAMES}: results of different models cannot share one "
        "summary")
    assert not (tmp_path / "run" / "summary.csv").exists()
    table = gather(folders[:2], tmp_path / "run").read_text().splitlines()  # real files: fine
    assert len(table) == 3 and table[0].startswith("file,age_s,q_index,q,n_points,contrast,")


def test_the_workflows_gather_rule_ends_with_the_one_line(tmp_path):
    """The rule script (rule gather_q_fits) exits with the error line, no traceback."""
    import runpy

    from helpers import REPO, gather_rule_job

    bad = _job_folder(tmp_path, 0)
    (bad / "job.json").write_text("{")
    job = gather_rule_job(tmp_path, [bad], tmp_path / "s.csv")
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(REPO / "workflow" / "scripts" / "gather_q_fits.py"),
                       init_globals={"snakemake": job})
    assert str(stop.value.code).startswith(f"gather: error: {bad / 'job.json'}: unreadable")


def test_optimization_method_lm_is_refused_not_ignored():
    """Was: ``optimization.method: lm`` validated and never passed to the engine (one
    engine: every fit ran the same bounded Levenberg-Marquardt)."""
    assert validate_config({**STATIC, "optimization": {"method": "trf"}},
                           require_data=False).optimization["method"] == "trf"
    with pytest.raises(ConfigError) as err:
        validate_config({**STATIC, "optimization": {"method": "lm"}}, require_data=False)
    assert str(err.value) == (
        "optimization.method: 'lm' is not a separate method here: homodyne has one engine, a "
        "bounded Levenberg-Marquardt trust region (the guide's 'trf'), which every fit uses; "
        "write trf or remove the key")


@pytest.mark.parametrize("section, keys, message", [
    ("optimization", {"coarse": False, "coarse_points": 5000},
     "optimization.coarse_points: is set but optimization.coarse is false: there is no coarse "
     "stage for it to size; remove one of the two keys"),
    ("streaming", {"enable_fault_tolerance": False, "max_retries_per_batch": 5},
     "optimization.streaming.max_retries_per_batch: is set but "
     "optimization.streaming.enable_fault_tolerance is false: without fault tolerance a failed "
     "batch is not retried; remove one of the two keys"),
    ("both", ({"fast_mode": True}, {"validate_numerics": True}),
     "optimization.streaming.validate_numerics: is set but performance.fast_mode is true: fast "
     "mode turns the NaN/Inf validation off; remove one of the two keys"),
    ("performance", {"batch_size": 200_000, "max_batch_size": 1000},
     "performance.batch_size: 200,000 exceeds performance.max_batch_size (1,000); lower "
     "batch_size or raise max_batch_size"),
])
def test_two_keys_where_the_second_would_silently_lose_are_refused(section, keys, message):
    """Was: each combination accepted, the second key silently without effect."""
    raw = dict(STATIC)
    if section == "optimization":
        raw["optimization"] = keys
    elif section == "streaming":
        raw["optimization"] = {"streaming": keys}
    elif section == "both":
        raw["performance"], raw["optimization"] = keys[0], {"streaming": keys[1]}
    else:
        raw["performance"] = keys
    with pytest.raises(ConfigError) as err:
        validate_config(raw, require_data=False)
    assert str(err.value) == message
    # each key alone (or with the other at its default) is still fine
    validate_config({**STATIC, "performance": {"fast_mode": True},
                     "optimization": {"coarse": False,
                                      "streaming": {"enable_fault_tolerance": False,
                                                    "validate_numerics": False}}},
                    require_data=False)


@pytest.mark.parametrize("written, used", [({"max_iterations": 5}, 5), ({}, 500)])
def test_one_time_max_iterations_caps_the_aging_fit_as_written(monkeypatch, tmp_path,
                                                               written, used):
    """Was: ``one_time.max_iterations: 5`` silently raised to 500 for the aging J-model fit
    (max(value, 500)); unset, that fit keeps its 500."""
    import homodyne.production.aging as aging
    from homodyne.onetime.run import fit_j_model

    seen = {}

    def fake_fit_aging(paths, folder, **kw):
        seen.update(kw)
        raise RuntimeError("stop here")

    monkeypatch.setattr(aging, "fit_aging", fake_fit_aging)
    ot = {"min_tau_s": None, "max_tau_s": None, "errors": "scatter", "max_iterations":
          written.get("max_iterations", 200), "series": ["b.h5"], "ages_s": None,
          "nonnegative_J": False}
    cfg = types.SimpleNamespace(one_time=ot, experimental_data={"file_path": "a.h5"},
                                raw={"one_time": written}, output={"plots": False})
    with pytest.raises(RuntimeError, match="stop here"):
        fit_j_model(cfg, tmp_path)
    assert seen["max_iterations"] == used


def test_a_power_law_whose_exponent_ends_on_its_bound_is_not_called_interior():
    """Was: "beta = -2 +/- 3.33 (at bound)" and two lines below "power law of beta:
    interior" (the label of the internal-coordinate optimum, before the finish in user
    coordinates moved beta onto its bound)."""
    from homodyne.optimization.driver import _report_edges

    class Coords:  # the power laws of a laminar fit: (amplitude, exponent, offset)
        triples = [(2, 3, 4), (5, 6, 7)]

        @staticmethod
        def at_log_edge(exponent):
            return False

    result = _result(LAMINAR_NAMES, at_bounds=["beta"])
    result = _report_edges(result, Coords(), {3: "interior", 6: "interior"})
    assert result.power_law_optimum["alpha"] == "interior"
    assert result.power_law_optimum["beta"] == (
        "on the bounds: beta (the internal-coordinate optimum lay inside them; the finish in "
        "user coordinates ended on the bound)")
    lines = result.summary().splitlines()
    assert any(line.strip().startswith("beta =") and "(at bound)" in line for line in lines)
    assert "  power law of beta: on the bounds: beta (" in "\n".join(lines)


@pytest.mark.parametrize("make, message", [
    (lambda d: "", "checkpoint_dir is empty; give the folder for the checkpoints"),
    (lambda d: "  ", "checkpoint_dir is empty; give the folder for the checkpoints"),
    (lambda d: str(d / "a\0b"), "checkpoint_dir '"),
    (lambda d: (d / "f").write_text("x") and d / "f", "checkpoint_dir "),
])
def test_a_checkpoint_folder_that_cannot_be_one_is_refused_at_construction(tmp_path, make,
                                                                         message):
    """Was: CheckpointManager("") / a regular file / a NUL in the name accepted, failing
    only at the first save of a long fit."""
    from homodyne.optimization.checkpoint_manager import CheckpointManager

    with pytest.raises(ValueError) as err:
        CheckpointManager(make(tmp_path))
    assert str(err.value).startswith(message)
    assert any(w in str(err.value) for w in ("empty", "NUL", "is a file, not a folder"))
    CheckpointManager(tmp_path / "new")  # a folder still to be made is fine


def test_a_missing_checkpoint_is_called_missing_not_corrupt(tmp_path):
    from homodyne.optimization.checkpoint_manager import CheckpointManager
    from homodyne.optimization.exceptions import NLSQCheckpointError

    path = tmp_path / "homodyne_state_batch_0003.h5"
    with pytest.raises(NLSQCheckpointError) as err:
        CheckpointManager(tmp_path).load_checkpoint(path)
    assert str(err.value).startswith(f"checkpoint {path} does not exist")
    assert "corrupt" not in str(err.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"initial_batch_size": -1}, "initial_batch_size must be a whole number >= 1, got -1"),
    ({"initial_batch_size": 0}, "initial_batch_size must be a whole number >= 1, got 0"),
    ({"min_batch_size": 0}, "min_batch_size must be a whole number >= 1, got 0"),
])
def test_build_streaming_config_refuses_batch_sizes_below_one(kwargs, message):
    """Was: build_streaming_config(initial_batch_size=-1, adaptive) returned batch_size -1."""
    from homodyne.optimization.strategy import DatasetSizeStrategy

    with pytest.raises(ValueError) as err:
        DatasetSizeStrategy().build_streaming_config(10_000, 5, memory_limit_gb=16,
                                                     adaptive_batching=True, **kwargs)
    assert str(err.value) == message


@pytest.mark.parametrize("path", ["/dev/null", "fifo"])
def test_a_config_that_is_a_pipe_or_device_is_named_so_not_missing(tmp_path, capsys, path):
    """Was: ``--config <(cat c.yaml)`` (a pipe) or /dev/null -> "config file not found"."""
    import os

    from homodyne.cli import main

    if path == "fifo":
        path = str(tmp_path / "fifo")
        os.mkfifo(path)
    assert main(["--config", path]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"homodyne: error: --config: {path} is not a regular file (a pipe or "
                   "device); give the YAML config file itself")
