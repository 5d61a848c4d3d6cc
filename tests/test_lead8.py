"""The workflow's production rule scripts exit like ``homodyne``: a bad input is one line
in the rule's log and exit 2, not a traceback (lead, eighth session)."""

import runpy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from homodyne.cli import EXIT_USAGE

SCRIPTS = Path(__file__).resolve().parents[1] / "workflow" / "scripts"


def test_a_production_rule_with_a_bad_data_file_says_one_line_and_exits_2(tmp_path, capsys):
    matrix = tmp_path / "c2.npy"
    np.save(matrix, np.zeros((3, 4)))  # not a square two-time matrix
    snakemake = SimpleNamespace(
        input=SimpleNamespace(matrix=str(matrix), authors=str(tmp_path / "authors.json")),
        output=SimpleNamespace(record=str(tmp_path / "fits" / "chx" / "job.json")),
        params=SimpleNamespace(alpha_window=[0.85, 1.15]), log=[])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(SCRIPTS / "fit_chx.py"), init_globals={"snakemake": snakemake})
    err = capsys.readouterr().err
    assert stop.value.code == EXIT_USAGE
    assert err.startswith(f"fit_chx: error: {matrix}") and err.count("\n") == 1
    assert "Traceback" not in err
    assert not (tmp_path / "fits" / "chx" / "parameters.json").exists()


def test_pruning_checkpoints_while_another_run_holds_the_folder_is_refused(tmp_path):
    """The guide's cleanup_old_checkpoints() run beside a live fit deleted that fit's older
    checkpoints without taking the folder's lock (probe22 W7)."""
    from homodyne.optimization.checkpoint_manager import (
        CheckpointDirError,
        CheckpointManager,
        hold_checkpoint_dir,
    )

    fit = CheckpointManager(tmp_path, keep_last_n=5)
    for batch in (1, 2, 3):
        fit.save_checkpoint(batch, {"x": np.arange(3.0)}, fingerprint="f" * 64)
    held = hold_checkpoint_dir(tmp_path)  # the live fit's run
    try:
        other = CheckpointManager(tmp_path, keep_last_n=1)
        with pytest.raises(CheckpointDirError, match="is in use by"):
            other.cleanup_old_checkpoints()
        assert [p.name for p in fit.list_checkpoints()] == [
            f"homodyne_state_batch_000{b}.h5" for b in (1, 2, 3)]
    finally:
        held.release()
    assert [p.name for p in other.cleanup_old_checkpoints()] == [
        "homodyne_state_batch_0001.h5", "homodyne_state_batch_0002.h5"]
    assert not other._holds_folder() and not held.held


def test_the_workflows_data_copy_is_no_link_to_the_mirror(real_data, tmp_path):
    """fetch_real_data hard-linked the mirror's files into results/: a working copy
    rewritten in place (a probe set it to NaN) rewrote the shared mirror with it."""
    rel = "chx_two_time/test_g2.npy"
    dst = tmp_path / "results" / "data" / "real" / rel
    snakemake = SimpleNamespace(
        wildcards=SimpleNamespace(folder="chx_two_time", name="test_g2.npy"),
        output=[str(dst)], params=SimpleNamespace(mirror=str(real_data)), log=[])
    runpy.run_path(str(SCRIPTS / "fetch_real_data.py"), init_globals={"snakemake": snakemake})
    assert dst.read_bytes() == (real_data / rel).read_bytes()
    assert not dst.samefile(real_data / rel) and dst.stat().st_nlink == 1
    assert sorted(p.name for p in dst.parent.iterdir()) == ["test_g2.npy"]


