"""Regression tests for probe19's round on issue 12 (full disks during checkpoint saves,
stale temporary files, another user's files in shared folders): each failed on int7."""

import logging
import os

import pytest
from helpers import disk_with_room_for, fit_state, not_permitted

from homodyne.optimization.checkpoint_manager import CheckpointManager
from homodyne.optimization.checkpoint_session import CheckpointSession


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
    not_permitted(monkeypatch, theirs)
    lock = DirectoryLock(tmp_path / ".lock")
    with caplog.at_level(logging.INFO, logger="homodyne"):
        lock.acquire()
    assert lock.held
    lock.release()
    assert theirs.exists() and not ours.exists()
    said = " ".join(r.getMessage() for r in caplog.records)
    assert f"{theirs.name} (Operation not permitted)" in said and "left to their owner" in said


def _batches(manager) -> list[int]:
    return [int(p.name[-7:-3]) for p in manager.list_checkpoints()]


def test_checkpoints_this_user_cannot_delete_stop_neither_pruning_nor_making_room(
        tmp_path, monkeypatch, caplog):
    """B2: root ran this fit first in a shared checkpoint folder with the sticky bit;
    another user's rerun resumed from root's checkpoints, but pruning stopped at the first
    of them it could not delete: none of its own older checkpoints were pruned (29 kept with
    keep_last_checkpoints 3) and every save warned 'older ones not pruned'; on a full disk
    make_room's PermissionError was reported instead of the full disk ('checkpoint at batch
    15 not written: [Errno 1] Operation not permitted') and its own files were not deleted
    to make room. Now each file that can go goes, and one that cannot is said once."""
    fp = "f" * 64
    manager = CheckpointManager(tmp_path, keep_last_n=2)
    session = CheckpointSession(manager, fingerprint=fp)
    for batch in (2, 4):  # root's
        session.save(batch, fit_state([batch, 0, 1]), clock=0.0, wait=True)
    not_permitted(monkeypatch, *manager.list_checkpoints())
    with caplog.at_level(logging.WARNING, logger="homodyne"):
        for batch in (6, 8, 10, 12):
            session.save(batch, fit_state([batch, 0, 1]), clock=0.0, wait=True)
        assert session.errors == []
        assert _batches(manager) == [2, 4, 10, 12]
        disk_with_room_for(monkeypatch, 4)  # the disk is full: the save deletes batch 10
        session.save(14, fit_state([14, 0, 1]), clock=0.0, wait=True)
    assert session.errors == []
    assert _batches(manager) == [2, 4, 12, 14]
    said = [r.getMessage() for r in caplog.records]
    assert sum("cannot be deleted by this user (Operation not permitted)" in m
               for m in said) == 2, said
    assert not any("not pruned" in m or "not written" in m for m in said), said


def test_a_full_disk_held_by_another_fits_checkpoints_is_named_and_nothing_said_replaced(
        tmp_path, monkeypatch, caplog):
    """B3: fit A was killed leaving batches 3, 6 in a checkpoint folder with room for two
    files; fit B (other settings, same folder) then wrote no checkpoint at all: the error
    said only 'No space left on device' (never that A's files, which B never deletes, took
    the room) and B warned 'homodyne_state_batch_0006.h5 ... replaced by this fit's
    checkpoint' for files its failed saves had not replaced."""
    a = CheckpointManager(tmp_path)
    for batch in (3, 6):
        a.save_checkpoint(batch, fit_state([batch, 0, 1]), fingerprint="a" * 64)
    disk_with_room_for(monkeypatch, 2)
    manager = CheckpointManager(tmp_path, keep_last_n=3)
    session = CheckpointSession(manager, fingerprint="b" * 64)
    session.acquire()
    try:
        with caplog.at_level(logging.WARNING, logger="homodyne"):
            for batch in (3, 6, 9):
                session.save(batch, fit_state([batch, 1, 1]), clock=0.0, wait=True)
    finally:
        session.release()
    assert len(session.errors) == 3
    assert "No space left on device; 2 checkpoint(s) of another fit" in session.errors[0]
    assert "remove them if that fit is not to be resumed" in session.errors[0]
    assert not any("replaced by this fit's" in r.getMessage() for r in caplog.records)
    assert _batches(a) == [3, 6] and a.find_latest_valid_checkpoint().name.endswith("6.h5")


def test_another_users_results_in_a_sticky_folder_are_refused_before_the_fit(
        tmp_path, monkeypatch):
    """B4: root's complete set in a shared folder with the sticky bit (1777, as /tmp);
    another user's --overwrite run there fitted to the end, then failed to commit: exit 2
    'could not write the results ... (Operation not permitted); make the folder writable'
    (it is: the sticky bit keeps other users' files). Now refused before the fit."""
    from homodyne.output import OutputDirError, check_output_dir

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    for name in ("fit.h5", "parameters.json"):
        (shared / name).write_text("{}")
    assert check_output_dir(shared, overwrite=True) == shared  # their owner may replace them
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(shared).st_uid + 1)  # another user
    with pytest.raises(OutputDirError) as refused:
        check_output_dir(shared, overwrite=True)
    assert str(refused.value).startswith(
        f"fit.h5, parameters.json in {shared} belong(s) to another user and the folder has "
        "the sticky bit")
    assert "choose another --output-dir" in str(refused.value)
    shared.chmod(0o777)  # without the sticky bit anyone who may write there may replace them
    assert check_output_dir(shared, overwrite=True) == shared
