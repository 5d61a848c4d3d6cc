"""Checkpoint and fault-tolerance overheads, measured as paired passes.

Separate fits on a shared machine differ by several percent from run to run, more
than the 1% targets. Here every variant (checkpoints at a frequency, validation, fast
mode ...) gets its own ``PassRunner`` over the same data in one process, and each
round evaluates one pass of every variant at the same parameters, in a rotating order.
An overhead is the median over rounds of (variant pass / baseline pass of the same
round) - 1 in process CPU time (wall time, which also counts other processes' use of
the cores, is reported beside it), with a distribution-free 95% interval of that
median; a second, identical baseline (``null``) shows what "no difference" reads as.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from homodyne.data import open_two_time
from homodyne.optimization.settings import DEFAULT_MIN_INTERVAL_S
from homodyne.output import write_json


@dataclass(frozen=True)
class Variant:
    """One way of running a pass."""

    name: str
    validate: bool = True
    fault_tolerance: bool = True
    checkpoint_frequency: int = 0
    checkpoint_min_interval_s: float = DEFAULT_MIN_INTERVAL_S


FAULT_MODES = {"none": (False, False), "validation": (True, False), "full": (True, True),
               "fast": (False, True)}  # (validate, fault tolerance), as in the wrapper


def variants(checkpoint_frequencies=(10, 100), fault_modes=("validation", "full", "fast")
             ) -> tuple[list[Variant], list[tuple[str, str]]]:
    """The runs, and the (variant, baseline) comparisons: checkpoints against the default
    fit without them ('full'), fault-tolerance modes against all checks off ('none'),
    and 'null' (a second 'full') against 'full'."""
    runs = [Variant("full"), Variant("null"), Variant("none", False, False)]
    pairs = [("null", "full")]
    for f in checkpoint_frequencies:
        runs += [Variant(f"ckpt{f}", checkpoint_frequency=f),
                 Variant(f"ckpt{f}-strict", checkpoint_frequency=f,
                         checkpoint_min_interval_s=0.0)]
        pairs += [(f"ckpt{f}", "full"), (f"ckpt{f}-strict", "full")]
    for m in fault_modes:
        if m not in ("none", "full"):
            runs.append(Variant(m, *FAULT_MODES[m]))
        if m != "none":
            pairs.append((m, "none"))
    return runs, pairs


def _own_kernels(problem):
    """``problem`` with pass kernels compiled for it alone instead of the process-wide
    shared ones: two compiled copies of one program differ in speed by up to ~1-2% (code
    and buffer placement), so a comparison against one copy measures that luck too."""
    from homodyne.optimization.problems import _two_time_chunk_fn

    own: dict = {}

    def chunk_fn(layout):
        if layout not in own:
            own[layout] = _two_time_chunk_fn.__wrapped__(problem.spec, bool(problem.validate),
                                                         layout)
        return own[layout]

    problem.chunk_fn = chunk_fn
    return problem


def _runner(v: Variant, spec, data, workdir: Path, own_kernels: bool = False):
    from homodyne.optimization.checkpoint_manager import CheckpointManager
    from homodyne.optimization.checkpoint_session import CheckpointSession
    from homodyne.optimization.passes import FitMonitor, PassRunner
    from homodyne.optimization.problems import TwoTimeProblem
    from homodyne.optimization.settings import FaultSettings

    mon = FitMonitor(faults=FaultSettings(validate_numerics=v.validate,
                                          enable_fault_tolerance=v.fault_tolerance))
    if v.checkpoint_frequency:
        mon.checkpoints = CheckpointSession(
            CheckpointManager(workdir / v.name, v.checkpoint_frequency, 3, True,
                              v.checkpoint_min_interval_s), f"overhead-{v.name}")
    problem = TwoTimeProblem(spec, validate=v.validate)
    return PassRunner(_own_kernels(problem) if own_kernels else problem, data, monitor=mon)


def _paired(runners: dict, rounds: int, x) -> dict:
    """Pass times per runner: every round runs one pass of each, in a rotating order.
    Returns {"cpu": {name: [s, ...]}, "wall": {...}}: the process CPU time of each pass
    (every thread's, XLA's included) and its wall time. CPU time is what a comparison
    uses: on a shared machine a pass's wall time also counts the time other processes
    held the cores, which is most of the pass-to-pass spread."""
    names = list(runners)
    for r in runners.values():  # compile and warm every variant
        r.evaluate(x)
    cpu: dict[str, list[float]] = {n: [] for n in names}
    wall: dict[str, list[float]] = {n: [] for n in names}
    for k in range(rounds):
        for n in names[k % len(names):] + names[: k % len(names)]:
            c0, t0 = time.process_time(), time.perf_counter()
            runners[n].evaluate(x)
            wall[n].append(time.perf_counter() - t0)
            cpu[n].append(time.process_time() - c0)
    for r in runners.values():
        r.monitor.flush()
    return {"cpu": cpu, "wall": wall}


def median_ci(values, z: float = 1.96) -> tuple[float, float]:
    """Distribution-free ~95% confidence interval of the median: the order statistics
    n/2 -+ z sqrt(n)/2 (binomial, normal approximation; the whole range for n < 6)."""
    v = np.sort(np.asarray(values, dtype=float))
    n = v.size
    k = max(int(np.floor((n - z * np.sqrt(n)) / 2)), 0)
    return float(v[k]), float(v[max(n - 1 - k, k)])


def _compare(times, name, base) -> dict:
    """Median over rounds of (pass / the same round's baseline pass) - 1 in CPU time,
    its 95% interval and quartiles; the same median in wall time for reference."""
    cpu, wall = times["cpu"], times["wall"]
    ratio = np.asarray(cpu[name]) / np.asarray(cpu[base]) - 1.0
    ratio_wall = np.asarray(wall[name]) / np.asarray(wall[base]) - 1.0
    lo, hi = median_ci(ratio)
    return {"baseline": base, "clock": "process CPU", "overhead": float(np.median(ratio)),
            "ci95": [lo, hi],
            "q25": float(np.quantile(ratio, 0.25)), "q75": float(np.quantile(ratio, 0.75)),
            "overhead_wall": float(np.median(ratio_wall)),
            "q25_wall": float(np.quantile(ratio_wall, 0.25)),
            "q75_wall": float(np.quantile(ratio_wall, 0.75)),
            "pass_s": float(np.median(wall[name])),
            "baseline_pass_s": float(np.median(wall[base])),
            "pass_cpu_s": float(np.median(cpu[name])),
            "baseline_pass_cpu_s": float(np.median(cpu[base]))}


def kernel_overheads(spec, y, batch: int, batches_per_call: int, x, *, rounds: int,
                     fault_modes=("validation", "full", "fast"), copies: int = 2) -> dict:
    """The fault-tolerance modes against all checks off ('none'; 'null' is a second
    all-off variant, what "no difference" reads as) on in-memory passes over ``y``.
    Each variant runs ``copies`` separately compiled kernels and a round's time is their
    mean, so that no comparison rests on the placement of one compiled copy."""
    from homodyne.optimization.sources import InMemoryData

    n = y.size
    mem = InMemoryData({"y": y}, n, min(batch, n), batches_per_call=batches_per_call)
    kvs = [Variant(m, *FAULT_MODES["none" if m == "null" else m])
           for m in dict.fromkeys(("none", "null", *fault_modes))]
    workdir = Path(tempfile.mkdtemp(prefix="homodyne-overhead-"))
    try:
        runners = {(v.name, c): _runner(v, spec, mem, workdir, own_kernels=True)
                   for v in kvs for c in range(copies)}
        raw = _paired(runners, rounds, x)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    times = {clock: {v.name: list(np.mean([t[(v.name, c)] for c in range(copies)], axis=0))
                     for v in kvs} for clock, t in raw.items()}
    return {v.name: _compare(times, v.name, "none") for v in kvs if v.name != "none"}


def bench_overheads(data_path, out_json, *, tier: str = "streaming", rounds: int = 12,
                    checkpoint_frequencies=(10, 100),
                    fault_modes=("validation", "full", "fast"),
                    kernel_points: int = 1_000_000) -> dict:
    """Paired-pass overheads of checkpoints and fault-tolerance modes on one dataset.

    Checkpoints are measured on ``tier`` passes. The fault-tolerance modes change only
    the work per point, so they are also measured on an in-memory run of the first
    ``kernel_points`` points (short passes, 10x the rounds of two compiled copies of each
    kernel: ``kernel_overheads``): the kernel cost without the disk reads' noise."""
    from homodyne.benchmarks.runner import _problem_setup
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    src = open_two_time(data_path)
    spec, _, _, truth = _problem_setup(src)
    w = NLSQWrapper(strategy_override=tier)
    plan = w.plan_two_time(src, spec)
    strategy, batch, data = plan.tier, plan.batch_size, plan.data
    vs, pairs = variants(checkpoint_frequencies, fault_modes)
    x = np.asarray(truth, float)
    workdir = Path(tempfile.mkdtemp(prefix="homodyne-overhead-"))
    try:
        runners = {v.name: _runner(v, spec, data, workdir) for v in vs}
        times = _paired(runners, rounds, x)
        result = {}
        for name, base in pairs:
            v = next(v for v in vs if v.name == name)
            ck = runners[name].monitor.checkpoints
            sec = ck.save_seconds if ck is not None else []
            # what the saves cost, accounted directly (CPU of snapshot + writer) against
            # this variant's pass time: not subject to the machine's pass-to-pass noise
            busy = float(np.sum(times["wall"][name]))
            accounted = float(np.sum(ck.cpu_seconds if ck is not None else [])) / busy
            result[name] = {
                **_compare(times, name, base),
                "checkpoint_frequency": v.checkpoint_frequency,
                "checkpoint_min_interval_s": v.checkpoint_min_interval_s
                if v.checkpoint_frequency else None,
                "saves": len(sec), "save_s_max": max(sec, default=0.0),
                "save_s_median": float(np.median(sec)) if sec else 0.0,
                "save_cpu_s_median": float(np.median(ck.cpu_seconds))
                if sec else 0.0,
                "accounted_overhead": accounted if v.checkpoint_frequency else None,
            }
        n_k = min(kernel_points, spec.n_points)
        y = next(src.iter_points(0, n_k, n_k))[1]
        kernel = kernel_overheads(spec, y, batch, data.batches_per_call, x,
                                  rounds=10 * rounds, fault_modes=fault_modes)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        src.close()
    rec = {"kind": "overhead", "name": f"overhead-{tier}", "dataset": Path(data_path).stem,
           "n_points": spec.n_points, "mode": spec.mode, "tier": strategy.value,
           "batch_size": batch, "rounds": rounds, "variants": result,
           "kernel_points": n_k, "kernel_rounds": 10 * rounds, "kernel_copies": 2,
           "kernel": kernel}
    write_json(out_json, rec)
    return rec
