"""Regression tests for probe14's findings (issue 12, a fresh round of probing signals,
disks, checkpoints and concurrency): a stop's one line tells the truth about what is on
disk - the new results once they were committed, the checkpoint a rerun really resumes from."""

import errno
import os
import shutil
import signal

import pytest
import yaml
from helpers import (
    multi_q_cli_config,
    multi_q_stop_line,
    stop_signals_at_default,
    streaming_cli_config,
)

from homodyne.cli import main


@pytest.fixture(scope="module")
def small_cfg(tmp_path_factory):
    """The folder of a 60-frame dataset and its streaming config (cfg.yaml)."""
    return streaming_cli_config(tmp_path_factory.mktemp("p14")).parent


@pytest.fixture
def stop_signals_default():
    with stop_signals_at_default():
        yield


def _checkpointed(small_cfg, tmp_path) -> str:
    raw = yaml.safe_load((small_cfg / "cfg.yaml").read_text())
    raw["optimization"] = {"streaming": {
        "enable_checkpoints": True, "checkpoint_dir": str(tmp_path / "ck"),
        "checkpoint_frequency": 1, "checkpoint_min_interval_s": 0}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    return str(tmp_path / "c.yaml")


@pytest.mark.parametrize("failure", ["folder_replaced_by_a_file", "saves_refused"])
def test_a_stop_whose_checkpoint_could_not_be_written_names_what_a_rerun_resumes_from(
        small_cfg, tmp_path, monkeypatch, capsys, stop_signals_default, failure):
    """A stop whose own checkpoint failed (folder read-only or replaced by a file) said
    'checkpoint saved at batch 74 (ck/..._0030.h5); run the same command again to resume':
    no save at 74, and with the folder replaced the file named was gone."""
    from homodyne.optimization.checkpoint_manager import CheckpointManager

    real_save = CheckpointManager.save_checkpoint
    calls = []

    def save(self, batch_idx, state, **kw):
        calls.append(batch_idx)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # acted on at the next batch: a forced save
            if failure == "folder_replaced_by_a_file":
                shutil.move(self.checkpoint_dir, tmp_path / "moved")
                self.checkpoint_dir.write_text("x")
        if len(calls) >= 2 and failure == "saves_refused":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_save(self, batch_idx, state, **kw)

    monkeypatch.setattr(CheckpointManager, "save_checkpoint", save)
    cfg = _checkpointed(small_cfg, tmp_path)
    out = tmp_path / "out"
    assert main(["--config", cfg, "--output-dir", str(out)]) == 143
    err = capsys.readouterr().err
    last = err.splitlines()[-1]
    assert len(calls) >= 3, calls  # the stop's own save was tried (and failed)
    if failure == "folder_replaced_by_a_file":
        assert last == ("homodyne: interrupted by SIGTERM: no checkpoint of this run could be "
                        "written or is left on disk (the error is above); the best parameters "
                        "so far are kept, the next run starts afresh"), err[-3000:]
        assert f"a file or a broken link now stands at {tmp_path / 'ck'}" in err
        assert "is no longer on disk" in err and "stays valid" not in err
        return
    first = tmp_path / "ck" / f"homodyne_state_batch_{calls[0]:04d}.h5"
    assert last == (f"homodyne: interrupted by SIGTERM: the checkpoint at batch {calls[-1]} "
                    "could not be written (the error is above); the last one, at batch "
                    f"{calls[0]} ({first}), is kept: run the same command again to resume "
                    "from there"), err[-3000:]
    def refused(self, batch_idx, state, **kw):
        raise PermissionError(errno.EACCES, "Permission denied")

    # the rerun resumes from it; its own saves refused too, that checkpoint stays valid (was:
    # 'no checkpoint of this run is on disk yet')
    monkeypatch.setattr(CheckpointManager, "save_checkpoint", refused)
    assert main(["--config", cfg, "--output-dir", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"resumes from batch {calls[0]} " in err
    assert (f"not written: [Errno 13] Permission denied; the previous checkpoint stays valid "
            f"(batch {calls[0]}, {first}); later saves") in err, err[-3000:]


@pytest.mark.parametrize("which", ["output", "checkpoint", "below_output", "loop"])
def test_a_folder_given_as_a_broken_or_looping_link_is_named_as_such(
        small_cfg, tmp_path, capsys, which):
    """A symbolic link to a folder that does not exist (a moved scratch disk) as the output
    or checkpoint folder: exit 2 '... is not writable (File exists); fix its permissions',
    naming neither the link nor the fix; a link loop said the same."""
    link = tmp_path / "link"
    if which == "loop":
        os.symlink(tmp_path / "other", link)
        os.symlink(link, tmp_path / "other")
    else:
        os.symlink(tmp_path / "gone", link)
    cfg = _checkpointed(small_cfg, tmp_path)
    out = tmp_path / "out"
    if which == "checkpoint":
        raw = yaml.safe_load(open(cfg))
        raw["optimization"]["streaming"]["checkpoint_dir"] = str(link)
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    else:
        out = link / "sub" if which == "below_output" else link
    assert main(["--config", cfg, "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    what, option = (("checkpoint folder", "optimization.streaming.checkpoint_dir")
                    if which == "checkpoint" else ("output folder", "--output-dir"))
    if which == "loop":
        assert err == (f"homodyne: error: {what} {link} is a symbolic link that cannot be "
                       f"followed (Too many levels of symbolic links); choose another {option}")
        return
    where = "lies below" if which == "below_output" else "is"
    assert err == (f"homodyne: error: {what} {out if which != 'checkpoint' else link} {where} a "
                   f"symbolic link to {tmp_path / 'gone'}, which does not exist (a broken "
                   f"link); create that folder or choose another {option}")
    assert not (tmp_path / "gone").exists()


def test_a_multi_q_bin_stopped_as_it_is_committed_is_named_among_the_bins_kept(
        tmp_path, capsys, monkeypatch, stop_signals_default):
    """SIGTERM held off while bin q01's results were renamed into place lands as that commit
    ends: the line named only q00 as replaced ('the other bins' results are untouched'),
    though q01 held this run's new results."""
    import homodyne.output as output

    cfg = multi_q_cli_config(tmp_path)
    real_fsync, commits = output._fsync, []

    def fsync(path, *flags):
        if flags:  # the folder's fsync: inside a bin's commit, signals held off
            commits.append(path)
            if len(commits) == 2:
                os.kill(os.getpid(), signal.SIGTERM)
        return real_fsync(path, *flags)

    monkeypatch.setattr(output, "_fsync", fsync)
    assert main(["--config", str(cfg), "--quiet"]) == 143
    assert capsys.readouterr().err.strip().splitlines()[-1] == multi_q_stop_line("d/q00",
                                                                           "d/q01")
    assert (tmp_path / "out" / "d" / "q01" / "parameters.json").is_file()
    assert not (tmp_path / "out" / "d" / "q02").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_ignored_at_the_start_is_ignored_in_the_fit_too(
        small_cfg, tmp_path, monkeypatch, capsys, stop_signals_default, sig):
    """A run started with SIGINT ignored (a shell script's background job, ``cmd &``): a
    SIGINT outside the fit was ignored (exit 0, results written) but one landing in the fit
    stopped it (exit 130): the outcome depended on the moment. Only SIGHUP kept its
    ignored state in the fit."""
    import homodyne.pipeline as pipeline

    real_make = pipeline.make_wrapper

    def make_wrapper(cfg):  # the signal at the first batch, inside the fit
        wrapper = real_make(cfg)
        wrapper.callback = lambda *a: os.kill(os.getpid(), sig)
        return wrapper

    monkeypatch.setattr(pipeline, "make_wrapper", make_wrapper)
    signal.signal(sig, signal.SIG_IGN)  # (put back by the fixture)
    out = tmp_path / "out"
    assert main(["--config", str(small_cfg / "cfg.yaml"), "--output-dir", str(out),
                 "--quiet"]) == 0, capsys.readouterr().err[-2000:]
    assert (out / "parameters.json").is_file()
    assert signal.getsignal(sig) is signal.SIG_IGN


def test_a_stop_with_resuming_off_does_not_say_the_same_command_resumes(
        small_cfg, tmp_path, monkeypatch, capsys, stop_signals_default):
    """optimization.streaming.resume_from_checkpoint: false, stopped by SIGTERM: 'checkpoint
    saved at batch N (...); run the same command again to resume' - the same command
    starts afresh."""
    from homodyne.optimization.checkpoint_manager import CheckpointManager

    real_save, calls = CheckpointManager.save_checkpoint, []

    def save(self, batch_idx, state, **kw):
        calls.append(batch_idx)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_save(self, batch_idx, state, **kw)

    monkeypatch.setattr(CheckpointManager, "save_checkpoint", save)
    raw = yaml.safe_load(open(_checkpointed(small_cfg, tmp_path)))
    raw["optimization"]["streaming"]["resume_from_checkpoint"] = False
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert main(["--config", str(tmp_path / "c.yaml"), "--output-dir", str(tmp_path / "o")]) == 143
    last = capsys.readouterr().err.splitlines()[-1]
    ck = tmp_path / "ck" / f"homodyne_state_batch_{calls[-1]:04d}.h5"
    assert last == (f"homodyne: interrupted by SIGTERM: checkpoint saved at batch {calls[-1]} "
                    f"({ck}); resume_from_checkpoint is false, so the same command starts "
                    "afresh: set it to true to resume")
    assert ck.is_file()
