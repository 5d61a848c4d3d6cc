"""One pass over the data, made robust: diagnostics, fault tolerance, checkpoints, resume.

``PassRunner.evaluate(x)`` sums the normal equations over every batch. Around that
sum, a ``FitMonitor`` shared by all passes of one fit:

* validates each batch (finite sums, at least one valid point) and keeps a batch
  that fails in a stage's first pass out of every later pass of that stage (the
  objective stays the same from pass to pass); a batch that fails later makes that
  trial point fail, and the solver rejects it (reduce step size);
* retries a call that raises (MemoryError: with batches halved), up to
  ``max_retries_per_batch``;
* stops with NLSQConvergenceError when the batch success rate of a stage's first
  pass is below ``min_success_rate`` (NLSQNumericalError when every failure there is
  a non-finite model, e.g. an overflow at p0);
* calls ``callback(batch_idx, params, loss, success)`` after each batch; ``False``
  stops the fit cleanly with the best result so far;
* saves a checkpoint every ``checkpoint_frequency`` batches through its
  ``CheckpointSession``: all completed passes (p x p each), the partial sums of the
  pass in progress and the next batch. On resume the solver re-runs
  deterministically: completed passes are replayed from the checkpoint and the
  interrupted pass continues from its batch, so the result is bit-for-bit that of an
  uninterrupted run.

``PassRunner._evaluate`` runs a pass in stages: replay, begin, calls, account,
checkpoint-or-stop, close, after-pass.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from homodyne.jaxconf import jax
from homodyne.memory import memory_allows, trim_heap
from homodyne.optimization.checkpoint_session import (
    STAGES,
    CheckpointSession,
    PassRecord,
    SolverSnapshot,
    checkpoint_state,
)
from homodyne.optimization.exceptions import (
    Interrupted,
    NLSQConvergenceError,
    NLSQNumericalError,
    StopFit,
)
from homodyne.optimization.problems import ChunkLayout, NormalEquations
from homodyne.optimization.settings import FaultSettings

if TYPE_CHECKING:
    from homodyne.optimization.interfaces import DataSource, Problem
    from homodyne.optimization.progress import ProgressReporter
    from homodyne.optimization.recovery_strategies import RecoveryStrategyApplicator

log = logging.getLogger("homodyne.engine")


# callback(batch_idx, params, loss, success); False stops the fit
BatchCallback = Callable[[int, np.ndarray, float, bool], "bool | None"]


@dataclass
class FitClock:
    """Seconds spent in a fit's passes (the solver's p x p work between passes is
    negligible): the time checkpoint intervals are measured in."""

    busy_s: float = 0.0
    _pass_t0: float | None = None

    def start(self) -> None:
        self._pass_t0 = time.monotonic()

    def stop(self) -> None:
        if self._pass_t0 is not None:
            self.busy_s += time.monotonic() - self._pass_t0
            self._pass_t0 = None

    def seconds(self) -> float:
        running = time.monotonic() - self._pass_t0 if self._pass_t0 is not None else 0.0
        return self.busy_s + running


@dataclass
class FitMonitor:
    """State shared by the passes of one fit: batch accounting, exclusions, failures,
    callbacks, progress, the recovery log, signals, and its checkpoint session."""

    faults: FaultSettings = field(default_factory=FaultSettings)
    checkpoints: CheckpointSession | None = None
    callback: BatchCallback | None = None
    progress: ProgressReporter | None = None
    applicator: RecoveryStrategyApplicator | None = None
    passes: list[PassRecord] = field(default_factory=list)
    batches_done: int = 0
    failures: list[dict] = field(default_factory=list)
    error_types: Counter[str] = field(default_factory=Counter)
    excluded: dict[str, set[int]] = field(default_factory=lambda: {s: set() for s in STAGES})
    recovery_actions: list[dict] = field(default_factory=list)
    lm_info: SolverSnapshot | None = None
    signal_received: int | None = None
    signal_acted_on: bool = False  # the fit stopped for it (False: it came after the fit)
    clock: FitClock = field(default_factory=FitClock)
    start: np.ndarray | None = None  # where the passes start (stored with each checkpoint)

    # --- resume -------------------------------------------------------------------
    def load_resume(self) -> None:
        """Continue from the newest valid checkpoint of this fit, if there is one."""
        point = self.checkpoints.load_resume() if self.checkpoints is not None else None
        if point is None:
            return
        self.batches_done = point.batch
        self.recovery_actions = point.recovery_actions
        self.excluded.update(point.excluded)

    def begin_path(self, start: np.ndarray) -> None:
        """The passes start at ``start`` (the user's p0 or a data-driven start). A resumed
        checkpoint whose passes started elsewhere is not this path: its passes, batch
        count, exclusions and recovery log are dropped and its files deleted, and the fit
        starts over (a warning says so)."""
        self.start = np.array(start, np.float64)
        ck = self.checkpoints
        if ck is None or ck.replay is None or ck.same_start(self.start):
            return
        removed = ck.forget_resume()
        self.batches_done = 0
        self.recovery_actions = []
        self.excluded = {s: set() for s in STAGES}
        log.warning("resume: the checkpoint's passes started from another point than this "
                    "fit's (e.g. a start estimate interrupted, or written before starts were "
                    "stored); not resumed, its %d file(s) of this fit deleted, starting over",
                    len(removed))

    def replayed(self, index: int, stage: str, x: np.ndarray):
        """The stored result of completed pass ``index`` when resuming (else None)."""
        ck = self.checkpoints
        return ck.replayed(index, stage, x) if ck is not None else None

    def in_progress(self, index: int, stage: str, x: np.ndarray):
        """(next_batch, partial sums) of the interrupted pass ``index`` when resuming."""
        ck = self.checkpoints
        return ck.in_progress(index, stage, x) if ck is not None else None

    # --- checkpoints ------------------------------------------------------------------
    def save_due(self) -> bool:
        ck = self.checkpoints
        return ck is not None and ck.due(self.batches_done, self.clock.seconds())

    def maybe_save(self, stage, x, next_batch, partial, force: bool = False,
                   started: float | None = None, summed=None) -> None:
        """Snapshot the state (p x p arrays, cheap) and write it on a background thread,
        so the file I/O overlaps the next batches. A save that is not due is skipped
        (never a stall); ``force`` waits for a pending one and writes now."""
        ck = self.checkpoints
        if ck is None or (not force and not self.save_due()):
            return
        state = self._state(stage, x, next_batch, partial, summed)
        snapshot_s = time.perf_counter() - started if started is not None else 0.0
        ck.save(self.batches_done, state, clock=self.clock.seconds(), snapshot_s=snapshot_s,
                wait=force)

    def flush(self) -> None:
        """Wait for a checkpoint still being written (end of fit, signals)."""
        if self.checkpoints is not None:
            self.checkpoints.flush()

    def check_signal(self, stage, x, next_batch, partial, summed=None) -> None:
        """After each chunk: on SIGINT/SIGTERM/SIGHUP save a checkpoint now and stop."""
        if self.signal_received is None:
            return
        import signal as _signal

        name = _signal.Signals(self.signal_received).name
        self.maybe_save(stage, x, next_batch, partial, force=True, summed=summed)
        ck = self.checkpoints
        if ck is not None:
            how = ck.stop_line(self.batches_done)
        else:
            how = ("checkpoints are off (optimization.streaming.enable_checkpoints: true "
                   "makes the next run resume); the best parameters so far are kept")
        self.signal_acted_on = True
        raise Interrupted(self.signal_received, f"interrupted by {name}: {how}")

    def stop_before_passes(self, during: str) -> None:
        """A signal arrived before the first pass (``during`` something else): stop with
        nothing saved, so a checkpoint never holds a path the next run would not take;
        the last checkpoint, if any, stays the one to resume."""
        import signal as _signal

        signum = self.signal_received
        assert signum is not None  # (called only once one arrived)
        name = _signal.Signals(signum).name
        self.signal_acted_on = True
        raise Interrupted(signum, f"interrupted by {name} during {during}, "
                          "before the first pass: nothing saved; run the same command "
                          "again to start (or resume) the fit")

    def save_final(self, x) -> None:
        if self.checkpoints is not None:
            self.checkpoints.final(self.batches_done, self._state(None, x, 0, None))

    def _state(self, stage, x, next_batch, partial, summed=None) -> dict:
        return checkpoint_state(self.passes, solver=self.lm_info, n_failed=len(self.failures),
                                recovery_actions=self.recovery_actions,
                                excluded=self.excluded, stage=stage, x=x,
                                next_batch=next_batch, partial=partial, summed=summed,
                                start=self.start)

    # --- diagnostics ------------------------------------------------------------------
    def diagnostics(self) -> dict:
        """The guide's ``streaming_diagnostics``. A batch left out of a pass (it failed
        in that stage's first pass) counts as failed in that pass, so the success rates
        say which share of the data each pass fitted; nothing is pooled over passes."""
        full = [r for r in self.passes if r.stage == "full"]
        per_pass = [{"stage": r.stage, "batches": r.n_batches, "failed": r.failed,
                     "success_rate": _rate(r.n_batches, r.failed)} for r in self.passes]
        n_data = max((r.n_batches for r in full), default=0)
        ck = self.checkpoints
        seconds = ck.save_seconds if ck is not None else []
        return {
            "total_batches_processed": self.batches_done,
            # over the full passes: batches fitted / batches of the data, pass by pass
            "batch_success_rate": _rate(sum(r.n_batches for r in full),
                                        sum(r.failed for r in full)),
            "batch_success_rate_per_pass": per_pass,
            "failed_batch_indices": sorted({f["batch"] for f in self.failures}),
            "error_type_distribution": dict(self.error_types),
            # solver evaluations (full passes) a batch took part in, averaged over the
            # data's batches: each pass is one Levenberg-Marquardt trial over all data
            "average_iterations_per_batch":
                sum(r.n_batches - r.failed for r in full) / n_data if n_data else 0.0,
            "excluded_batches": {s: sorted(v) for s, v in self.excluded.items()},
            "checkpoint_saves": len(seconds),
            "checkpoint_errors": list(ck.errors) if ck is not None else [],
            "checkpoint_save_seconds_max": max(seconds, default=0.0),
            "checkpoint_cpu_seconds_total": float(sum(ck.cpu_seconds)) if ck is not None
            else 0.0,
            "resumed_from_batch": ck.resumed_from if ck is not None else None,
        }

    def record_recovery(self, batch: int, strategy: str) -> None:
        self.recovery_actions.append({"batch": int(batch), "strategy": strategy})

    def record_restart(self, strategy: str) -> None:
        """Log a recovery restart made before the next pass. A resumed fit replays the
        path up to it: where the checkpoint holds that pass (completed or in progress),
        its restored log already has the restart and it is not logged twice."""
        ck = self.checkpoints
        if ck is not None and ck.holds_pass(len(self.passes)):
            return
        self.record_recovery(self.batches_done, strategy)


def _rate(batches: int, failed: int) -> float:
    return (batches - failed) / batches if batches else 1.0


def _summed_problem(points, start: int, partial: dict, excluded: set[int],
                    n_batches: int) -> str | None:
    """What is wrong with a resumed pass's record of the points summed per batch, or None:
    it must cover exactly batches 0..start-1, agree with the partial sums' point count,
    hold nothing for an excluded batch and something for every other batch of the data
    (one that failed makes this pass a failed trial: recomputing it costs nothing). A next
    batch edited to another valid one (batches skipped or summed twice) or sums of another
    pass are caught here."""
    if points is None:
        return "carry no record of the batches summed (written by another version?)"
    points = np.asarray(points)
    if points.ndim != 1 or points.dtype.kind not in "iu" or points.size != start:
        return f"record {points.size} batches summed, not the {start} before the next batch"
    total = int(np.asarray(partial.get("n", -1))) + int(np.asarray(partial.get("n_band", 0)))
    if np.any(points < 0) or int(points.sum()) != total:
        return (f"hold {total:,} points but the batches summed record {int(points.sum()):,}")
    if any(points[b] for b in excluded if 0 <= b < start):
        return "hold points of a batch that is excluded"
    empty = [b for b in np.flatnonzero(points[:n_batches] == 0) if b not in excluded]
    if empty:
        return f"hold no points of batch {empty[0]}, which is not excluded"
    return None


@dataclass
class _Pass:
    """One pass in progress: its point, the running sums and what went wrong so far."""

    index: int
    x: np.ndarray
    px: np.ndarray
    ctx: object
    acc: dict
    start: int
    first: bool
    excluded: set[int]
    trial_failed: bool = False
    n_real: int = 0
    n_failed: int = 0
    # per batch from the pass's first, the points its sums hold (0: left out or failed):
    # stored with the partial sums, so a resume can prove they cover batches 0..start-1
    summed: list[int] = field(default_factory=list)


def data_layout(data: DataSource, factor: int = 1) -> ChunkLayout:
    """How a pass's calls walk ``data`` (batches split ``factor``-fold after a memory
    error); data known to be finite (``data.finite``) skip the per-point check."""
    return ChunkLayout(data.batch_size // factor, data.batches_per_call * factor, data.stride,
                       bool(getattr(data, "finite", False)))


# data -> the background compilation of its pass kernel (``compile_ahead``)
_AHEAD: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compile_ahead(problem: Problem, data: DataSource, x: np.ndarray) -> None:
    """Compile the kernel of ``data``'s passes on a background thread, so that it overlaps
    the coarse stage (XLA compiles without the GIL); the first pass over ``data`` waits
    for it. The kernel is called once with no valid point (it computes nothing), which
    puts the compiled executable in its jit cache. Anything that goes wrong here is
    ignored: the first pass then compiles (and reports) exactly as without it."""
    columns = getattr(data, "call_columns", None)
    if columns is None or getattr(data, "devices", None):
        return
    layout = data_layout(data)

    def work():
        px = np.asarray(x, dtype=np.float64)
        ctx = problem.prepare(px)  # a host computation: its values are never used
        out = problem.chunk_fn(layout)(px, ctx, columns(), 0, 0, 0,
                                       np.ones(layout.n_batches, bool))
        jax.block_until_ready(out)

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="homodyne-compile")
    _AHEAD[data] = pool.submit(work)
    pool.shutdown(wait=False)


def _wait_for_compilation(data) -> None:
    ahead = _AHEAD.pop(data, None)
    if ahead is not None:
        try:
            ahead.result()
        except Exception:  # noqa: BLE001 - the pass itself compiles and reports instead
            log.debug("compiling ahead failed", exc_info=True)


class PassRunner:
    """Evaluates the normal equations at a parameter vector: one pass over ``data``."""

    def __init__(self, problem: Problem, data: DataSource, stage: str = "full",
                 monitor: FitMonitor | None = None,
                 n_devices: int = 1):
        self.problem = problem
        self.data = data
        self.stage = stage
        self.monitor = monitor or FitMonitor()
        self.n_devices = n_devices
        self._placed: dict = {}
        self._zeros: dict = {}
        self._home = None
        self._first_done = any(r.stage == stage for r in self.monitor.passes)

    def _zero_sums(self) -> dict:
        """A pass's running sums, zero, as host arrays (shapes from the problem's zeros,
        traced once per layout, never compiled)."""
        layout = self._layout()
        if layout not in self._zeros:
            self._zeros[layout] = jax.eval_shape(lambda: self.problem.zero_stats(layout))
        return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype),
                                      self._zeros[layout])

    def _layout(self, factor=1) -> ChunkLayout:
        return data_layout(self.data, factor)

    def _on_device(self, px, ctx, device):
        """Parameters and per-pass context placed on ``device`` (cached per pass)."""
        if device is None:
            return px, ctx
        key = id(device)
        if key not in self._placed:
            self._placed[key] = (jax.device_put(px, device), jax.device_put(ctx, device))
        return self._placed[key]

    def _launch(self, px, ctx, chunk, mask):
        """Dispatch one call without waiting for it (JAX runs it asynchronously)."""
        fn = self.problem.chunk_fn(self._layout())
        pxd, ctxd = self._on_device(px, ctx, chunk.device)
        m = mask if chunk.device is None else jax.device_put(mask, chunk.device)
        return fn(pxd, ctxd, chunk.columns, chunk.first_batch, chunk.origin, chunk.n_valid, m)

    def _finish(self, out, chunk, px, ctx, mask):
        """Wait for a launched call; on any failure fall back to the retrying path."""
        if out is not None:
            try:
                stats, (n, cost, ok) = out
                n, cost, ok = (np.asarray(v) for v in (n, cost, ok))
                if chunk.device is not None:
                    stats = jax.device_put(stats, self._home)
                return stats, n, cost, ok, None
            except (MemoryError, RuntimeError, ValueError, FloatingPointError):
                pass
        return self._call(px, ctx, chunk, mask)

    def _call(self, px, ctx, chunk, mask):
        """Run one call; on failure retry (halving batches on memory errors)."""
        mon = self.monitor
        factor, attempt = 1, 0
        px, ctx = self._on_device(px, ctx, chunk.device)
        while True:
            try:
                layout = self._layout(factor)
                fn = self.problem.chunk_fn(layout)
                m = np.repeat(mask, factor)
                stats, (n, cost, ok) = fn(px, ctx, chunk.columns, chunk.first_batch * factor,
                                          chunk.origin, chunk.n_valid, m)
                n, cost, ok = (np.asarray(v) for v in (n, cost, ok))
                if chunk.device is not None:
                    stats = jax.device_put(stats, self._home)
                if factor > 1:
                    n = n.reshape(-1, factor).sum(1)
                    cost = cost.reshape(-1, factor).sum(1)
                    ok = ok.reshape(-1, factor).all(1)
                return stats, n, cost, ok, None
            except (MemoryError, RuntimeError, ValueError, FloatingPointError) as exc:
                if isinstance(exc, StopFit):
                    raise
                name = type(exc).__name__
                memory = isinstance(exc, MemoryError) or "RESOURCE_EXHAUSTED" in str(exc)
                if not mon.faults.enable_fault_tolerance or \
                        attempt >= mon.faults.max_retries_per_batch:
                    log.warning("batches %d..%d failed after %d retries: %s: %s",
                                chunk.pass_batch, chunk.pass_batch + chunk.n_batches - 1,
                                attempt, name, exc)
                    if not mon.faults.enable_fault_tolerance:
                        raise
                    return None, None, None, None, name
                attempt += 1
                if memory and self.data.batch_size % (factor * 2) == 0:
                    factor *= 2
                    mon.record_recovery(mon.batches_done + chunk.pass_batch, mon.applicator
                                        .describe("smaller_batch") if mon.applicator else
                                        "smaller_batch (0.5x)")

    def evaluate(self, x) -> NormalEquations:
        """One pass at ``x`` (or its stored result when resuming)."""
        self.monitor.clock.start()
        try:
            return self._evaluate(x)
        finally:
            self.monitor.clock.stop()

    def _evaluate(self, x) -> NormalEquations:
        x = np.asarray(x, dtype=np.float64)
        index = len(self.monitor.passes)
        ne = self._replay(index, x)
        if ne is not None:
            return ne
        t0 = time.perf_counter()
        run = self._begin(index, x)
        for chunk, mask, out in self._calls(run):
            if self.n_devices > 1:
                stats, n, cost, ok, error = self._finish(out, chunk, run.px, run.ctx, mask)
            else:
                stats, n, cost, ok, error = self._call(run.px, run.ctx, chunk, mask)
            self._account(run, chunk, mask, stats, n, cost, ok, error)
            self._checkpoint_or_stop(run, chunk.pass_batch + self.data.batches_per_call)
        ne = self._close(run)
        seconds = time.perf_counter() - t0
        self.monitor.passes.append(PassRecord(self.stage, x.copy(), ne, seconds, run.n_real,
                                                run.n_failed))
        self._after_pass(seconds, run.excluded)
        return ne

    def _replay(self, index: int, x: np.ndarray) -> NormalEquations | None:
        """Stage 0: a completed pass stored in the checkpoint being resumed from."""
        cached = self.monitor.replayed(index, self.stage, x)
        if cached is None:
            return None
        ne, seconds, nb, failed = cached
        self.monitor.passes.append(PassRecord(self.stage, x.copy(), ne, seconds, nb, failed))
        self._first_done = True
        return ne

    def _begin(self, index: int, x: np.ndarray) -> _Pass:
        """Stage 1: per-pass context, zero sums (or an interrupted pass's partial sums)."""
        mon = self.monitor
        _wait_for_compilation(self.data)
        px = x  # a host array goes in as it is: jnp.asarray would compile a conversion
        ctx = self.problem.prepare(px)
        acc = self._zero_sums()
        start, summed = 0, list[int]()
        resumed = mon.in_progress(index, self.stage, x)
        if resumed is not None:
            start, partial, points = resumed
            shapes = {k: np.shape(v) for k, v in acc.items()}
            problem: str | None = "do not fit this pass"  # another problem or version
            if {k: np.shape(v) for k, v in partial.items()} == shapes and \
                    0 <= start <= self.data.n_batches:
                problem = _summed_problem(points, start, partial, mon.excluded[self.stage],
                                          self.data.n_batches)
            if problem is None:
                acc = {k: np.asarray(v) for k, v in partial.items()}
                summed = [int(v) for v in points]
            else:  # only this pass is recomputed; its completed passes stay replayed
                log.warning("resume: the checkpoint's partial sums (next batch %d) %s; "
                            "recomputing this pass from its first batch", start, problem)
                start = 0
        run = _Pass(index, x, px, ctx, acc, start, first=not self._first_done,
                    excluded=mon.excluded[self.stage], summed=summed)
        if mon.progress is not None:
            mon.progress.new_pass(self.stage, index, self.data.n_points, self.data.n_batches,
                                  start_batch=start)
        self._placed = {}
        self._home = jax.devices()[0]
        return run

    def _calls(self, run: _Pass):
        """Stage 2: (chunk, batch mask, launched call or None) in pass order; with several
        devices up to ``n_devices`` calls are launched ahead (JAX runs them async)."""
        G = self.data.batches_per_call
        in_flight = max(1, self.n_devices)
        queue: list = []
        for chunk in self.data.chunks(run.start):
            mask = np.array([(chunk.pass_batch + b) not in run.excluded for b in range(G)])
            try:
                out = self._launch(run.px, run.ctx, chunk, mask) if in_flight > 1 else None
            except (MemoryError, RuntimeError, ValueError, FloatingPointError):
                out = None
            queue.append((chunk, mask, out))
            if len(queue) >= in_flight:
                yield queue.pop(0)
        while queue:
            yield queue.pop(0)

    def _account(self, run: _Pass, chunk, mask, stats, n, cost, ok, error) -> None:
        """Stage 3: add a call's sums; per batch: validation, exclusion, callback, progress."""
        mon = self.monitor
        G = self.data.batches_per_call
        real = min(chunk.n_batches, G)
        if error is not None:
            n, cost, ok = np.zeros(G, np.int64), np.zeros(G), np.zeros(G, bool)
            run.summed.extend([0] * G)
        else:
            # the kernel summed a batch when its sums were finite and the mask let it in
            run.summed.extend(np.where(ok & mask, n, 0).astype(np.int64).tolist())
            # summed on the host: the same float64 additions as on the device, without a
            # dispatch (and a compiled kernel) per leaf
            run.acc = jax.tree_util.tree_map(lambda a, v: np.asarray(a + np.asarray(v)),
                                             run.acc, stats)
        for b in range(real):
            bidx = chunk.pass_batch + b
            if bidx in run.excluded:
                run.n_failed += 1
                continue
            success = bool(ok[b]) and (n[b] > 0 or not mon.faults.validate_numerics)
            if not success:
                run.n_failed += 1
                kind = error or ("non_finite" if not ok[b] else "no_valid_data")
                mon.failures.append({"stage": self.stage, "pass": run.index, "batch": bidx,
                                     "error": kind})
                mon.error_types[kind] += 1
                if run.first:
                    run.excluded.add(bidx)
                else:
                    run.trial_failed = True
            if mon.callback is not None:
                loss = float(cost[b] / n[b]) if n[b] > 0 else math.nan
                if mon.callback(mon.batches_done + b, run.x.copy(), loss, success) is False:
                    mon.batches_done += b + 1
                    raise StopFit(f"stopped by callback at batch {mon.batches_done - 1}")
        if error is not None and not run.first:
            run.trial_failed = True
        mon.batches_done += real
        run.n_real += real
        if mon.progress is not None:
            mon.progress.update(int(np.sum(n[:real])), real, len(mon.failures),
                                mon.batches_done, float(np.sum(cost[:real])))

    def _checkpoint_or_stop(self, run: _Pass, next_batch: int) -> None:
        """Stage 4: after a call, stop on a signal (saving first) or save when due."""
        mon = self.monitor
        if mon.signal_received is not None:  # saves now (checkpoints on) and stops
            partial = jax.device_get(run.acc) if mon.checkpoints is not None else None
            mon.check_signal(self.stage, run.x, next_batch, partial, run.summed)
        elif mon.save_due():
            started = time.perf_counter()
            mon.maybe_save(self.stage, run.x, next_batch, jax.device_get(run.acc),
                           started=started, summed=run.summed)

    def _close(self, run: _Pass) -> NormalEquations:
        """Stage 5: the normal equations of the pass; a stage's first pass checks the batch
        success rate, a later pass with a failed batch makes the trial point fail."""
        mon = self.monitor
        ne = self.problem.assemble(jax.device_get(run.acc))
        excluded = run.excluded
        if run.first:
            self._first_done = True
            total = self.data.n_batches
            rate = (total - len(excluded)) / total
            if excluded:
                log.warning("%s stage: %d of %d batches failed in the first pass and are "
                            "excluded (%s)", self.stage, len(excluded), total,
                            dict(mon.error_types))
            kinds = {f["error"] for f in mon.failures if f["pass"] == run.index}
            if rate < mon.faults.min_success_rate and kinds == {"non_finite"}:
                raise NLSQNumericalError(
                    f"Non-finite model values or gradients in {len(excluded)} of {total} "
                    f"batches at the {self.stage} stage's first parameters {run.x.tolist()}: "
                    "the model overflows there; check p0, bounds and the model function")
            if rate < mon.faults.min_success_rate:
                raise NLSQConvergenceError(
                    f"only {rate:.1%} of batches succeeded in the first {self.stage} pass "
                    f"(min_success_rate {mon.faults.min_success_rate:.0%}); errors: "
                    f"{dict(mon.error_types)}. Check the data for NaN/Inf regions and p0.")
        if run.trial_failed:
            ne = NormalEquations(math.inf, ne.H, ne.g, ne.n)
            mon.record_recovery(mon.batches_done, mon.applicator.describe("reduce_step_size")
                                if mon.applicator else "reduce_step_size (0.5x)")
        return ne

    def _after_pass(self, seconds: float, excluded: set[int]) -> None:
        """Stage 6: give a streamed pass's buffers back; let the data grow their batch."""
        mon = self.monitor
        if self.data.streamed:
            trim_heap()
        if not excluded and mon.checkpoints is None and \
                self.data.adapt(seconds, memory_allows):
            mon.record_recovery(mon.batches_done, f"grow_batch ({self.data.batch_size})")
