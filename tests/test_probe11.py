"""Regression tests for probe11's findings (issue 12, a fresh round of probing signals,
disks, checkpoints and concurrency): a run whose output folder became unusable mid-run
ends with its one clean error, never a traceback from cleaning up its staged files."""

import errno
import os
import shutil
import signal

import pytest
import yaml

from homodyne.cli import main
from homodyne.output import FAILED_LOG, ResultSet

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "homodyne", "examples")


@pytest.fixture(scope="module")
def small_cfg(tmp_path_factory):
    """A 60-frame dataset and a streaming config for it (no plots, no progress bar)."""
    d = tmp_path_factory.mktemp("p11")
    assert main(["generate", "--output", str(d / "data.h5"), "--frames", "60",
                 "--angles", "0,45", "--seed", "3"]) == 0
    with open(os.path.join(EXAMPLES, "static.yaml")) as fh:
        raw = yaml.safe_load(fh)
    raw["experimental_data"]["file_path"] = str(d / "data.h5")
    raw["output"] = {"plots": False}
    raw["performance"] = {"enable_progress": False, "strategy_override": "streaming",
                          "batch_size": 500}
    (d / "cfg.yaml").write_text(yaml.safe_dump(raw))
    return d


@pytest.fixture
def ctrl_c_default():
    """The stop signals at Python's defaults for a test that stops main() in-process, and
    put back afterwards: after a stop the CLI ignores all three for the rest of the
    process, which later tests (and the children they start) would inherit."""
    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL,
                signal.SIGHUP: signal.SIG_DFL}
    before = {s: signal.signal(s, h) for s, h in defaults.items()}
    yield
    for s, h in before.items():
        signal.signal(s, h)


def _staged(folder):
    """A result set with a staged log and a staged result file, as a run mid-fit has."""
    results = ResultSet(folder)
    for name in ("fit.log", "fit.h5"):
        results.stage(name).write_text(name)
    return results


