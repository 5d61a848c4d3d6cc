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
  pass is below ``min_success_rate``;
* calls ``callback(batch_idx, params, loss, success)`` after each batch; ``False``
  stops the fit cleanly with the best result so far;
* saves a checkpoint every ``checkpoint_frequency`` batches: all completed passes
  (p x p each), the partial sums of the pass in progress and the next batch. On
  resume the solver re-runs deterministically: completed passes are replayed from
  the checkpoint and the interrupted pass continues from its batch, so the result
  is bit-for-bit that of an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from homodyne.jaxconf import jax, jnp
from homodyne.optimization.exceptions import NLSQCheckpointError, NLSQConvergenceError
from homodyne.optimization.problems import ChunkLayout, NormalEquations

log = logging.getLogger("homodyne.engine")
STAGES = ("coarse", "full")


def _libc():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


def limit_heap_arenas(n: int = 2) -> None:
    """Cap glibc's malloc arenas: the reader thread's freed buffers then stay reusable
    instead of growing a per-thread heap (constant memory when streaming)."""
    if _LIBC is not None and hasattr(_LIBC, "mallopt"):
        _LIBC.mallopt(-8, n)  # M_ARENA_MAX


def _trim_heap() -> None:
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


def _memory_allows(points: int) -> bool:
    """True when a batch run of ``points`` points leaves most of the free memory free."""
    import psutil

    return points * 8 * 64 < 0.25 * psutil.virtual_memory().available


class StopFit(Exception):
    """Raised inside a pass to stop the fit cleanly (callback, signal)."""


