"""One fit's use of a checkpoint directory: resume and replay, when to save, the writer.

``CheckpointManager`` stores files; a ``CheckpointSession`` is the fit's side of it:

* ``load_resume`` reads the newest valid checkpoint of this fit (checkpoints of other
  data or settings are left alone) and ``replayed``/``in_progress`` hand its completed
  passes and the interrupted pass's partial sums back, so a resumed fit repeats the
  uninterrupted one bit for bit;
* ``due`` says when a save is due (every ``checkpoint_frequency`` batches, at most
  once per ``min_interval_s`` seconds of fitting, never while one is being written);
  ``save`` writes on a background thread (or now, ``wait=True``), ``flush`` waits for
  it, ``final`` writes the end-of-fit state.

``checkpoint_state`` is the one place the on-disk state of a fit is laid out.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from homodyne import __version__
from homodyne.optimization.checkpoint_manager import CheckpointManager
from homodyne.optimization.exceptions import NLSQCheckpointError
from homodyne.optimization.problems import NormalEquations
from homodyne.output import file_size_limit_fix

log = logging.getLogger("homodyne.engine")
STAGES = ("coarse", "full")

# how a stop with a checkpoint saved tells the user to resume
RERUN_SAME = "run the same command again to resume"


@dataclass
class PassRecord:
    """One completed pass: enough to replay it exactly on resume."""

    stage: str
    x: np.ndarray
    ne: NormalEquations
    seconds: float
    n_batches: int
    failed: int = 0  # batches not fitted in this pass (left out or failed)


@dataclass(frozen=True)
class SolverSnapshot:
    """The solver's best point so far, stored with each checkpoint (for inspection)."""

    x: np.ndarray
    cost: float
    iteration: int
    lam: float


@dataclass
class ResumePoint:
    """What a resume restores besides the passes: where it was, what it had excluded."""

    batch: int
    recovery_actions: list[dict]
    excluded: dict[str, set[int]]


def checkpoint_state(passes: list[PassRecord], *, solver: SolverSnapshot | None,
                     n_failed: int, recovery_actions: list[dict],
                     excluded: dict[str, set[int]], stage: str | None, x, next_batch: int,
                     partial: dict | None, summed=None, start=None) -> dict:
    """The state written to a checkpoint: every completed pass (p x p each), the pass in
    progress (its point, next batch, partial sums and ``summed``: per batch before
    ``next_batch``, the points its sums hold), the batches excluded and ``start``, the
    point the fit's passes started from (a data-driven start: not the user's p0)."""
    p = len(x)
    P = passes
    state = {
        "n_passes": len(P),
        "pass_stage": np.array([STAGES.index(r.stage) for r in P], np.int64),
        "pass_x": np.array([r.x for r in P]).reshape(len(P), p),
        "pass_cost": np.array([r.ne.cost for r in P], float),
        "pass_H": np.array([r.ne.H for r in P]).reshape(len(P), p, p),
        "pass_g": np.array([r.ne.g for r in P]).reshape(len(P), p),
        "pass_n": np.array([r.ne.n for r in P], np.int64),
        "pass_seconds": np.array([r.seconds for r in P], float),
        "pass_batches": np.array([r.n_batches for r in P], np.int64),
        "pass_failed": np.array([r.failed for r in P], np.int64),
        "parameters": np.asarray(x if solver is None else solver.x, float),
        "loss": float(np.nan if solver is None else solver.cost),
        "iteration": int(0 if solver is None else solver.iteration),
        "damping": float(np.nan if solver is None else solver.lam),
        "batches_failed": n_failed,
        "recovery_actions": recovery_actions or None,
        "current_stage": stage or "done",
        "current_x": np.asarray(x, float),
        "next_batch": int(next_batch),
    }
    for s in STAGES:
        state[f"excluded_{s}"] = np.array(sorted(excluded[s]) or [-1], np.int64)
    if start is not None:
        state["start"] = np.asarray(start, float)
    if partial is not None:
        state["partial"] = {k: np.asarray(v) for k, v in partial.items()}
        if summed is not None:
            state["partial_points"] = np.asarray(summed, np.int64)
    return state


