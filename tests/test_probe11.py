"""Regression tests for probe11's findings (issue 12, a fresh round of probing signals,
disks, checkpoints and concurrency): a run whose output folder became unusable mid-run
ends with its one clean error, never a traceback from cleaning up its staged files."""

import os
import shutil

from homodyne.output import FAILED_LOG, ResultSet


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
