"""probe18: the guide's keys and API arguments do what they say, messages tell the truth
(issue 12, a fresh round; /work/notes/probe18_findings.md)."""

from __future__ import annotations

import time

import pytest


def _two_time_fit(tmp_path, edit=None, **wrapper_kw):
    """A small static two-time fit through the guide's NLSQWrapper (3,540 points); ``edit``
    changes the file's first matrix (an array, in place) before it is read."""
    import h5py
    from helpers import small_two_time_file

    from homodyne.data.twotime import open_two_time
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    path = small_two_time_file(tmp_path / "d.h5", n_frames=60)
    if edit is not None:
        with h5py.File(path, "r+") as h5:
            ds = h5["xpcs/twotime/correlation_map/c2_00001"]
            c2 = ds[()]
            edit(c2)
            ds[...] = c2
    src = open_two_time(path)
    spec = src.model_spec()
    p0 = spec.pack(0.25, 1.05, (8e3, -0.4, 80.0))
    bounds = (spec.pack(0.0, 0.5, (1.0, -2.0, -1e3)), spec.pack(1.0, 1.5, (1e5, 0.5, 1e3)))
    return NLSQWrapper(**wrapper_kw).fit_two_time(src, spec, p0, bounds)


def test_checkpoints_with_no_minimum_interval_are_saved_exactly_every_frequency_batches(
        tmp_path, monkeypatch):
    """Was: with checkpoint_min_interval_s 0 a save that fell due while the previous one was
    still being written was skipped, so the saves landed wherever the writer had finished
    (the guide's checkpoint_frequency 10: batches 10, 28, 48, 60 on one run, 10, 20, 48,
    60 on the next) although the README says 0 saves exactly every checkpoint_frequency
    batches (the guide's files: homodyne_state_batch_0010, 0020, 0030)."""
    from homodyne.optimization.checkpoint_manager import CheckpointManager

    saved = []
    original = CheckpointManager.save_checkpoint

    def slow_save(self, batch_idx, state, **kw):  # a disk slower than ten batches
        time.sleep(0.05)
        saved.append(batch_idx)
        return original(self, batch_idx, state, **kw)

    monkeypatch.setattr(CheckpointManager, "save_checkpoint", slow_save)
    result = _two_time_fit(tmp_path, strategy_override="streaming", batch_size=354,
                           checkpoint_config={
                               "enable_checkpoints": True,
                               "checkpoint_dir": str(tmp_path / "ck"),
                               "checkpoint_frequency": 10, "checkpoint_min_interval_s": 0,
                               "keep_last_checkpoints": 1000})
    total = result.streaming_diagnostics["total_batches_processed"]
    assert total >= 40
    assert [b for b in saved if b != total] == list(range(10, total, 10))  # + the final


def test_build_streaming_config_refuses_a_mistyped_checkpoint_key_and_reads_keep_last_n():
    """Was: the guide's build_streaming_config(..., checkpoint_config={...}) copied any key
    into its result: 'checkpoint_frequncy': 3 came back beside checkpoint_frequency 10 (the
    typo silently ignored), and keep_last_n 5 (CheckpointManager's name, which NLSQWrapper
    reads) beside keep_last_checkpoints 3; NLSQWrapper refuses the typo by name."""
    from homodyne.optimization.strategy import DatasetSizeStrategy

    build = DatasetSizeStrategy().build_streaming_config
    with pytest.raises(ValueError, match=r"checkpoint_config: unknown key\(s\) "
                                         r"\['checkpoint_frequncy'\]; the keys are"):
        build(200_000_000, 9, checkpoint_config={"checkpoint_frequncy": 3})
    with pytest.raises(ValueError, match=r"checkpoint_config\['checkpoint_frequency'\] must "
                                         "be a whole number >= 1, got '10'"):
        build(200_000_000, 9, checkpoint_config={"checkpoint_frequency": "10"})
    config = build(200_000_000, 9, checkpoint_config={"enable_checkpoints": True,
                                                      "checkpoint_dir": "./ck",
                                                      "keep_last_n": 5})
    assert (config["enable_checkpoints"], config["checkpoint_dir"],
            config["keep_last_checkpoints"]) == (True, "./ck", 5)