PASS_FIELDS = ("pass_stage", "pass_x", "pass_cost", "pass_H", "pass_g", "pass_n",
               "pass_seconds", "pass_batches", "pass_failed")


def check_fit_state(state: dict) -> None:
    """ValueError unless ``state`` holds every field a fit reads when it resumes, each of
    the shape ``checkpoint_state`` writes: a sealed file of another version (the
    fingerprint holds none) or an edited one crashed the resume or skipped batches."""
    missing = [k for k in (*PASS_FIELDS, "parameters", "current_x", "current_stage",
                           "next_batch", "batch_idx", *(f"excluded_{s}" for s in STAGES))
               if k not in state]
    if missing:
        raise ValueError(f"fields {missing} are missing (written by another version?)")
    n, x = int(state["n_passes"]), np.asarray(state["current_x"])
    p = x.size
    for k in PASS_FIELDS:
        lead = np.shape(state[k])[:1]
        if lead != (n,):
            raise ValueError(f"{k} has shape {np.shape(state[k])}, expected {n} passes")
    if not isinstance(state["current_stage"], str) or \
            state["current_stage"] not in (*STAGES, "done"):
        raise ValueError(f"current_stage = {state['current_stage']!r} is not a stage")
    for key in ("parameters", "start"):
        if key in state and np.shape(state[key]) != (p,):
            raise ValueError(f"{key} has shape {np.shape(state[key])}, expected ({p},)")
    for s in STAGES:
        ex = np.asarray(state[f"excluded_{s}"])
        if ex.ndim != 1 or ex.dtype.kind not in "iu" or ex.size > 10_000_000:
            raise ValueError(f"excluded_{s} is not a list of batch numbers")
        _check_excluded(state, s, ex[ex >= 0])
    written_by = state.get("homodyne_version")
    if written_by != __version__:  # its sums may not be what this version computes
        raise ValueError(f"written by homodyne {written_by}, this is {__version__}")
    partial = state.get("partial")
    if partial is not None and not isinstance(partial, dict):
        raise ValueError("partial is not a group of sums")
    actions = state.get("recovery_actions")  # (text other than '[{...' is read as text)
    if actions is not None and not (isinstance(actions, list) and
                                    all(isinstance(a, dict) for a in actions)):
        raise ValueError("recovery_actions is not a list of records")


def _check_excluded(state: dict, stage: str, excluded: np.ndarray) -> None:
    """Batches excluded from ``stage`` are batches of it that failed: each completed pass of
    the stage counts them as failed, and they lie before the pass in progress's next batch
    (an edit excluding good batches would be fitted as missing data)."""
    if not excluded.size:
        return
    done = [k for k in range(int(state["n_passes"]))
            if STAGES[int(state["pass_stage"][k])] == stage]
    if done:
        limit = min(int(state["pass_batches"][k]) for k in done)
        counted = min(int(state["pass_failed"][k]) for k in done)
    elif state["current_stage"] == stage:
        limit = counted = int(state["next_batch"])
    else:
        limit = counted = 0
    if len(set(excluded.tolist())) != excluded.size or excluded.max() >= limit or \
            excluded.size > counted:
        raise ValueError(f"excluded_{stage} lists {excluded.size} batches that its passes "
                         "do not count as failed")


