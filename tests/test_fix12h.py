"""fix12h: weak items of the probing rounds probe17/probe18 (issue 12): results record every
setting that made them, warnings name what was left out, diagnostics and messages say the
truth (/work/notes/probe17_findings.md, probe18_findings.md)."""

from __future__ import annotations

import json
import logging

import yaml


def _fit_config(folder, data, **sections):
    """A quick static config over ``data`` (no plots, no progress bar) in ``folder``."""
    raw = {"analysis_mode": "static",
           "experimental_data": {"file_path": str(data)},
           "initial_parameters": {"values": [8000.0, -0.4, 80.0]},
           "performance": {"enable_progress": False},
           "output": {"directory": str(folder / "out"), "plots": False}}
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value) if isinstance(value, dict) else \
            raw.__setitem__(key, value)
    path = folder / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_parameters_json_records_every_setting_that_made_the_model_and_n_points(
        tmp_path, caplog):
    """Was (probe18 W6, W5): parameters.json held neither exclude_diagonal_frames,
    per_angle_scaling, gap_h nor where dt came from, and a config dt overriding the file's
    frame time (0.1 s) was used without a word."""
    from helpers import small_two_time_file

    from homodyne.config import load_config
    from homodyne.pipeline import model_settings, model_spec, open_data, run_from_config

    data = small_two_time_file(tmp_path / "d.h5", n_frames=40)
    cfg = _fit_config(tmp_path, data, per_angle_scaling="shared",
                      experimental_data={"dt": 0.2, "exclude_diagonal_frames": 3,
                                         "q": 0.0055, "start_frame": 2})
    with caplog.at_level(logging.INFO, logger="homodyne"):
        run = run_from_config(cfg)
    saved = json.loads((run.output_dir / "parameters.json").read_text())
    assert {k: saved[k] for k in ("dt", "dt_source", "frame_time_in_file",
                                  "exclude_diagonal_frames", "per_angle_scaling", "gap_h",
                                  "q_requested", "start_frame", "end_frame", "frames")} == {
        "dt": 0.2, "dt_source": "config", "frame_time_in_file": 0.1,
        "exclude_diagonal_frames": 3, "per_angle_scaling": "shared", "gap_h": None,
        "q_requested": 0.0055, "start_frame": 2, "end_frame": -1, "frames": [2, 40]}
    assert abs(saved["q_tolerance"] - 0.00055) < 1e-12  # the default: 10% of the q asked for
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("experimental_data.dt = 0.2 s overrides the frame time 0.1 s in" in m
               and "2x it" in m for m in warned), warned
    laminar = load_config(_fit_config(
        tmp_path, data, analysis_mode="laminar_flow", experimental_data={"gap_h": 5e6},
        initial_parameters={"parameter_names": ["D0", "alpha", "D_offset", "gamma_dot_t0",
                                                "beta", "gamma_dot_t_offset", "phi0"],
                            "values": [8000.0, -0.4, 80.0, 1e-3, 0.0, 0.0, 0.0]}))
    with open_data(laminar) as source:
        settings = model_settings(laminar, source, model_spec(laminar, source))
    assert (settings["gap_h"], settings["per_angle_scaling"], settings["q_requested"]) == (
        5e6, "individual", None)


def test_infinite_data_points_left_out_of_a_fit_are_named_with_their_count_per_angle(
        tmp_path, caplog):
    """Was (probe18 W4): an inf in the data (validation on) was left out like a missing
    NaN point without a word ("9,900 points" first, "9,899" in the summary). The check the
    pipeline runs after a fit that left points out (no fit here: the count is the point)."""
    import h5py
    import numpy as np
    from helpers import small_two_time_file

    from homodyne.config import load_config
    from homodyne.pipeline import model_spec, open_data, warn_infinite_points

    data = small_two_time_file(tmp_path / "d.h5", n_frames=40)
    with h5py.File(data, "r+") as h5:
        ds = h5["xpcs/twotime/correlation_map/c2_00002"]
        c2 = ds[()]
        c2[3, 20], c2[5, 30], c2[4, 5] = np.inf, -np.inf, np.inf  # (4, 5): in the left-out band
        c2[7, 9] = np.nan  # a missing point: not counted
        ds[...] = c2
    cfg = load_config(_fit_config(tmp_path, data,
                                  experimental_data={"exclude_diagonal_frames": 2}))
    with open_data(cfg) as source, caplog.at_level(logging.WARNING, logger="homodyne"):
        spec = model_spec(cfg, source)
        warn_infinite_points(source, spec, spec.n_kept_points)  # nothing left out: no read
        assert not caplog.records
        warn_infinite_points(source, spec, spec.n_kept_points - 3)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and warned[0].startswith(
        "2 of the 1,482 fitted points are +/-inf (2 at phi = 70 deg) and were left out "
        "like missing (NaN) points"), warned