def test_a_non_finite_start_names_the_users_parameters_not_the_internal_ones(tmp_path):
    """Was: with validate_numerics off, data holding an inf stopped the fit with "Non-finite
    cost or gradients at the initial parameters [..., -1876.16, -0.4, 4770.4]": the
    internal power-law coordinates, a D0 < 0 outside its bounds [1, 1e5] where p0 held
    D0 = 8000, D_offset = 80. Nor did it say that validation, which leaves such a point out
    (a NaN is a missing point), was off: fast mode failed on every file with a NaN."""
    from homodyne.optimization.exceptions import NLSQNumericalError

    def plant_inf(c2):
        c2[5, 40] = c2[40, 5] = float("inf")

    with pytest.raises(NLSQNumericalError, match=r"at the initial parameters \[0\.25, 0\.25, "
                                                 r"1\.05, 1\.05, 8000\.0, -0\.4, 80\.0\]: "
                                                 "check p0, bounds and the data; numerical "
                                                 r"validation is off \(fast_mode, or "):
        _two_time_fit(tmp_path, plant_inf, enable_numerical_validation=False)


def _bin_folder(root, file_id, names):
    """One multi-q bin folder as a fit leaves it (parameters.json, job.json)."""
    import numpy as np

    from homodyne.optimization.result import FitResult
    from homodyne.output import write_json
    from homodyne.production.multiq import JOB_FILE

    k = len(names)
    result = FitResult(parameter_names=tuple(names), parameters=np.arange(1.0, k + 1),
                       uncertainties=np.full(k, 0.1), covariance=np.eye(k) * 0.01, cost=1.0,
                       n_points=500, reduced_chi_squared=1.02, converged=True,
                       stop_reason="converged", strategy="STANDARD", iterations=4, passes=5)
    folder = root / file_id / "q00"
    folder.mkdir(parents=True)
    write_json(folder / "parameters.json", result.as_dict())
    write_json(folder / JOB_FILE, {"file": f"{file_id}.h5", "file_id": file_id, "q_index": 0,
                                   "q": 0.001, "age_s": None})
    return folder


def test_a_multi_q_run_over_files_of_different_angle_counts_gets_its_summary(tmp_path):
    """Was: `homodyne --config mq.yaml --q all` over two static files of 2 and 3 angles fitted
    both, then exit 2 "out_mq/l/q00/parameters.json holds parameters [contrast[0..2], ...],
    the other results of this run [contrast[0..1], ...]: results of different models cannot
    share one summary; remove the folder that does not belong": both belonged, no
    summary.csv. The per-angle scaling is no part of the model; another model still is."""
    import csv

    from homodyne.production.multiq import ResultFileError, gather

    physical = ["D0", "alpha", "D_offset"]
    two = [*(f"{s}[{i}]" for s in ("contrast", "offset") for i in range(2)), *physical]
    three = [*(f"{s}[{i}]" for s in ("contrast", "offset") for i in range(3)), *physical]
    folders = [_bin_folder(tmp_path, "a", two), _bin_folder(tmp_path, "b", three)]
    rows = list(csv.DictReader(gather(folders, tmp_path / "run").open()))
    assert [r["file"] for r in rows] == ["a", "b"]
    assert (rows[0]["contrast[2]"], rows[1]["contrast[2]"]) == ("", "3.0")
    assert rows[0]["D0"] == "5.0" and rows[1]["D0"] == "7.0"
    laminar = _bin_folder(tmp_path, "c", [*two, "gamma_dot_t0", "beta",
                                          "gamma_dot_t_offset", "phi0"])
    with pytest.raises(ResultFileError, match="results of different models cannot share"):
        gather([*folders, laminar], tmp_path / "run2")