@dataclass
class CheckpointSession:
    """The checkpoints of one fit in ``manager``'s directory, tagged with ``fingerprint``."""

    manager: CheckpointManager
    fingerprint: str = ""
    replay: dict | None = None
    resumed_from: int | None = None
    last_path: str | None = None
    last_batch: int | None = None  # the batch of the last checkpoint written (last_path)
    resumes: bool = True  # resume_from_checkpoint: the same command resumes from them
    save_seconds: list[float] = field(default_factory=list)
    # CPU a save costs: the snapshot on the fitting thread + the writer thread's CPU time
    cpu_seconds: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _last_batch: int = 0
    _failing: tuple | None = None  # why the last save failed (None: it did not)
    _short_of_room: bool = False  # a save had to delete older checkpoints (said once)
    _last_time: float = -math.inf  # on the fit clock
    _writer: ThreadPoolExecutor | None = None
    _pending: Future | None = None

    def __post_init__(self):
        self.manager.fingerprint = self.fingerprint  # it resumes and prunes this fit's files
        self.manager.state_check = check_fit_state  # a file this version cannot resume: skipped

    # --- the directory -----------------------------------------------------------------
    def acquire(self) -> None:
        self.manager.acquire_lock()

    def release(self) -> None:
        self.manager.release_lock()

    # --- resume ------------------------------------------------------------------------
    def load_resume(self) -> ResumePoint | None:
        """Read the newest valid checkpoint of this fit (other fits' files are ignored;
        the fingerprint check below guards a manager used without one)."""
        path = self.manager.find_latest_valid_checkpoint()
        if path is None:
            if self.manager.refused:  # each said why; the fresh start must be said too
                n = len(self.manager.refused)
                log.warning("none of this fit's %d checkpoint%s in %s can be resumed from: "
                            "the fit starts from the beginning", n, "" if n == 1 else "s",
                            self.manager.checkpoint_dir)
            return None
        state = self.manager.load_checkpoint(path)
        if state.get("fingerprint") != self.fingerprint:
            raise NLSQCheckpointError(
                f"checkpoint {path} belongs to different data or settings (fingerprint "
                f"{str(state.get('fingerprint'))[:12]}… vs {self.fingerprint[:12]}…); refusing "
                "to resume from it. Remove the directory or point checkpoint_dir elsewhere.")
        self.replay = state
        self.resumed_from = int(state["batch_idx"])
        self._last_batch = self.resumed_from
        # what a failed save or a stop falls back to until this run writes its own
        self.last_path, self.last_batch = str(path), self.resumed_from
        excluded: dict[str, set[int]] = {}
        for stage in STAGES:
            key = f"excluded_{stage}"
            if key in state:
                excluded[stage] = {int(b) for b in np.atleast_1d(state[key]) if b >= 0}
        log.info("Detects existing checkpoint and resumes from batch %d (%s)",
                 self.resumed_from, path)
        return ResumePoint(self.resumed_from, list(state.get("recovery_actions") or []),
                           excluded)

    def same_start(self, start: np.ndarray) -> bool:
        """Whether the checkpoint being resumed started its passes at ``start`` (one
        without a stored start, written before starts were stored, is taken as not): its
        passes, batch count and exclusions belong to that path only."""
        stored = None if self.replay is None else self.replay.get("start")
        return stored is not None and np.array_equal(np.asarray(stored), start)

    def forget_resume(self) -> list:
        """Drop the checkpoint being resumed and delete this fit's checkpoints (they hold
        another path, and a newer batch number would outrank this run's saves)."""
        self.replay = None
        self.resumed_from = None
        self._last_batch = 0
        return self.manager.remove_checkpoints()

    def replayed(self, index: int, stage: str, x: np.ndarray
                 ) -> tuple[NormalEquations, float, int, int] | None:
        """The stored result of completed pass ``index``, if it matches (else None)."""
        r = self.replay
        if r is None or index >= int(r["n_passes"]):
            return None
        if STAGES[int(r["pass_stage"][index])] != stage or \
                not np.array_equal(r["pass_x"][index], x):
            log.warning("resume: pass %d does not replay identically; recomputing from here",
                        index)
            self.replay = None
            return None
        ne = NormalEquations(float(r["pass_cost"][index]), np.array(r["pass_H"][index]),
                             np.array(r["pass_g"][index]), int(r["pass_n"][index]))
        failed = int(r["pass_failed"][index]) if "pass_failed" in r else 0
        return (ne, float(r["pass_seconds"][index]), int(r["pass_batches"][index]),
                failed)

    def holds_pass(self, index: int) -> bool:
        """Whether the checkpoint being resumed holds pass ``index``, completed or in
        progress (what happened before that pass is in its state)."""
        r = self.replay
        return r is not None and (index < int(r["n_passes"]) or
                                  (index == int(r["n_passes"]) and "partial" in r))

    def in_progress(self, index: int, stage: str, x: np.ndarray
                    ) -> tuple[int, dict[str, np.ndarray], np.ndarray | None] | None:
        """(next_batch, partial sums, points per batch summed) of the interrupted pass
        ``index``, if it is this one."""
        r = self.replay
        if r is None or "partial" not in r or int(r["n_passes"]) != index:
            return None
        if r["current_stage"] != stage or not np.array_equal(r["current_x"], x):
            return None
        self.replay = None
        summed = r.get("partial_points")
        return (int(r["next_batch"]), {k: np.asarray(v) for k, v in r["partial"].items()},
                None if summed is None else np.asarray(summed))

    # --- saving ------------------------------------------------------------------------
    def due(self, batches_done: int, clock: float) -> bool:
        """``checkpoint_frequency`` batches since the last save, at least
        ``min_interval_s`` seconds of fitting ago, and no save still being written (a
        save is then skipped, never a stall), except with ``min_interval_s`` = 0: saves
        every ``checkpoint_frequency`` batches, waiting for the previous one (a skipped
        save left the kept checkpoints tens of batches apart, e.g. 19, 59, 75). Asked
        after each call: a save falls at the first call boundary at or after it is due."""
        m = self.manager
        return (batches_done - self._last_batch >= m.checkpoint_frequency
                and clock - self._last_time >= m.min_interval_s
                and (self._pending is None or self._pending.done() or m.min_interval_s == 0))

    def save(self, batch: int, state: dict, *, clock: float, snapshot_s: float = 0.0,
             wait: bool = False) -> None:
        """Write ``state`` as the checkpoint of ``batch``: on the writer thread, so the
        file I/O overlaps the next batches, or now (``wait``)."""
        if self._pending is not None:
            self._pending.result()
        self._last_batch = batch
        self._last_time = clock
        if wait:
            self._write(batch, state, snapshot_s)
            return
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="homodyne-ckpt")
        self._pending = self._writer.submit(self._write, batch, state, snapshot_s)

    def _write(self, batch: int, state: dict, snapshot_s: float = 0.0) -> None:
        t0, c0 = time.perf_counter(), time.thread_time()
        path = self._save(batch, state)
        if path is None:
            return
        self.last_path, self.last_batch = str(path), batch
        self.save_seconds.append(time.perf_counter() - t0)
        self.cpu_seconds.append(snapshot_s + time.thread_time() - c0)

    def _save(self, batch: int, state: dict):
        """Save and prune; a full disk or an I/O error (h5py raises RuntimeError when it
        closes a file on a full disk) only warns: the previous checkpoint stays valid
        (atomic writes), the fit goes on, and the error is reported. Path or None."""
        try:
            path = self._save_or_make_room(batch, state)
        except (OSError, RuntimeError) as exc:
            msg = f"checkpoint at batch {batch} not written: {exc}"
            if getattr(exc, "errno", None) == errno.EFBIG:
                msg += f"; {file_size_limit_fix()}"
            self.errors.append(msg)  # (all of them: streaming_diagnostics.checkpoint_errors)
            reason = (type(exc), getattr(exc, "errno", None))
            if reason != self._failing:  # a full disk fails every save: said once, not per save
                log.error("%s; %s; later saves failing the same way are not reported", msg,
                          self.kept_checkpoint())
            self._failing = reason
            return None
        self._failing = None
        try:  # the checkpoint is written: a failure here only leaves older files behind
            self.manager.cleanup_old_checkpoints()
        except (OSError, NLSQCheckpointError) as exc:  # (the folder taken by another run)
            log.warning("checkpoint at batch %d written; older ones not pruned: %s", batch, exc)
        return path

    def _save_or_make_room(self, batch: int, state: dict):
        """Save; a disk without room for it (a folder with room for fewer files than
        keep_last_checkpoints + 1 failed every later save) deletes this fit's older
        checkpoints, never its newest valid one, and tries once more."""
        save = self.manager.save_checkpoint
        try:
            return save(batch, state, fingerprint=self.fingerprint)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            why = os.strerror(exc.errno)
            deleted = self.manager.make_room()
            if not deleted:
                raise self._no_room(exc) from None
            try:
                path = save(batch, state, fingerprint=self.fingerprint)
            except OSError as again:
                if again.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                raise self._no_room(again, deleted) from None
        if not self._short_of_room:
            self._short_of_room = True
            log.warning("checkpoint folder %s had no room for the checkpoint at batch %d "
                        "(%s): this fit's older checkpoints were deleted to make room (the "
                        "newest valid one is never deleted), so it keeps fewer "
                        "than keep_last_checkpoints = %d", self.manager.checkpoint_dir, batch,
                        why, self.manager.keep_last_n)
        return path

    def _no_room(self, exc: OSError, deleted: list[Path] | None = None) -> OSError:
        """``exc`` (no room), naming this fit's older checkpoints deleted to make room for
        a save that failed all the same (``deleted``: gone without a word before), and
        other fits' checkpoints that take room in the folder: this fit never deletes them,
        so without a word every save of it failed for good."""
        others = self.manager.others()
        if not others and not deleted:
            return exc
        why = exc.strerror or str(exc)
        if deleted:
            names = ", ".join(p.name for p in deleted)
            one = len(deleted) == 1
            why += (f"; this fit's older checkpoint{'' if one else 's'} {names} "
                    f"{'was' if one else 'were'} deleted to make room, and it still did not "
                    "fit")
        if not others:
            return OSError(exc.errno, why)
        kb = sum(p.stat().st_size for p in others if p.is_file()) / 1024
        return OSError(exc.errno, f"{why}; {len(others)} checkpoint(s) of another "
                       f"fit (other data or settings, {kb:.0f} kB) take room in "
                       f"{self.manager.checkpoint_dir} and are never deleted by this fit: "
                       "remove them if that fit is not to be resumed, or give each fit its "
                       "own optimization.streaming.checkpoint_dir")

    def kept_checkpoint(self) -> str:
        """What a failed save leaves to resume from: the last checkpoint written, while it
        is still on disk (a checkpoint folder removed or replaced by a file took it along)."""
        if self.last_path is None:
            return "no checkpoint of this run is on disk yet"
        if not Path(self.last_path).is_file():
            return f"the last one written ({self.last_path}) is no longer on disk"
        return f"the previous checkpoint stays valid (batch {self.last_batch}, {self.last_path})"

    def stop_line(self, batch: int) -> str:
        """How a stop at ``batch`` names the checkpoint a rerun resumes from: the one just
        saved, else (that save failed) the last one still on disk, else none."""
        rerun = (RERUN_SAME if self.resumes else
                 "resume_from_checkpoint is false, so the same command starts afresh: set it "
                 "to true to resume")
        if self.last_batch == batch and self.last_path and Path(self.last_path).is_file():
            return f"checkpoint saved at batch {batch} ({self.last_path}); {rerun}"
        if self.last_path and Path(self.last_path).is_file():
            return (f"the checkpoint at batch {batch} could not be written (the error is above); "
                    f"the last one, at batch {self.last_batch} ({self.last_path}), is kept: "
                    f"{rerun}{' from there' if self.resumes else ''}")
        return ("no checkpoint of this run could be written or is left on disk (the error is "
                "above); the best parameters so far are kept, the next run starts afresh")

    def flush(self) -> None:
        """Wait for a checkpoint still being written (end of fit, signals)."""
        if self._pending is not None:
            self._pending.result()
            self._pending = None
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None

    def final(self, batch: int, state: dict) -> None:
        """The end-of-fit checkpoint (written now, after any pending one); a failed save
        warns and the fit still ends with its results. Counted with the periodic saves
        (streaming_diagnostics.checkpoint_saves counts every checkpoint written)."""
        self.flush()
        self._write(batch, state)