def test_checkpoint_saves_counts_every_checkpoint_written_and_saves_fall_on_call_boundaries(
        tmp_path, monkeypatch):
    """Was (probe18 W2): streaming_diagnostics.checkpoint_saves counted the periodic saves
    only (6 reported, 7 written: the final save was left out). And (W1) a frequency of 7 on
    10-batch passes saves at 7, 17, 27, ...: at the first call boundary at or after the
    batch where a save is due, as the README now says."""
    from helpers import small_two_time_file

    from homodyne.data.twotime import open_two_time
    from homodyne.optimization.checkpoint_manager import CheckpointManager
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    saved = []
    original = CheckpointManager.save_checkpoint

    def counted(self, batch_idx, state, **kw):
        saved.append(batch_idx)
        return original(self, batch_idx, state, **kw)

    monkeypatch.setattr(CheckpointManager, "save_checkpoint", counted)
    src = open_two_time(small_two_time_file(tmp_path / "d.h5", n_frames=60))
    spec = src.model_spec()
    p0 = spec.pack(0.25, 1.05, (8e3, -0.4, 80.0))
    bounds = (spec.pack(0.0, 0.5, (1.0, -2.0, -1e3)), spec.pack(1.0, 1.5, (1e5, 0.5, 1e3)))
    result = NLSQWrapper(strategy_override="streaming", batch_size=354, checkpoint_config={
        "enable_checkpoints": True, "checkpoint_dir": str(tmp_path / "ck"),
        "checkpoint_frequency": 7, "checkpoint_min_interval_s": 0,
        "keep_last_checkpoints": 2}).fit_two_time(src, spec, p0, bounds)
    diag = result.streaming_diagnostics
    total = diag["total_batches_processed"]
    assert saved[:3] == [7, 17, 27] and saved[-1] == total
    assert diag["checkpoint_saves"] == len(saved) and diag["checkpoint_errors"] == []


def test_a_fit_stopped_by_max_iterations_says_the_limit_is_per_solver_stage():
    """Was (probe18 W7): max_iterations 2 -> "NOT converged: maximum iterations (2)
    reached" beside "4 iterations": the limit holds per solver stage (internal
    coordinates, then the user's), which the stop reason now says."""
    from helpers import plain_start_case

    from homodyne.optimization.engine import EngineOptions
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    spec, y, p0, lb, ub = plain_start_case(30)
    options = EngineOptions(max_iterations=2, coarse=False, start_estimate=False)
    result = NLSQWrapper(options=options).fit_two_time(None, spec, p0, (lb, ub), y=y)
    assert not result.converged
    assert result.stop_reason.startswith("maximum iterations (2 per solver stage) reached")
    assert result.iterations > 2  # two stages of 2 (the count the old reason contradicted)
    assert f"{result.iterations} iterations" in result.summary()


def test_a_matrix_whose_stored_half_is_all_inf_is_not_called_all_zeros(tmp_path):
    """Was (probe17 W1): a matrix with its stored (upper) triangle all +inf and zeros
    elsewhere -> "c2_00001 is all zeros": true of its finite values only."""
    import h5py
    import numpy as np
    import pytest
    from helpers import small_two_time_file

    from homodyne.data.errors import DataFileError
    from homodyne.data.twotime import open_two_time

    data = small_two_time_file(tmp_path / "d.h5", n_frames=10)
    with h5py.File(data, "r+") as h5:
        h5["xpcs/twotime/correlation_map/c2_00001"][...] = np.triu(np.full((10, 10), np.inf))
    with pytest.raises(DataFileError, match=r"c2_00001 holds no finite non-zero values \(of "
                       r"the \d+ values read from some of its rows and columns: \d+ \+/-inf, "
                       r"0 NaN, the rest 0\)"):
        open_two_time(data)