def test_a_stop_inside_the_internal_refit_off_a_start_bound_keeps_the_lower_end(tmp_path):
    """A start on the lower corner, internal coordinates: the first end converges on
    D_offset's bound and the start-bound refit runs through the internal stage again
    (probe21 N2). SIGTERM inside that refit's internal stage: the fit stops at once with
    the lower-cost point so far, in the user's box, and the resume equals the
    uninterrupted fit bit for bit (the merge of two changes to the refit)."""
    from helpers import lower_corner_case, sigterm_at

    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    spec, y, p0, (lb, ub) = lower_corner_case()
    whole = NLSQWrapper().fit_two_time(None, spec, p0, (lb, ub), y=y)
    first_end = next(m for m in whole.messages if "first end" in m or "refit" in m)
    ck = {"enable_checkpoints": True, "checkpoint_dir": str(tmp_path),
          "checkpoint_frequency": 1, "checkpoint_min_interval_s": 0}
    cut = sigterm_at(whole.passes - 6, lambda stop: NLSQWrapper(  # the refit's internal stage
        checkpoint_config=ck, callback=stop).fit_two_time(None, spec, p0, (lb, ub), y=y))
    assert cut.interrupted_by == "SIGTERM", cut.summary()
    assert np.all((lb <= cut.parameters) & (cut.parameters <= ub))
    # stopped 5 passes into the refit's internal stage; the first end (the optimum here,
    # as the refit's own end says) is the lower-cost point so far
    assert cut.messages[-1].startswith("internal coordinates") and "SIGTERM" in cut.messages[-1]
    assert cut.cost == pytest.approx(whole.cost, rel=1e-12), first_end
    resumed = NLSQWrapper(checkpoint_config=ck).fit_two_time(None, spec, p0, (lb, ub), y=y)
    assert resumed.passes == whole.passes
    np.testing.assert_array_equal(resumed.parameters, whole.parameters)


@pytest.mark.parametrize("call", ["select", "stream"])
def test_the_guides_strategy_calls_refuse_impossible_counts_by_name(call):
    """select_strategy(-1, 5) returned STANDARD and build_streaming_config(n_parameters=0)
    was accepted (probe22 W6); bytes_per_point came back as np.int32 for np.int32 input."""
    from homodyne.optimization.strategy import DatasetSizeStrategy, bytes_per_point

    sel = DatasetSizeStrategy(memory_limit_gb=16)
    fit = sel.select_strategy if call == "select" else sel.build_streaming_config
    with pytest.raises(ValueError, match=r"n_points must be a number of points >= 0, got -1"):
        fit(-1, 5)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match=rf"n_parameters must be a whole number >= 1, "
                                             rf"got {bad!r}"):
            fit(10_000, bad)
    assert type(bytes_per_point(np.int32(9))) is int


def test_the_report_refuses_a_file_of_the_set_replaced_by_hand(tmp_path):
    """The fit's record held the digest of parameters.json only: another file of the set
    replaced by hand was copied into the report without a word (probe24 W1)."""
    import json

    from homodyne.production.multiq import ResultFileError
    from homodyne.production.report import publish_fit_files, write_fit_record

    (tmp_path / "a.csv").write_text("1\n")
    (tmp_path / "parameters.json").write_text(json.dumps({"result_files": ["a.csv",
                                                                           "parameters.json"]}))
    record = write_fit_record(tmp_path)
    copy = tmp_path / "report" / "a.csv"
    assert publish_fit_files(record, ["a.csv"], [copy]) == [copy]
    (tmp_path / "a.csv").write_text("2\n")  # edited in place, same size
    with pytest.raises(ResultFileError, match=r"a.csv changed since its fit committed it"):
        publish_fit_files(record, ["a.csv"], [copy])
    assert copy.read_text() == "1\n"  # the report's previous copy stays
    assert sorted(p.name for p in copy.parent.iterdir()) == ["a.csv"]


def test_the_chx_fit_closes_its_data_where_the_fit_raises(real_data, tmp_path, monkeypatch):
    """fit_chx left its data source to the garbage collector when the fit raised
    (probe24 W2); the previous set is kept as before."""
    from homodyne.data import twotime
    from homodyne.production import chx

    closed = []
    monkeypatch.setattr(twotime.TwoTimeSource, "close",
                        lambda self: closed.append(self.path))

    def fail(*_a, **_k):
        raise RuntimeError("the fit failed")

    monkeypatch.setattr(chx.NLSQWrapper, "fit_two_time", fail)
    with pytest.raises(RuntimeError, match="the fit failed"):
        chx.fit_chx(real_data / "chx_two_time" / "test_g2.npy",
                    real_data / "chx_two_time" / "fit_results_raw.json", tmp_path / "chx")
    assert len(closed) == 1 and str(closed[0]).endswith("test_g2.npy")
    assert not (tmp_path / "chx" / "parameters.json").exists()
