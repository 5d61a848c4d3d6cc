"""Regression tests for probe19's round on issue 12 (full disks during checkpoint saves,
stale temporary files, another user's files in shared folders): each failed on int7."""

import errno
import logging
import os
from pathlib import Path

import numpy as np

from homodyne.optimization.checkpoint_session import checkpoint_state


def _fit_state(x) -> dict:
    return checkpoint_state([], solver=None, n_failed=0, recovery_actions=[],
                            excluded={"coarse": set(), "full": set()}, stage="full",
                            x=np.asarray(x, float), next_batch=0, partial=None)


def _not_permitted(monkeypatch, *paths: Path) -> None:
    """Unlinking ``paths`` fails with EPERM, as for another user's file in a folder with
    the sticky bit (/tmp, a shared scratch folder); every other path as usual."""
    doomed = {os.path.abspath(p) for p in paths}
    real_unlink, real_path_unlink = os.unlink, Path.unlink

    def unlink(path, *args, **kw):
        if os.path.abspath(path) in doomed:
            raise PermissionError(errno.EPERM, "Operation not permitted", str(path))
        return real_unlink(path, *args, **kw)

    def path_unlink(self, missing_ok=False):
        if os.path.abspath(self) in doomed:
            raise PermissionError(errno.EPERM, "Operation not permitted", str(self))
        return real_path_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(Path, "unlink", path_unlink)


def test_a_killed_runs_temporary_file_this_user_cannot_remove_does_not_stop_the_run(
        tmp_path, monkeypatch, caplog):
    """B1: root's killed run left '.tmp-<pid>s<start>.<host>-...-fit.h5' in a shared folder
    with the sticky bit; another user's run there died with a PermissionError traceback
    (exit 1) as it took the folder's lock (output folder and checkpoint folder alike). The
    file is now left to its owner with a line saying so; the other dead files still go."""
    from homodyne.output import DirectoryLock, _host

    host = _host()
    theirs = tmp_path / f".tmp-999999s5.{host}-deadbeef-fit.h5"
    ours = tmp_path / f".tmp-999998s5.{host}-0123abcd-parameters.json"
    for f in (theirs, ours):
        f.write_bytes(b"x")
    _not_permitted(monkeypatch, theirs)
    lock = DirectoryLock(tmp_path / ".lock")
    with caplog.at_level(logging.INFO, logger="homodyne"):
        lock.acquire()
    assert lock.held
    lock.release()
    assert theirs.exists() and not ours.exists()
    said = " ".join(r.getMessage() for r in caplog.records)
    assert f"{theirs.name} (Operation not permitted)" in said and "left to their owner" in said