def test_a_soft_link_loop_in_a_data_file_is_named_not_called_corrupt_metadata(tmp_path):
    """Was (probe17 W6): a matrix soft-linked into a loop of soft links -> "corrupt HDF5
    metadata (RuntimeError: ... too many links); re-export or copy the file again"."""
    import h5py
    import pytest
    from helpers import small_two_time_file

    from homodyne.data.errors import DataFileError
    from homodyne.data.twotime import open_two_time

    data = small_two_time_file(tmp_path / "d.h5", n_frames=10)
    with h5py.File(data, "r+") as h5:
        del h5["xpcs/twotime/correlation_map/c2_00001"]
        h5["xpcs/twotime/correlation_map/c2_00001"] = h5py.SoftLink("/loop_a")
        h5["loop_a"], h5["loop_b"] = h5py.SoftLink("/loop_b"), h5py.SoftLink("/loop_a")
    with pytest.raises(DataFileError, match=r"soft links lead back to themselves \(a loop\): "
                       r"/loop_a -> /loop_b, /loop_b -> /loop_a, "
                       r"/xpcs/twotime/correlation_map/c2_00001 -> /loop_a; fix the links$"):
        open_two_time(data)


def test_a_lock_file_that_cannot_be_opened_gets_the_fix_for_its_cause(tmp_path, monkeypatch):
    """Was (probe17 W7): the lock file as a folder -> "(Is a directory); remove it if it is a
    symbolic link" (int7: "remove it or choose another folder" for every cause but a link
    and permissions, also for a full disk, where there is nothing to remove)."""
    import errno
    import os

    import pytest

    from homodyne.output import DirectoryLock, OutputDirError

    (tmp_path / "a" / ".homodyne.lock").mkdir(parents=True)
    with pytest.raises(OutputDirError, match=r"\(Is a directory\); a folder stands at the "
                       "lock file's name: remove that folder or choose another one$"):
        DirectoryLock(tmp_path / "a" / ".homodyne.lock").acquire()
    lock, real = tmp_path / "b" / ".homodyne.lock", os.open

    def full(path, flags, *a, **k):
        if os.fspath(path) == str(lock):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", full)
    with pytest.raises(OutputDirError, match=r"\(No space left on device\); free space in that "
                       "folder or choose another one$"):
        DirectoryLock(lock).acquire()


def test_a_bin_with_no_parameters_or_result_files_that_are_no_files_is_named(tmp_path, caplog):
    """Was (probe17 W8): a bin's parameters.json with parameters_by_name {} gave a summary
    row of empty parameter cells and status ok; a bin whose job.json or parameters.json is
    a folder or a FIFO was left out of the --q refresh of the table without a word."""
    import os
    from pathlib import Path

    import pytest
    from helpers import a_bin_folder

    from homodyne.output import write_json
    from homodyne.production.multiq import QFitJob, ResultFileError, _complete, summary_row

    folder = a_bin_folder(tmp_path)
    params = folder / "parameters.json"
    saved = json.loads(params.read_text())
    write_json(params, {**saved, "parameters_by_name": {}})
    with pytest.raises(ResultFileError, match=r"'parameters_by_name' is empty: no fitted "
                       r"parameter to list; rerun that job \(delete the file\)"):
        summary_row(folder)
    params.unlink()
    params.mkdir()
    other = tmp_path / "d" / "q01"
    other.mkdir()
    os.mkfifo(other / "job.json")
    jobs = [QFitJob("d.h5", "d", k, 0.005, Path(f)) for k, f in enumerate((folder, other))]
    with caplog.at_level(logging.WARNING, logger="homodyne"):
        assert _complete(jobs) == []
    assert [r.getMessage() for r in caplog.records] == [
        f"left out of summary.csv: {params}, {other / 'job.json'} are not a regular file (a "
        "folder, a pipe or a link to one); remove them and rerun those bins"]