def test_discarding_staged_files_of_a_folder_replaced_by_a_file_does_not_raise(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    results = _staged(out)
    shutil.rmtree(out)
    out.write_text("someone else's file")  # the folder replaced mid-run
    results.discard()  # main: NotADirectoryError from unlinking the staged log
    assert out.read_text() == "someone else's file" and results.staged == {}


def test_discarding_staged_files_of_a_read_only_folder_does_not_raise(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    results = _staged(out)

    def read_only(*args, **kw):  # what a folder made read-only (or remounted) answers
        raise PermissionError(13, "Permission denied", str(args[0]))

    monkeypatch.setattr(os, "replace", read_only)
    monkeypatch.setattr(os, "unlink", read_only)
    results.discard()  # main: PermissionError from moving the log to fit.incomplete.log
    monkeypatch.undo()
    assert not (out / FAILED_LOG).exists() and results.staged == {}


@pytest.mark.parametrize("error", [errno.EACCES, errno.EEXIST])
def test_a_stop_whose_best_parameters_cannot_be_written_still_exits_as_a_stop(
        small_cfg, tmp_path, monkeypatch, capsys, ctrl_c_default, error):
    """Ctrl-C mid-fit with the output folder made read-only (EACCES) or replaced by a file
    (EEXIST when the folder is re-created): main wrote parameters.interrupted.json unguarded:
    a PermissionError traceback (exit 1), or 'error: [Errno 17] File exists' (exit 2)."""
    import homodyne.pipeline as pipeline

    real_make, real_write = pipeline.make_wrapper, pipeline.write_json

    def make_wrapper(cfg):  # Ctrl-C at the first batch (the driver turns it into a flag)
        wrapper = real_make(cfg)
        wrapper.callback = lambda *a: os.kill(os.getpid(), signal.SIGINT)
        return wrapper

    def write_json(path, payload):
        if str(path).endswith("parameters.interrupted.json"):
            raise OSError(error, os.strerror(error), str(path))
        return real_write(path, payload)

    monkeypatch.setattr(pipeline, "make_wrapper", make_wrapper)
    monkeypatch.setattr(pipeline, "write_json", write_json)
    assert main(["--config", str(small_cfg / "cfg.yaml"), "--output-dir",
                 str(tmp_path / "out")]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "homodyne: error" not in err, err[-2000:]
    assert err.splitlines()[-1].startswith("homodyne: interrupted by SIGINT"), err[-2000:]
    assert f"best parameters so far not written to {tmp_path / 'out'} " \
           f"({os.strerror(error)})" in err


@pytest.mark.parametrize("name", ["fit.h5", "parameters.json", "fit.incomplete.log"])
def test_a_folder_made_at_a_result_name_during_the_run_leaves_one_complete_set(tmp_path, name):
    """A folder appearing at a result name mid-run: fit.h5 / parameters.json -> the old marker
    was removed and part of the new set renamed in, then 'could not write ... the previous
    results are untouched' (they were not); fit.incomplete.log -> the new set was committed
    in full, then the same error and exit 2 claimed it was not."""
    from homodyne.output import OutputDirError

    out = tmp_path / "out"
    old = ResultSet(out)
    out.mkdir()
    for f in ("fit.log", "fit.h5", "parameters.json"):
        old.stage(f).write_text("{}" if f == "parameters.json" else "old " + f)
    old.commit()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    new = _staged(out)
    new.stage("parameters.json").write_text("{}")
    (out / name).unlink(missing_ok=True)
    (out / name).mkdir()  # made by someone else while the run fitted
    with pytest.raises(OutputDirError, match=f"{out / name} is a folder where the result file "
                       rf"{name} goes \(made during the run; the previous results are "
                       r"untouched\); move it away or choose another --output-dir"):
        new.commit()
    new.discard()
    after = {p.name: p.read_bytes() for p in out.iterdir()
             if p.is_file() and not p.name.startswith(".tmp-")}  # (removed by the next run)
    assert after.pop(FAILED_LOG, b"fit.log") == b"fit.log"  # the failed run's log, kept
    assert after == {k: v for k, v in before.items() if k != name}


@pytest.mark.parametrize("error", [errno.ENOLCK, errno.EOPNOTSUPP])
def test_a_folder_whose_file_system_cannot_lock_is_named_not_blamed_on_a_run(
        tmp_path, monkeypatch, error):
    """flock failing for want of lock support (NFS without its lock service: ENOLCK) was
    read as 'in use by pid 4242; wait for that run to finish' (the pid a dead run left in
    the file), for ever: every run refused, the one to wait for long gone."""
    import fcntl

    from homodyne.output import DirectoryLock, OutputDirError

    (tmp_path / ".homodyne.lock").write_text("pid 4242")

    def no_locks(fd, operation):
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(OutputDirError, match=rf"cannot lock {tmp_path / '.homodyne.lock'} "
                       rf"\({os.strerror(error)}\): the file system of that folder does not "
                       "support file locks .*; choose a folder on a local disk"):
        DirectoryLock(tmp_path / ".homodyne.lock").acquire()


@pytest.mark.parametrize("actions, refused", [('["x"]', True), ("retry", True),
                                              ([{"batch": 3, "action": "retry"}], False)])
def test_a_checkpoint_whose_recovery_actions_are_not_records_is_skipped(tmp_path, actions,
                                                                       refused):
    """A sealed checkpoint whose recovery_actions held text ('["x"]') resumed: the text was
    taken as a list of characters and the next save died with h5py's TypeError 'No
    conversion path for dtype <U1' (a traceback, exit 1)."""
    import numpy as np

    from homodyne.optimization.checkpoint_manager import CheckpointManager
    from homodyne.optimization.checkpoint_session import CheckpointSession, checkpoint_state

    state = checkpoint_state([], solver=None, n_failed=0, recovery_actions=[],
                             excluded={"coarse": set(), "full": set()}, stage="full",
                             x=np.ones(3), next_batch=0, partial=None)
    state["recovery_actions"] = actions
    session = CheckpointSession(CheckpointManager(tmp_path), fingerprint="f" * 64)
    session.save(6, state, clock=0.0, wait=True)
    resumed = session.load_resume()
    assert (resumed is None) == refused
    if not refused:
        assert resumed.recovery_actions == actions


def test_a_full_checkpoint_disk_is_reported_once_not_at_every_save(tmp_path, caplog,
                                                                   monkeypatch):
    """A checkpoint folder without room: one ERROR line per save (19 in a 1 s fit of 250
    batches; thousands in a long one), each saying 'the previous checkpoint stays valid'
    though none had been written."""
    import logging

    import numpy as np

    from homodyne.optimization.checkpoint_manager import CheckpointManager
    from homodyne.optimization.checkpoint_session import CheckpointSession, checkpoint_state

    state = checkpoint_state([], solver=None, n_failed=0, recovery_actions=[],
                             excluded={"coarse": set(), "full": set()}, stage="full",
                             x=np.ones(3), next_batch=0, partial=None)
    manager = CheckpointManager(tmp_path)
    session = CheckpointSession(manager, fingerprint="f" * 64)
    real = manager.save_checkpoint
    full = [True]

    def save(*args, **kw):
        if full[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kw)

    monkeypatch.setattr(manager, "save_checkpoint", save)
    with caplog.at_level(logging.ERROR, logger="homodyne"):
        for batch in (3, 6, 9):
            session.save(batch, state, clock=0.0, wait=True)
        full[0] = False
        session.save(12, state, clock=0.0, wait=True)
        full[0] = True
        session.save(15, state, clock=0.0, wait=True)
    said = [r.getMessage() for r in caplog.records if "not written" in r.getMessage()]
    assert len(session.errors) == 4 and len(said) == 2, said
    assert said[0] == ("checkpoint at batch 3 not written: [Errno 28] No space left on device; "
                       "no checkpoint of this run is on disk yet; later saves failing the same "
                       "way are not reported")
    assert said[1].startswith("checkpoint at batch 15 not written") and \
        "the previous checkpoint stays valid" in said[1]


@pytest.mark.parametrize("error, fix", [
    (errno.ENOENT, "keep the folder in place while the fit runs"),
    (errno.EACCES, "make the folder writable")])  # (ENOSPC: test_faults.py)
def test_results_that_could_not_be_written_name_the_fix_for_the_cause(
        small_cfg, tmp_path, monkeypatch, capsys, error, fix):
    """The output folder removed or made read-only mid-run: 'could not write the results
    (No such file or directory); free space or choose another --output-dir'."""
    import homodyne.pipeline as pipeline

    real = pipeline.write_json

    def write_json(path, payload):
        if str(path).endswith("parameters.json"):
            raise OSError(error, os.strerror(error), str(path))
        return real(path, payload)

    monkeypatch.setattr(pipeline, "write_json", write_json)
    out = tmp_path / "out"
    assert main(["--config", str(small_cfg / "cfg.yaml"), "--output-dir", str(out)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"homodyne: error: could not write the results to {out} ({os.strerror(error)}); "
        f"{fix} or choose another --output-dir; the previous results are untouched")


def test_a_file_size_limit_on_the_log_is_one_clean_error(small_cfg, tmp_path):
    """`ulimit -f 1`: fit.log's buffered tail failed when the log was closed: OSError 'File
    too large' traceback (exit 1) from _logged_run instead of the clean exit 2."""
    import subprocess
    import sys

    code = ("import resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))\n"
            "from homodyne.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", code, "--config", str(small_cfg / "cfg.yaml"),
                           "--output-dir", str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "homodyne: warning: fit.log is incomplete: [Errno 27] File too large" in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith(
        f"homodyne: error: could not write the results to {tmp_path / 'out'} (File too large)")


def test_a_stop_in_the_fit_says_its_reason_once(small_cfg, tmp_path, monkeypatch, capsys,
                                               ctrl_c_default):
    """A stop landing in the fit printed its reason three times: the summary's first line
    (WARNING INTERRUPTED ...: interrupted by SIGINT: checkpoint saved ...), a WARNING
    repeating it, then the one line 'homodyne: interrupted by SIGINT: ...'."""
    import homodyne.pipeline as pipeline

    real_make = pipeline.make_wrapper

    def make_wrapper(cfg):  # Ctrl-C at the first batch (the driver turns it into a flag)
        wrapper = real_make(cfg)
        wrapper.callback = lambda *a: os.kill(os.getpid(), signal.SIGINT)
        return wrapper

    monkeypatch.setattr(pipeline, "make_wrapper", make_wrapper)
    out = tmp_path / "out"
    assert main(["--config", str(small_cfg / "cfg.yaml"), "--output-dir", str(out),
                 "--quiet"]) == 130
    err = capsys.readouterr().err
    assert err.count("interrupted by SIGINT") == 1, err[-2000:]
    assert err.splitlines()[-1].startswith("homodyne: interrupted by SIGINT: ")
    assert "INTERRUPTED (best parameters so far): interrupted by SIGINT" in \
        (out / FAILED_LOG).read_text()  # the log keeps the summary


@pytest.mark.parametrize("when", ["after_the_final_checkpoint", "after_the_result"])
def test_a_stop_just_after_the_fit_ends_is_a_clean_stop_not_lost(
        small_cfg, tmp_path, monkeypatch, capsys, ctrl_c_default, when):
    """Ctrl-C after the fit's last stop check, while the fit's own handler still held it
    (a sweep of stops 0-0.9 s after the first checkpoint hit both): after the final
    checkpoint -> exit 130 with a convergence message as the stop's line ('homodyne:
    Gauss-Newton step ... <= 0.0001') and the finished fit kept only as
    parameters.interrupted.json; after the result was built -> swallowed: exit 0 and the
    results written over the old ones."""
    import homodyne.optimization.driver as driver
    from homodyne.optimization.passes import FitMonitor

    def ctrl_c():
        os.kill(os.getpid(), signal.SIGINT)

    if when == "after_the_final_checkpoint":
        real_save = FitMonitor.save_final
        monkeypatch.setattr(FitMonitor, "save_final",
                            lambda self, x: (real_save(self, x), ctrl_c())[0])
    else:
        real_edges = driver._report_edges
        monkeypatch.setattr(driver, "_report_edges",
                            lambda *a: (ctrl_c(), real_edges(*a))[1])
    out = tmp_path / "out"
    raw = yaml.safe_load((small_cfg / "cfg.yaml").read_text())
    raw["optimization"] = {"streaming": {"enable_checkpoints": True, "checkpoint_dir":
                                         str(tmp_path / "ck"), "checkpoint_min_interval_s": 0}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert main(["--config", str(tmp_path / "c.yaml"), "--output-dir", str(out)]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        "homodyne: interrupted (Ctrl-C); results already in the output folder are untouched")
    assert sorted(p.name for p in out.iterdir()) == [".homodyne.lock", FAILED_LOG]
    monkeypatch.undo()  # the rerun resumes from the final checkpoint and writes the results
    assert main(["--config", str(tmp_path / "c.yaml"), "--output-dir", str(out)]) == 0
    assert "resumes from batch" in capsys.readouterr().err