class Interrupted(StopFit):
    """SIGINT or SIGTERM arrived: a checkpoint was saved (when enabled) and the fit stops."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


@dataclass
class FaultSettings:
    validate: bool = True
    enable_fault_tolerance: bool = True
    min_success_rate: float = 0.5
    max_retries_per_batch: int = 2


@dataclass
class PassRecord:
    """One completed pass: enough to replay it exactly on resume."""

    stage: str
    x: np.ndarray
    ne: NormalEquations
    seconds: float
    n_batches: int
    failed: int


@dataclass
class FitMonitor:
    """State shared by the passes of one fit (diagnostics, checkpoints, callbacks)."""

    faults: FaultSettings = field(default_factory=FaultSettings)
    manager: object | None = None  # CheckpointManager
    fingerprint: str = ""
    callback: object | None = None
    progress: object | None = None
    applicator: object | None = None
    passes: list[PassRecord] = field(default_factory=list)
    replay: dict | None = None
    batches_done: int = 0
    failures: list[dict] = field(default_factory=list)
    error_types: Counter = field(default_factory=Counter)
    excluded: dict = field(default_factory=lambda: {s: set() for s in STAGES})
    recovery_actions: list[dict] = field(default_factory=list)
    lm_info: dict = field(default_factory=dict)
    checkpoint_seconds: list[float] = field(default_factory=list)
    # CPU a save costs: the snapshot on the fitting thread + the writer thread's CPU time
    checkpoint_cpu_seconds: list[float] = field(default_factory=list)
    resumed_from: int | None = None
    checkpoint_errors: list[str] = field(default_factory=list)
    signal_received: int | None = None
    last_checkpoint: str | None = None
    _last_saved: int = 0
    _last_save_time: float = -math.inf  # on the fit clock
    _busy_s: float = 0.0
    _pass_t0: float | None = None
    _writer: ThreadPoolExecutor | None = None
    _pending: Future | None = None

    # --- resume -------------------------------------------------------------------
    def load_resume(self) -> None:
        """Read the newest valid checkpoint of this fit (refusing one of another fit)."""
        path = self.manager.find_latest_valid_checkpoint()
        if path is None:
            return
        state = self.manager.load_checkpoint(path)
        if state.get("fingerprint") != self.fingerprint:
            raise NLSQCheckpointError(
                f"checkpoint {path} belongs to different data or settings (fingerprint "
                f"{str(state.get('fingerprint'))[:12]}… vs {self.fingerprint[:12]}…); refusing "
                "to resume from it. Remove the directory or point checkpoint_dir elsewhere.")
        self.replay = state
        self.resumed_from = int(state["batch_idx"])
        self.batches_done = self.resumed_from
        self._last_saved = self.resumed_from
        self.recovery_actions = list(state.get("recovery_actions") or [])
        for stage in STAGES:
            key = f"excluded_{stage}"
            if key in state:
                self.excluded[stage] = {int(b) for b in np.atleast_1d(state[key]) if b >= 0}
        log.info("Detects existing checkpoint and resumes from batch %d (%s)",
                 self.resumed_from, path)

    def replayed(self, index: int, stage: str, x: np.ndarray):
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
        return ne, float(r["pass_seconds"][index]), int(r["pass_batches"][index])

    def in_progress(self, index: int, stage: str, x: np.ndarray):
        """(next_batch, partial sums) of the interrupted pass ``index``, if it is this one."""
        r = self.replay
        if r is None or "partial" not in r or int(r["n_passes"]) != index:
            return None
        if r["current_stage"] != stage or not np.array_equal(r["current_x"], x):
            return None
        self.replay = None
        return int(r["next_batch"]), {k: np.asarray(v) for k, v in r["partial"].items()}

    # --- checkpoints ------------------------------------------------------------------
    def pass_started(self) -> None:
        self._pass_t0 = time.monotonic()

    def pass_ended(self) -> None:
        if self._pass_t0 is not None:
            self._busy_s += time.monotonic() - self._pass_t0
            self._pass_t0 = None

    def clock(self) -> float:
        """Seconds spent in this fit's passes (the solver's p x p work between passes is
        negligible): the time checkpoint intervals are measured in."""
        running = time.monotonic() - self._pass_t0 if self._pass_t0 is not None else 0.0
        return self._busy_s + running

    def save_due(self) -> bool:
        """``checkpoint_frequency`` batches since the last save, at least
        ``min_interval_s`` seconds of fitting ago, and no save still being written."""
        m = self.manager
        return (m is not None and self.batches_done - self._last_saved >= m.checkpoint_frequency
                and self.clock() - self._last_save_time >= m.min_interval_s
                and (self._pending is None or self._pending.done()))

    def maybe_save(self, stage, x, next_batch, partial, force: bool = False,
                   started: float | None = None) -> None:
        """Snapshot the state (p x p arrays, cheap) and write it on a background thread,
        so the file I/O overlaps the next batches. A save that is not due is skipped
        (never a stall); ``force`` waits for a pending one and writes now."""
        m = self.manager
        if m is None or (not force and not self.save_due()):
            return
        if self._pending is not None:
            self._pending.result()
        state = self._state(stage, x, next_batch, partial)
        batch = self.batches_done
        self._last_saved = batch
        self._last_save_time = self.clock()
        snapshot_s = time.perf_counter() - started if started is not None else 0.0
        if force:
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
        self.last_checkpoint = str(path)
        self.checkpoint_seconds.append(time.perf_counter() - t0)
        self.checkpoint_cpu_seconds.append(snapshot_s + time.thread_time() - c0)

    def _save(self, batch: int, state: dict):
        """Save and prune; a full disk or an I/O error (h5py raises RuntimeError when it
        closes a file on a full disk) only warns: the previous checkpoint stays valid
        (atomic writes), the fit goes on, and the error is reported. Path or None."""
        try:
            path = self.manager.save_checkpoint(batch, state, fingerprint=self.fingerprint)
            self.manager.cleanup_old_checkpoints()
        except (OSError, RuntimeError) as exc:
            msg = f"checkpoint at batch {batch} not written: {exc}"
            log.error("%s; the previous checkpoint stays valid", msg)
            self.checkpoint_errors.append(msg)
            return None
        return path

    def flush(self) -> None:
        """Wait for a checkpoint still being written (end of fit, signals)."""
        if self._pending is not None:
            self._pending.result()
            self._pending = None
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None

    def check_signal(self, stage, x, next_batch, partial) -> None:
        """After each chunk: on SIGINT/SIGTERM save a checkpoint now and stop."""
        if self.signal_received is None:
            return
        import signal as _signal

        name = _signal.Signals(self.signal_received).name
        self.maybe_save(stage, x, next_batch, partial, force=True)
        if self.manager is not None and self.last_checkpoint:
            how = (f"checkpoint saved at batch {self.batches_done} "
                   f"({self.last_checkpoint}); run the same command again to resume")
        else:
            how = ("checkpoints are off (optimization.streaming.enable_checkpoints: true "
                   "makes the next run resume); the best parameters so far are kept")
        raise Interrupted(self.signal_received, f"interrupted by {name}: {how}")

    def save_final(self, x) -> None:
        self.flush()
        if self.manager is not None:  # a failed save warns; the fit still ends with results
            self._save(self.batches_done, self._state(None, x, 0, None))

    def _state(self, stage, x, next_batch, partial) -> dict:
        p = len(x)
        P = self.passes
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
            "parameters": np.asarray(self.lm_info.get("x", x), float),
            "loss": float(self.lm_info.get("cost", np.nan)),
            "iteration": int(self.lm_info.get("iteration", 0)),
            "damping": float(self.lm_info.get("lam", np.nan)),
            "batches_failed": len(self.failures),
            "recovery_actions": self.recovery_actions or None,
            "current_stage": stage or "done",
            "current_x": np.asarray(x, float),
            "next_batch": int(next_batch),
        }
        for s in STAGES:
            state[f"excluded_{s}"] = np.array(sorted(self.excluded[s]) or [-1], np.int64)
        if partial is not None:
            state["partial"] = {k: np.asarray(v) for k, v in partial.items()}
        return state

    # --- diagnostics ------------------------------------------------------------------
    def diagnostics(self) -> dict:
        total = self.batches_done
        failed = len(self.failures)
        full = [r for r in self.passes if r.stage == "full"]
        return {
            "total_batches_processed": total,
            "batch_success_rate": (total - failed) / total if total else 1.0,
            "failed_batch_indices": sorted({f["batch"] for f in self.failures}),
            "error_type_distribution": dict(self.error_types),
            # each batch enters every pass, and a pass is one solver iteration
            "average_iterations_per_batch": float(len(full)),
            "excluded_batches": {s: sorted(v) for s, v in self.excluded.items()},
            "checkpoint_saves": len(self.checkpoint_seconds),
            "checkpoint_errors": list(self.checkpoint_errors),
            "checkpoint_save_seconds_max": max(self.checkpoint_seconds, default=0.0),
            "checkpoint_cpu_seconds_total": float(sum(self.checkpoint_cpu_seconds)),
            "resumed_from_batch": self.resumed_from,
        }

    def record_recovery(self, batch: int, strategy: str) -> None:
        self.recovery_actions.append({"batch": int(batch), "strategy": strategy})


class PassRunner:
    """Evaluates the normal equations at a parameter vector: one pass over ``data``."""

    def __init__(self, problem, data, stage: str = "full", monitor: FitMonitor | None = None,
                 n_devices: int = 1):
        self.problem = problem
        self.data = data
        self.stage = stage
        self.monitor = monitor or FitMonitor()
        self.n_devices = n_devices
        self._placed: dict = {}
        self._home = None
        self._first_done = any(r.stage == stage for r in self.monitor.passes)

    @property
    def records(self):
        return [r for r in self.monitor.passes if r.stage == self.stage]

    def _layout(self, factor=1) -> ChunkLayout:
        d = self.data
        return ChunkLayout(d.batch_size // factor, d.batches_per_call * factor, d.stride)

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
        m = jnp.asarray(mask) if chunk.device is None else jax.device_put(mask, chunk.device)
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
                                          chunk.origin, chunk.n_valid, jnp.asarray(m))
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
        self.monitor.pass_started()
        try:
            return self._evaluate(x)
        finally:
            self.monitor.pass_ended()

    def _evaluate(self, x) -> NormalEquations:
        mon = self.monitor
        index = len(mon.passes)
        x = np.asarray(x, dtype=np.float64)
        cached = mon.replayed(index, self.stage, x)
        if cached is not None:
            ne, seconds, nb = cached
            mon.passes.append(PassRecord(self.stage, x.copy(), ne, seconds, nb, 0))
            self._first_done = True
            return ne
        t0 = time.perf_counter()
        px = jnp.asarray(x)
        ctx = self.problem.prepare(px)
        acc = self.problem.zero_stats(self._layout())
        start = 0
        resumed = mon.in_progress(index, self.stage, x)
        if resumed is not None:
            start, partial = resumed
            acc = {k: jnp.asarray(v) for k, v in partial.items()}
        first = not self._first_done
        excluded = mon.excluded[self.stage]
        G = self.data.batches_per_call
        trial_failed = False
        n_real = 0
        if mon.progress is not None:
            mon.progress.new_pass(self.stage, index, self.data.n_points, self.data.n_batches)
        self._placed = {}
        self._home = jax.devices()[0]
        in_flight = max(1, self.n_devices)
        queue: list = []

        def pending():
            for chunk in self.data.chunks(start):
                mask = np.array([(chunk.pass_batch + b) not in excluded for b in range(G)])
                try:
                    out = self._launch(px, ctx, chunk, mask) if in_flight > 1 else None
                except (MemoryError, RuntimeError, ValueError, FloatingPointError):
                    out = None
                queue.append((chunk, mask, out))
                if len(queue) >= in_flight:
                    yield queue.pop(0)
            while queue:
                yield queue.pop(0)

        for chunk, mask, out in pending():
            if in_flight > 1:
                stats, n, cost, ok, error = self._finish(out, chunk, px, ctx, mask)
            else:
                stats, n, cost, ok, error = self._call(px, ctx, chunk, mask)
            real = min(chunk.n_batches, G)
            if error is not None:
                n, cost, ok = np.zeros(G, np.int64), np.zeros(G), np.zeros(G, bool)
            else:
                acc = jax.tree_util.tree_map(lambda a, v: a + v, acc, stats)
            for b in range(real):
                bidx = chunk.pass_batch + b
                if bidx in excluded:
                    continue
                success = bool(ok[b]) and (n[b] > 0 or not mon.faults.validate)
                if not success:
                    kind = error or ("non_finite" if not ok[b] else "no_valid_data")
                    mon.failures.append({"stage": self.stage, "pass": index, "batch": bidx,
                                         "error": kind})
                    mon.error_types[kind] += 1
                    if first:
                        excluded.add(bidx)
                    else:
                        trial_failed = True
                if mon.callback is not None:
                    loss = float(cost[b] / n[b]) if n[b] > 0 else math.nan
                    if mon.callback(mon.batches_done + b, x.copy(), loss, success) is False:
                        mon.batches_done += b + 1
                        raise StopFit(f"stopped by callback at batch {mon.batches_done - 1}")
            if error is not None and not first:
                trial_failed = True
            mon.batches_done += real
            n_real += real
            if mon.progress is not None:
                mon.progress.update(int(np.sum(n[:real])), real, len(mon.failures),
                                    mon.batches_done, float(np.sum(cost[:real])))
            next_batch = chunk.pass_batch + G
            if mon.signal_received is not None:  # saves now (checkpoints on) and stops
                partial = jax.device_get(acc) if mon.manager is not None else None
                mon.check_signal(self.stage, x, next_batch, partial)
            elif mon.save_due():
                started = time.perf_counter()
                mon.maybe_save(self.stage, x, next_batch, jax.device_get(acc),
                               started=started)
        ne = self.problem.assemble(jax.device_get(acc))
        if first:
            self._first_done = True
            total = self.data.n_batches
            rate = (total - len(excluded)) / total
            if excluded:
                log.warning("%s stage: %d of %d batches failed in the first pass and are "
                            "excluded (%s)", self.stage, len(excluded), total,
                            dict(mon.error_types))
            if rate < mon.faults.min_success_rate:
                raise NLSQConvergenceError(
                    f"only {rate:.1%} of batches succeeded in the first {self.stage} pass "
                    f"(min_success_rate {mon.faults.min_success_rate:.0%}); errors: "
                    f"{dict(mon.error_types)}. Check the data for NaN/Inf regions and p0.")
        if trial_failed:
            ne = NormalEquations(math.inf, ne.H, ne.g, ne.n)
            mon.record_recovery(mon.batches_done, mon.applicator.describe("reduce_step_size")
                                if mon.applicator else "reduce_step_size (0.5x)")
        seconds = time.perf_counter() - t0
        mon.passes.append(PassRecord(self.stage, x.copy(), ne, seconds, n_real, 0))
        if getattr(self.data, "streamed", False):  # give the pass's buffers back
            _trim_heap()
        adapt = getattr(self.data, "adapt", None)
        if adapt is not None and not excluded and mon.manager is None and \
                adapt(seconds, _memory_allows):
            mon.record_recovery(mon.batches_done, f"grow_batch ({self.data.batch_size})")
        return ne