def test_a_file_named_like_a_checkpoint_too_big_to_be_one_is_refused_before_it_is_hashed(
        tmp_path, monkeypatch, caplog):
    """Was (probe17 W9): 1 GB sparse files named like checkpoints (with this fit's trailer)
    were each hashed in full (seconds per file) before being refused: a checkpoint's size
    is bounded by its fields (MAX_STATE_BYTES) plus HDF5's metadata."""
    from homodyne.optimization import checkpoint_manager as cm

    (tmp_path / "ck").mkdir()
    manager = cm.CheckpointManager(tmp_path / "ck")
    manager.fingerprint = "f" * 64
    fake = tmp_path / "ck" / "homodyne_state_batch_0005.h5"
    size = 400 << 20  # under int7's 1 GiB limit, over what a checkpoint can be
    with open(fake, "wb") as fh:  # sparse: nothing but this fit's trailer is written
        fh.truncate(size - cm.TRAILER_BYTES)
        fh.seek(0, 2)
        fh.write(cm.TRAILER_MAGIC + b"f" * cm.FINGERPRINT_BYTES + b"\0" * 32)
    hashed = []
    monkeypatch.setattr(cm, "_hash_prefix", lambda fh, n: hashed.append(n) or b"\0" * 32)
    with caplog.at_level(logging.WARNING, logger="homodyne"):
        assert manager.find_latest_valid_checkpoint() is None
    assert hashed == []
    assert any(f"(size {size} bytes is not that of a checkpoint)" in r.getMessage()
               for r in caplog.records), caplog.records


def test_complex_or_enum_frame_times_and_maps_are_refused_not_read_as_numbers(tmp_path):
    """Was (probe17 W2): a frame time stored complex (0.1+5j) was read as 0.1 (imaginary
    part dropped), an enum frame time or q map as its integer codes."""
    import h5py
    import numpy as np
    import pytest
    from helpers import small_two_time_file

    from homodyne.data.errors import DataFileError
    from homodyne.data.twotime import APSU_Q, FRAME_TIME, open_two_time

    data = small_two_time_file(tmp_path / "d.h5", n_frames=10)
    with h5py.File(data, "r+") as h5:
        del h5[FRAME_TIME]
        h5[FRAME_TIME] = np.array([[0.1 + 5j]])
    source = open_two_time(data)
    with pytest.raises(DataFileError, match=r"frame_time holds complex numbers \(complex128\), "
                       "not real ones; store its real values; fix the file or set 'dt'"):
        source.model_spec()
    assert source.model_spec(dt=0.1).dt == 0.1  # a config dt stands in, as for any bad time
    with h5py.File(data, "r+") as h5:
        codes = h5py.enum_dtype({"short": 0, "long": 1}, basetype="i1")
        q = h5[APSU_Q][()]
        del h5[APSU_Q]
        h5.create_dataset(APSU_Q, data=np.zeros(q.shape, "i1"), dtype=codes)
    with pytest.raises(DataFileError, match=r"holds enum codes \(short=0, long=1\), not "
                       "numbers; store its values as numbers"):
        open_two_time(data)
    from homodyne.data.multitau import _numeric

    with h5py.File(tmp_path / "m.h5", "w") as h5:
        h5.create_dataset("g2", data=np.zeros(4, "i1"), dtype=codes)
        with pytest.raises(DataFileError, match="g2 holds enum codes"):
            _numeric(h5, "g2", str(tmp_path / "m.h5"), 10)


def test_the_multi_q_table_puts_extra_angle_columns_beside_their_kin():
    """Was (probe18 W9): a multi-q table over files of 2 and 3 angles had contrast[2],
    offset[2] (and their _se) after output_dir, pandas' union order."""
    from homodyne.production.multiq import table_columns

    def row(n_angles, **extra):
        out = {"file": "f", "age_s": None, "q_index": 0, "q": 0.005, "n_points": 10,
               **extra}
        for name in [f"contrast[{k}]" for k in range(n_angles)] + \
                [f"offset[{k}]" for k in range(n_angles)] + ["D0", "alpha", "D_offset"]:
            out[name], out[f"{name}_se"] = 1.0, 0.1
        out.update(reduced_chi2=1.0, status="ok", tier="STANDARD", passes=4, time_s=1.0,
                   output_dir="x")
        return out

    failed = {"file": "g", "age_s": None, "q_index": 1, "q": 0.007, "status": "failed: x",
              "output_dir": "y"}
    columns = table_columns([row(2, settings_match=True), failed, row(3)])
    pairs = [c for n in ("contrast[0]", "contrast[1]", "contrast[2]", "offset[0]",
                         "offset[1]", "offset[2]", "D0", "alpha", "D_offset")
             for c in (n, f"{n}_se")]
    assert columns == ["file", "age_s", "q_index", "q", "n_points", "settings_match", *pairs,
                       "reduced_chi2", "status", "tier", "passes", "time_s", "output_dir"]
