"""``NLSQWrapper``: the guide's Python API over the one homodyne engine.

``fit(model_func, xdata, ydata, p0, bounds, method='trf')`` fits a generic model as in
the guide; ``fit_two_time`` fits the XPCS model on a two-time source. Both select a
tier by size and memory and return a ``FitResult`` with ``.strategy``,
``.parameters``, uncertainties, ``.streaming_diagnostics`` and ``.recovery_actions``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from homodyne.optimization.checkpoint_manager import CheckpointManager
from homodyne.optimization.checkpoint_session import CheckpointSession
from homodyne.optimization.driver import coarse_level_sizes, fingerprint, run_fit
from homodyne.optimization.exceptions import NLSQNumericalError
from homodyne.optimization.fixed import fix_parameters
from homodyne.optimization.passes import FitMonitor
from homodyne.optimization.problems import CurveProblem, TwoTimeProblem
from homodyne.optimization.progress import ProgressReporter
from homodyne.optimization.recovery_strategies import RecoveryStrategyApplicator
from homodyne.optimization.restarts import fit_with_restarts
from homodyne.optimization.result import FitResult
from homodyne.optimization.settings import (
    MAX_RESTARTS,
    CheckpointSettings,
    EngineOptions,
    FaultSettings,
    RestartSettings,
    check_checkpoint_config,
    is_whole,
)
from homodyne.optimization.sources import HostArrayData, InMemoryData, ShardedData, StreamingData
from homodyne.optimization.strategy import (
    DEFAULT_BATCH,
    DatasetSizeStrategy,
    OptimizationStrategy,
    checked_memory_limit,
)

if TYPE_CHECKING:
    from homodyne.optimization.interfaces import DataSource
    from homodyne.output import DirectoryLock

METHODS = ("trf", "lm")
CALLS_PER_PASS_CHUNKED = 32
COMPILE_ALLOWANCE = 200 * 2**20  # XLA compilation and runtime growth during a fit


def _array_digest(columns: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(columns):
        a = np.ascontiguousarray(columns[k])
        h.update(f"{k}{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _model_identity(func, depth: int = 0) -> list:
    """What makes ``func`` this model, the same in every process: its name and code
    (bytecode, constants, names, nested code), defaults, the values it closes over and the
    plain module-level values it names. A checkpoint of another model function on the same
    data is then another fit's (a finished fit of one model was resumed as the other's)."""
    import functools
    import inspect

    if depth > 4:
        return [type(func).__qualname__]
    if isinstance(func, functools.partial):
        return ["partial", _model_identity(func.func, depth + 1),
                [_value_identity(a, depth) for a in func.args],
                {k: _value_identity(v, depth) for k, v in sorted(func.keywords.items())}]
    func = inspect.unwrap(func) if callable(func) else func
    if inspect.ismethod(func):  # the instance's attributes are part of the model
        owner = func.__self__
        return ["method", _model_identity(func.__func__, depth + 1),
                {k: _value_identity(v, depth) for k, v in sorted(vars(owner).items())}
                if hasattr(owner, "__dict__") else type(owner).__qualname__]
    code = getattr(func, "__code__", None)
    if code is None:  # a callable object: its class's __call__ and its attributes
        call = inspect.getattr_static(type(func), "__call__", None)
        state = {k: _value_identity(v, depth) for k, v in sorted(vars(func).items())} \
            if hasattr(func, "__dict__") else {}
        return [type(func).__module__, type(func).__qualname__, state,
                _model_identity(call, depth + 1) if getattr(call, "__code__", None) else None]
    scope = getattr(func, "__globals__", {})
    named = {n: _value_identity(scope[n], depth) for n in _code_names(code) if n in scope
             and isinstance(scope[n], int | float | complex | str | bytes | np.ndarray)}
    cells = [_value_identity(c.cell_contents, depth) for c in (func.__closure__ or ())
             if _cell_filled(c)]
    return [getattr(func, "__module__", None), getattr(func, "__qualname__", None),
            _code_identity(code), _value_identity(getattr(func, "__defaults__", None), depth),
            cells, named]


def _code_identity(code) -> list:
    """Bytecode, names and constants of a code object, nested ones alike (no addresses,
    file names or line numbers: a comment added above the model changes nothing)."""
    consts = [_code_identity(c) if hasattr(c, "co_code") else _value_identity(c, 5)
              for c in code.co_consts]
    return [code.co_code.hex(), list(code.co_names), list(code.co_varnames), consts]


def _code_names(code) -> set:
    """Every global name a code object (and the code nested in it) uses."""
    names = set(code.co_names)
    for c in code.co_consts:
        if hasattr(c, "co_code"):
            names |= _code_names(c)
    return names


def _cell_filled(cell) -> bool:
    try:
        cell.cell_contents  # noqa: B018 (an empty cell raises)
    except ValueError:
        return False
    return True


def _value_identity(v, depth: int):
    """A value a model uses, the same in every process (arrays by digest, functions by
    their identity, no memory addresses)."""
    import re

    if callable(v) and not isinstance(v, type):
        return _model_identity(v, depth + 1)
    if isinstance(v, np.ndarray):
        return _array_digest({"v": v})
    if isinstance(v, list | tuple):
        return [_value_identity(x, depth) for x in v]
    if isinstance(v, set | frozenset):  # (their order follows the per-process str hash)
        return sorted(repr(_value_identity(x, depth)) for x in v)
    if isinstance(v, dict):
        return sorted((repr(_value_identity(k, depth)), repr(_value_identity(x, depth)))
                      for k, x in v.items())
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(v))


SAMPLE_ROWS = 256  # rows (over all angles) in the data fingerprint's content sample
SAMPLE_WIDTH = 256  # points taken evenly across each sampled row


def _source_identity(source) -> list:
    """Path, size, mtime_ns, inode and selection of a file, plus a digest of its first and
    last points and of row pieces spread over every selected matrix, and size, mtime_ns and
    inode of every file a virtual matrix reads: data edited or replaced in place changes
    it, so a checkpoint of the old data is never resumed."""
    head = next(source.iter_points(0, 4096, 4096))[1]
    tail = next(source.iter_points(max(0, source.n_points - 4096), 4096, 4096))[1]
    # the files a virtual matrix keeps its values in (the content sample reads through it)
    stored_in = [_file_stamp(f.path) for f in getattr(source, "source_files", ())]
    return [*_file_stamp(source.path), source.dataset_names, source.first_frame, source.last_frame,
            _array_digest({"h": head, "t": tail, "spread": _spread_sample(source)}),
            *([stored_in] if stored_in else [])]


def _file_stamp(path) -> list:
    """Absolute path, size, mtime_ns and inode of a file as it is now."""
    import os

    st = os.stat(path)
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino]


def _spread_sample(source) -> np.ndarray:
    """Points evenly spread over every selected matrix: SAMPLE_ROWS rows shared among the
    angles, SAMPLE_WIDTH points across each (all of a small selection; bounded reads)."""
    n = source.n_frames
    per_angle = max(2, SAMPLE_ROWS // source.n_phi)
    picks = np.unique(np.linspace(0, n - 2, min(per_angle, n - 1)).astype(int))
    parts = []
    for angle in range(source.n_phi):
        for r in picks:
            row = source.read_rows(angle, r, r + 1, r + 1)[0]
            parts.append(row[np.unique(np.linspace(0, row.size - 1, SAMPLE_WIDTH).astype(int))])
    return np.concatenate(parts)


def _names(names, n: int) -> list:
    """The parameters' names (``parameter_names`` may be a NumPy array: ``names or ...``
    raised 'The truth value of an array ... is ambiguous')."""
    return [f"p{i}" for i in range(n)] if names is None else list(names)


def normalise_bounds(bounds, p0: np.ndarray, names=None) -> tuple[np.ndarray, np.ndarray]:
    """(lb, ub) arrays from scalars or sequences; checks order and that p0 lies inside
    (min == max fixes a parameter at that value)."""
    if bounds is None:
        bounds = (-np.inf, np.inf)
    try:
        lo, hi = bounds
    except (TypeError, ValueError):
        raise ValueError("bounds must be a pair (lower, upper)") from None
    try:
        lb = np.broadcast_to(np.asarray(lo, float), p0.shape).copy()
        ub = np.broadcast_to(np.asarray(hi, float), p0.shape).copy()
    except ValueError:
        raise ValueError(f"bounds must be scalars or have one value per parameter ({p0.size}), "
                         f"got {np.size(lo)} lower and {np.size(hi)} upper of shapes "
                         f"{np.shape(lo)} and {np.shape(hi)} (give one axis)") from None
    names = _names(names, p0.size)
    for i, n in enumerate(names):
        if np.isnan(lb[i]) or np.isnan(ub[i]) or lb[i] > ub[i]:
            raise ValueError(f"bounds of {n}: need min <= max (min == max fixes it), got "
                             f"[{lb[i]}, {ub[i]}]")
        if not (lb[i] <= p0[i] <= ub[i]):
            raise ValueError(f"initial value of {n} = {p0[i]} lies outside its bounds "
                             f"[{lb[i]}, {ub[i]}]")
    return lb, ub


BACKENDS = ("homodyne", "nlsq")


def check_wrapper_settings(backend, batch_size, min_success_rate, max_retries_per_batch,
                           memory_limit_gb, checkpoint_config, *, callback=None,
                           parallel_batches=1, initial_batch_size=None,
                           max_batch_size=100_000) -> None:
    """Refuse a constructor value the wrapper would silently ignore or fail on later with
    a NumPy error: an unknown backend or checkpoint key, a batch size or device count that
    is not a whole number >= 1, a success rate outside [0, 1], a negative retry count, a
    non-positive memory limit, a callback that cannot be called."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    for name, value, auto in (("batch_size", batch_size, True),
                              ("initial_batch_size", initial_batch_size, True),
                              ("max_batch_size", max_batch_size, False),
                              ("parallel_batches", parallel_batches, False)):
        if (value is None and auto) or (is_whole(value) and value >= 1):
            continue
        hint = " (None: automatic)" if auto else ""
        raise ValueError(f"{name} must be a whole number >= 1{hint}, got {value!r}")
    if initial_batch_size is not None and initial_batch_size > max_batch_size:
        raise ValueError(f"initial_batch_size ({initial_batch_size}) is larger than "
                         f"max_batch_size ({max_batch_size}); make initial_batch_size <= "
                         "max_batch_size")
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be callable (called as callback(batch_idx, params, "
                         f"loss, success) after each batch) or None, got {callback!r}")
    # a number, not text: '0.5' passed float() here and failed mid-fit with a TypeError
    if isinstance(min_success_rate, bool | np.bool_) or \
            not isinstance(min_success_rate, int | float | np.integer | np.floating) or \
            not 0.0 <= float(min_success_rate) <= 1.0:
        raise ValueError(f"min_success_rate must lie in [0, 1], got {min_success_rate!r}")
    if not is_whole(max_retries_per_batch) or max_retries_per_batch < 0:  # 2.5 was taken as 2
        raise ValueError(f"max_retries_per_batch must be a whole number >= 0, got "
                         f"{max_retries_per_batch!r}")
    checked_memory_limit(memory_limit_gb)
    check_checkpoint_config(checkpoint_config)


def plain_array(a, name: str) -> np.ndarray:
    """``a`` as a plain numpy array JAX can take: native byte order (h5py returns
    big-endian data as such), a long double as float64, and a masked array's masked points
    as NaN for ydata and sigma (a NaN marks a point to skip) - never its hidden values.
    Masked xdata is refused."""
    if np.ma.isMaskedArray(a):
        mask = np.ma.getmaskarray(a)
        if mask.any() and name == "xdata":
            raise ValueError(f"xdata is a masked array with {int(mask.sum())} masked value(s): "
                             "the model needs every x; leave those points out, or mask them in "
                             "ydata (a masked or NaN ydata point is skipped)")
        data = np.ma.getdata(a)
        if mask.any():
            if data.dtype.kind not in "biuf":
                raise ValueError(f"{name} must hold real numbers, got dtype {data.dtype}")
            a = np.where(mask, np.nan, data.astype(float))
        else:
            a = data
    a = np.asarray(a)
    if a.dtype.byteorder not in ("=", "|") and a.dtype.kind in "biufc":
        a = a.astype(a.dtype.newbyteorder("="))
    if a.dtype.kind == "f" and a.dtype.itemsize > 8:  # long double: JAX computes in float64
        a = a.astype(np.float64)
    return a


def check_curve_data(x, y, sigma):
    """``fit``'s data: real numbers, ydata one non-empty axis matching xdata's last, and
    sigma (returned per point, or None) one positive value per point or one for all; an
    infinite sigma is returned as NaN, the mark of a point to skip."""
    for name, a in (("xdata", x), ("ydata", y)):
        if a.dtype.kind not in "biuf":
            raise ValueError(f"{name} must hold real numbers, got dtype {a.dtype}")
    if y.dtype.kind == "b":
        raise ValueError("ydata must hold measured numbers, got booleans (dtype bool); "
                         "convert them with ydata.astype(float) if that is what you mean")
    if x.ndim == 0:
        raise ValueError("xdata must have at least one axis whose last length matches ydata")
    if y.ndim != 1:
        raise ValueError(f"ydata must be one-dimensional, got shape {y.shape}")
    if x.shape[-1] != y.size:
        raise ValueError(f"xdata's last axis ({x.shape[-1]}) must match ydata ({y.size})")
    if y.size == 0:
        raise ValueError("ydata is empty: there is nothing to fit")
    bad = ~np.isfinite(x)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        where = first[0] if len(first) == 1 else first
        raise ValueError(f"xdata holds {int(bad.sum())} NaN/Inf value(s) (first at index "
                         f"{where}: {x[first]}): the model cannot be evaluated there; remove "
                         f"those points (a NaN in ydata marks a point to skip)")
    if sigma is None:
        check_magnitude(y, "ydata")
        refuse_all_skipped(y, "ydata")
        return None
    s = plain_array(sigma, "sigma")
    if s.dtype.kind not in "iuf":
        raise ValueError(f"sigma must hold real numbers, got dtype {s.dtype}")
    if s.ndim > 1 or s.size not in (1, y.size):
        raise ValueError(f"sigma must be one value or one per point of ydata ({y.size}), got "
                         f"shape {s.shape}")
    if np.any(s <= 0):
        raise ValueError("sigma must be positive everywhere")
    # an infinite sigma carries no information: that point is skipped like a NaN one and
    # not counted in n_points nor the reduced chi2's degrees of freedom
    s = np.broadcast_to(np.where(np.isinf(s), np.nan, s.astype(float)).ravel(), y.shape)
    if not np.any(np.isfinite(y) & np.isfinite(s)):
        raise ValueError("no point is left to fit: every point's ydata is NaN or its sigma is "
                         "infinite or NaN (an infinite sigma carries no information, so that "
                         "point is skipped)")
    check_weights(y, s)
    return s


def refuse_all_skipped(y, name: str) -> None:
    """Data that are all NaN/inf leave nothing to fit: one ValueError, as with sigma
    (was an NLSQConvergenceError about 0% of batches succeeding)."""
    if y.dtype.kind == "f" and not np.any(np.isfinite(y)):
        raise ValueError(f"no point is left to fit: every value of {name} ({y.size:,}) is NaN "
                         "or infinite (a NaN marks a point to skip)")


MAX_WEIGHTED = 1e100  # |ydata|/sigma and 1/sigma above this overflow the sums of squares


def check_weights(y, s) -> None:
    """Refuse a sigma so small that the weighted values 1/sigma or ydata/sigma would
    overflow the engine's float64 sums of squares (named here, not as a model overflow)."""
    with np.errstate(all="ignore"):
        scale = np.maximum(1.0, np.abs(y)) / s
    scale = np.where(np.isfinite(y) & np.isfinite(s), scale, 0.0)
    worst = int(np.argmax(scale))
    if not np.isfinite(scale[worst]) or scale[worst] > MAX_WEIGHTED:
        raise ValueError(f"sigma is too small for float64 weights: sigma[{worst}] = "
                         f"{s[worst]:g} makes max(1, |ydata|)/sigma = {scale[worst]:.3g} "
                         f"(at most {MAX_WEIGHTED:g}, or the sums of squares overflow); "
                         f"rescale ydata and sigma together")


def check_two_time_data(source, spec, p0, y):
    """``fit_two_time``'s inputs: a source or packed values ``y`` of exactly the spec's
    points (real numbers, one axis), and one start value per parameter of the spec."""
    if np.size(p0) != spec.n_params:
        raise ValueError(f"p0 has {np.size(p0)} values; the model has {spec.n_params} "
                         f"parameters {list(spec.parameter_names)}")
    if y is None:
        if source is None:
            raise ValueError("fit_two_time needs a TwoTimeSource or the packed values y")
        check_spec_of_source(source, spec)
        return None
    y = plain_array(y, "y")
    if y.dtype.kind not in "biuf":
        raise ValueError(f"y must hold real numbers, got dtype {y.dtype}")
    if y.shape != (spec.n_points,):
        raise ValueError(f"y must be the {spec.n_points:,} packed points of this spec (one "
                         f"axis), got shape {y.shape}")
    check_magnitude(y, "y")
    refuse_all_skipped(y, "y")
    return y


def check_spec_of_source(source, spec) -> None:
    """The spec must describe the source's selection: another q fits other rates (D0 off
    by (q_source / q_spec)^2), other angles another shear term, other frames fail inside
    the passes with a broadcast error."""
    def differs(a, b, exact=False):
        if a is None or b is None:
            return False
        a, b = np.atleast_1d(np.asarray(a, float)), np.atleast_1d(np.asarray(b, float))
        return a.shape != b.shape or not np.allclose(a, b, rtol=0 if exact else 1e-6, atol=0)

    checks = (("n_frames", True), ("first_frame", True), ("phi_deg", False), ("q", False))
    for name, exact in checks:
        ours, theirs = getattr(spec, name, None), getattr(source, name, None)
        if differs(ours, theirs, exact):
            raise ValueError(f"spec.{name} = {ours!r} but the source holds {theirs!r}: the "
                             "spec must describe the data fitted; build it with "
                             "source.model_spec(mode=..., dt=...)")


def check_magnitude(y, name: str) -> None:
    """Refuse a finite value beyond MAX_WEIGHTED: its square overflows the engine's float64
    sums (was reported as the model overflowing at p0, or cost its batch silently)."""
    if y.dtype.kind != "f" or float(np.finfo(y.dtype).max) <= MAX_WEIGHTED:
        return
    with np.errstate(all="ignore"):
        big = np.isfinite(y) & (np.abs(y) > MAX_WEIGHTED)
    if big.any():
        worst = int(np.argmax(big))
        raise ValueError(f"{name}[{worst}] = {y[worst]:.3g}: values beyond {MAX_WEIGHTED:g} "
                         "cannot be fitted (their squares overflow the float64 sums); "
                         "rescale the data or mark bad points NaN to skip them")


def check_model_arity(model_func, n_p0: int, parameter_names=None) -> None:
    """p0 must have one value per parameter of ``model_func(xdata, *params)``: named by
    ``parameter_names`` or, without them, by the function's signature when it has no
    ``*args`` (known before any evaluation, instead of a TypeError from inside the model)."""
    import inspect

    if not callable(model_func):
        raise ValueError(f"model_func must be callable as model_func(xdata, *params), got "
                         f"{model_func!r}")
    if parameter_names is not None:
        if len(parameter_names) != n_p0:
            raise ValueError(f"p0 has {n_p0} values but parameter_names names "
                             f"{len(parameter_names)}: {list(parameter_names)}")
        names = list(parameter_names)  # the keys of parameters_by_name and of fixed=
        if not all(isinstance(n, str) for n in names) or len(set(names)) < len(names):
            raise ValueError(f"parameter_names must be distinct strings, got {names}")
        return
    try:
        sig = inspect.signature(model_func)
    except (TypeError, ValueError):  # a builtin or C function: not knowable
        return
    params = list(sig.parameters.values())
    kinds = inspect.Parameter
    if any(p.kind == kinds.VAR_POSITIONAL for p in params):
        return
    positional = [p for p in params if p.kind in (kinds.POSITIONAL_ONLY,
                                                   kinds.POSITIONAL_OR_KEYWORD)][1:]
    required = [p for p in positional if p.default is kinds.empty]
    if not len(required) <= n_p0 <= len(positional):
        names = [p.name for p in positional]
        want = (f"{len(positional)}" if len(required) == len(positional)
                else f"{len(required)} to {len(positional)}")
        raise ValueError(f"p0 has {n_p0} values but model_func takes {want} parameters "
                         f"after xdata {names}: give one start value per parameter")


@dataclass
class FitPlan:
    """How a two-time fit will run: its tier, batch size and the data its passes walk."""

    tier: OptimizationStrategy
    batch_size: int
    data: DataSource


def require_p0(p0) -> None:
    """p0 must be given: the engine does not guess a start (None was counted as one value)."""
    if p0 is None:
        raise ValueError("p0 is required: one start value per parameter (homodyne does not "
                         "guess a start)")


def validate_start(p0, bounds, names=None, fixed=None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The one check of a fit's start and box, at the facade: float64 vectors of one
    length, p0 finite, min <= max and p0 inside; ``fixed`` (names or indices) are held at
    p0 (lb = ub = p0). The driver and the solver take (x0, lb, ub) as they are."""
    require_p0(p0)
    raw = np.asarray(p0)
    if raw.dtype.kind in "USb" or any(isinstance(v, str | bytes | bool | np.bool_)
                                      for v in np.asarray(p0, dtype=object).ravel()):
        raise TypeError(f"p0 must hold numbers (one start value per parameter), got "
                        f"{raw.ravel().tolist()[:8]}")
    p0 = np.asarray(p0, float).ravel()
    if not np.all(np.isfinite(p0)):
        raise ValueError(f"p0 must be finite, got {p0.tolist()}")
    lb, ub = normalise_bounds(bounds, p0, names)
    lb, ub = fix_parameters(p0, lb, ub, fixed, _names(names, p0.size))
    return p0, lb, ub


class NLSQWrapper:
    """Chooses the tier and runs the engine; the guide's entry point."""

    def __init__(self, enable_large_dataset: bool = True, enable_recovery: bool = True,
                 fast_mode: bool = False, enable_numerical_validation: bool = True,
                 parallel_batches: int = 1, *, backend: str = "homodyne",
                 nlsq_method: str = "curve_fit", strategy_override: str | None = None,
                 memory_limit_gb: float | None = None, options: EngineOptions | None = None,
                 enable_progress: bool = False, batch_size: int | None = None,
                 min_success_rate: float = FaultSettings.min_success_rate,
                 max_retries_per_batch: int = FaultSettings.max_retries_per_batch,
                 checkpoint_config: dict | None = None, callback=None,
                 force_progress: bool = False, adaptive_batching: bool = False,
                 initial_batch_size: int | None = None, max_batch_size: int = 100_000,
                 restarts: int = RestartSettings.restarts,
                 checkpoint_lock: DirectoryLock | None = None):
        """``checkpoint_lock``: the checkpoint folder's lock as the caller already holds it
        (hold_checkpoint_dir, taken before the data were read); the fit uses it and leaves
        its release to the caller. None: the fit takes the folder's lock for its run."""
        check_wrapper_settings(backend, batch_size, min_success_rate, max_retries_per_batch,
                               memory_limit_gb, checkpoint_config, callback=callback,
                               parallel_batches=parallel_batches,
                               initial_batch_size=initial_batch_size,
                               max_batch_size=max_batch_size)
        self.enable_large_dataset = enable_large_dataset
        self.enable_recovery = enable_recovery
        self.fast_mode = fast_mode
        self.validate = enable_numerical_validation and not fast_mode
        self.parallel_batches = int(parallel_batches)
        self.backend = backend
        self.nlsq_method = nlsq_method
        self.strategy_override = strategy_override
        self.memory_limit_gb = memory_limit_gb
        self.options = options or EngineOptions()
        self.enable_progress = enable_progress
        self.batch_size = batch_size
        self.selector = DatasetSizeStrategy(memory_limit_gb=memory_limit_gb)
        self.min_success_rate = min_success_rate
        self.max_retries_per_batch = max_retries_per_batch
        self.checkpoint_config = dict(checkpoint_config or {})
        self.callback = callback
        self.force_progress = force_progress
        self.recovery_applicator = RecoveryStrategyApplicator()
        self.recovery_sequence = ["perturb_parameters"]
        self.adaptive_batching = adaptive_batching
        self.initial_batch_size = initial_batch_size
        self.max_batch_size = int(max_batch_size)
        self.restarts = restarts
        self.checkpoint_lock = checkpoint_lock

    # --- tier selection -----------------------------------------------------------
    def select_strategy(self, n_points: int, n_params: int, override=None) -> OptimizationStrategy:
        tier = self.selector.select_strategy(
            n_points, n_params, strategy_override=override or self.strategy_override)
        if not self.enable_large_dataset and tier != OptimizationStrategy.STANDARD and \
                not (override or self.strategy_override):
            tier = OptimizationStrategy.STANDARD
        return tier

    def _batch(self, tier, n_points, n_params) -> int:
        if self.batch_size:
            return int(self.batch_size)
        if tier == OptimizationStrategy.STREAMING:
            return self.selector.build_streaming_config(
                n_points, n_params, adaptive_batching=self.adaptive_batching,
                initial_batch_size=self.initial_batch_size,
                max_batch_size=self.max_batch_size)["batch_size"]
        return min(DEFAULT_BATCH, self.max_batch_size)

    def devices(self) -> list:
        """The devices a pass is spread over (``parallel_batches`` of them)."""
        import warnings

        import jax

        devs = jax.devices()
        if self.parallel_batches > len(devs):
            warnings.warn(f"parallel_batches={self.parallel_batches} but JAX sees "
                          f"{len(devs)} device(s); using {len(devs)}", RuntimeWarning,
                          stacklevel=3)
        return devs[: max(1, self.parallel_batches)]

    def _data(self, tier, cols, n, batch, source=None):
        """Where the data live for this tier (the only thing a tier changes)."""
        devs = self.devices()
        if tier == OptimizationStrategy.STREAMING:
            calls = max(1, min(self._streaming_calls(), math.ceil(n / batch)))  # no idle padding
            data = (StreamingData(source, batch, calls) if cols is None
                    else HostArrayData(cols, n, batch, calls))
            data.devices = devs if len(devs) > 1 else []
            if self.adaptive_batching:
                data.max_batch_size = self.max_batch_size
            return data
        if cols is None:
            cols = {"y": source.read_packed()}
        calls = self._calls(tier, n, batch)
        if len(devs) > 1:
            if self.checkpoint_config.get("enable_checkpoints"):
                raise ValueError("parallel_batches > 1 with in-memory data cannot checkpoint "
                                 "mid-pass; use strategy 'streaming' or one device")
            return ShardedData(cols, n, batch, devs, calls)
        return InMemoryData(cols, n, batch, batches_per_call=calls)

    def memory_plan(self, tier, n_points: int, n_params: int, batch: int) -> int:
        """Honour ``memory_limit_gb``: the batch size that keeps the fit under it.

        Budget = this process's resident memory now (the JAX runtime) + a compilation
        allowance + the coarse subsample + the batches of one call, with data held in
        memory for the in-memory tiers. Raises NLSQMemoryError naming the smallest
        workable limit when even the smallest batch would not fit.
        """
        if self.memory_limit_gb is None:
            return batch
        from homodyne.memory import rss_bytes
        from homodyne.optimization.exceptions import NLSQMemoryError
        from homodyne.optimization.strategy import MIN_BATCH, bytes_per_point

        limit = self.memory_limit_gb * 2**30
        base = rss_bytes() + COMPILE_ALLOWANCE
        streaming = tier == OptimizationStrategy.STREAMING
        # the coarse levels held in memory, float32 (a spilled level lives in a file)
        sizes, spilled = coarse_level_sizes(n_points, self.options, streamed=streaming,
                                            spill=streaming)
        coarse = 4 * sum(sizes[:-1] if spilled else sizes)
        held = 0 if streaming else 8 * n_points
        per_point = (bytes_per_point(n_params) + 3 * 8) * (self._streaming_calls()
                                                          if streaming else 1)
        smallest = base + coarse + held + per_point * MIN_BATCH
        if smallest > limit:
            raise NLSQMemoryError(
                f"performance.memory_limit_gb = {self.memory_limit_gb:g} is too small for this "
                f"fit ({n_points:,} points, tier {tier}); the smallest workable value is "
                f"{smallest / 2**30 * 1.1:.2f} GB (runtime {base / 2**30:.2f} GB + coarse sample "
                f"{coarse / 2**30:.2f} GB + data {held / 2**30:.2f} GB + one batch)")
        fit = (0.9 * limit - base - coarse - held) / per_point  # a float: a limit of
        # never above the batch asked for (max_batch_size may be below MIN_BATCH)
        return max(min(MIN_BATCH, batch), int(min(fit, batch)))  # 1e300 GB: no overflow

    def _calls(self, tier, n_points, batch) -> int | None:
        if tier == OptimizationStrategy.CHUNKED:
            return max(1, math.ceil(math.ceil(n_points / batch) / CALLS_PER_PASS_CHUNKED))
        return None

    def _streaming_calls(self) -> int:
        """Batches per call when streaming: 8, or fewer so checkpoints land on time."""
        ck = CheckpointSettings.from_mapping(self.checkpoint_config)
        if ck.enable_checkpoints:
            return max(1, min(8, int(ck.checkpoint_frequency)))
        return 8

    def _options(self, batch) -> EngineOptions:
        opts = EngineOptions(**{**self.options.__dict__})
        opts.batch_size = batch
        return opts

    # --- generic curve fitting (the guide's example) ------------------------------
    def fit(self, model_func, xdata, ydata, p0, bounds=(-np.inf, np.inf), method: str = "trf",
            sigma=None, *, strategy: str | None = None, parameter_names=None,
            fixed=None, restarts: int | None = None) -> FitResult:
        """Least-squares fit of ``model_func(xdata, *params)`` to ``ydata``; ``fixed``
        (names or indices) holds those parameters at their p0; ``restarts`` (default: the
        wrapper's) > 1 fits from that many starts and keeps the best (``restarts.py``)."""
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS} (both run the bounded "
                             f"Levenberg-Marquardt engine), got {method!r}")
        y = plain_array(ydata, "ydata")
        x = plain_array(xdata, "xdata")
        s = check_curve_data(x, y, sigma)
        if isinstance(parameter_names, np.ndarray):  # plain str names, as for a list
            parameter_names = [str(n) if isinstance(n, str) else n for n in parameter_names]
        require_p0(p0)
        check_model_arity(model_func, np.size(p0), parameter_names)
        p0, lb, ub = validate_start(p0, bounds, parameter_names, fixed)
        n_starts = self._restarts(restarts)
        if self.backend == "nlsq":
            if n_starts > 1:
                raise ValueError("restarts need the homodyne engine (backend='homodyne'); "
                                 "the nlsq backend fits from one start")
            held = [str(parameter_names[k]) if parameter_names is not None else f"p[{k}]"
                    for k in np.flatnonzero(lb == ub)]
            if held:  # nlsq refuses lb == ub with its own words, naming no parameter
                raise ValueError(f"{', '.join(held)}: held fixed (fixed, or bounds with min = "
                                 "max), which needs the homodyne engine "
                                 "(backend='homodyne'); the nlsq backend fits every parameter")
            from homodyne.optimization.nlsq_backend import fit_with_nlsq

            return fit_with_nlsq(model_func, x, y, p0, lb, ub, method=self.nlsq_method,
                                 sigma=sigma, parameter_names=parameter_names,
                                 memory_limit_gb=self.memory_limit_gb)
        tier = self.select_strategy(y.size, p0.size, strategy)
        batch = min(self._batch(tier, y.size, p0.size), max(y.size, 1))
        batch = self.memory_plan(tier, y.size, p0.size, batch)
        cols = {"x": x, "y": y}
        if s is not None:
            cols["w"] = 1.0 / s
        problem = CurveProblem(model_func, p0.size, x_sample=x[..., : min(8, y.size)],
                               validate=self.validate, parameter_names=parameter_names)
        weighted = np.abs(y * cols["w"]) if "w" in cols else np.abs(y)
        finite = weighted[np.isfinite(weighted)]
        problem.value_scale = float(finite.max()) if finite.size else 0.0
        problem.sigma_given = s is not None  # chi2 then judges the fit (FitResult.status)
        data = self._data(tier, cols, y.size, batch)
        return self._run(problem, data, p0, lb, ub, tier, batch,
                         lambda: ["curve", _array_digest(cols), _model_identity(model_func)],
                         n_starts)

    # --- the XPCS two-time model --------------------------------------------------
    def plan_two_time(self, source, spec, *, strategy: str | None = None, y=None) -> FitPlan:
        """The tier, batch size and data source ``fit_two_time`` uses for this data (the
        benchmarks time passes over exactly these)."""
        n = spec.n_points
        tier = self.select_strategy(n, spec.n_params, strategy)
        batch = min(self._batch(tier, n, spec.n_params), n)
        batch = self.memory_plan(tier, n, spec.n_params, batch)
        data = self._data(tier, None if y is None else {"y": y}, n, batch, source)
        return FitPlan(tier, batch, data)

    def fit_two_time(self, source, spec, p0, bounds, *, strategy: str | None = None,
                     y=None, fixed=None, restarts: int | None = None) -> FitResult:
        """Fit the two-time model to a ``TwoTimeSource`` (or packed values ``y``);
        ``fixed`` names parameters held at their p0 ("contrast" names every angle's);
        ``restarts`` as in ``fit``."""
        require_p0(p0)
        y = check_two_time_data(source, spec, p0, y)
        p0, lb, ub = validate_start(p0, bounds, list(spec.parameter_names), fixed)
        n_starts = self._restarts(restarts)
        plan = self.plan_two_time(source, spec, strategy=strategy, y=y)
        tier, batch, data = plan.tier, plan.batch_size, plan.data
        problem = TwoTimeProblem(spec, validate=self.validate)
        return self._run(problem, data, p0, lb, ub, tier, batch,
                         lambda: ["two_time", repr(spec), _array_digest({"y": y}) if y is not None
                                  else _source_identity(source)], n_starts)

    def _monitor(self, tier, identity, p0, lb, ub, batch, data) -> tuple[FitMonitor, bool]:
        faults = FaultSettings(validate_numerics=self.validate,
                               enable_fault_tolerance=self.enable_recovery,
                               min_success_rate=self.min_success_rate,
                               max_retries_per_batch=self.max_retries_per_batch)
        show = tier in (OptimizationStrategy.CHUNKED, OptimizationStrategy.STREAMING)
        reset = getattr(self.recovery_applicator, "reset", None)
        if self.enable_recovery and callable(reset):  # every fit from the same stream
            reset()
        mon = FitMonitor(faults=faults, callback=self.callback,
                         applicator=self.recovery_applicator if self.enable_recovery else None,
                         progress=ProgressReporter(self.enable_progress and show,
                                                   force=self.force_progress))
        ck = CheckpointSettings.from_mapping(self.checkpoint_config)
        resume = False
        if ck.enable_checkpoints:
            manager = CheckpointManager(ck.checkpoint_dir, ck.checkpoint_frequency,
                                        ck.keep_last_checkpoints, ck.enable_compression,
                                        ck.checkpoint_min_interval_s,
                                        lock=self.checkpoint_lock)
            mon.checkpoints = CheckpointSession(manager, fingerprint(
                identity(), p0, lb, ub, str(tier), batch, data.batches_per_call,
                self.options.__dict__, self.validate,
                # recovery restarts, retries and the success-rate check shape the path
                # where batches fail or the solver stalls: a checkpoint of one path is
                # not the start of another (a resume listed restarts never made)
                self.enable_recovery, self.min_success_rate, self.max_retries_per_batch),
                resumes=bool(ck.resume_from_checkpoint))
            resume = bool(ck.resume_from_checkpoint)
        return mon, resume

    def _restarts(self, restarts) -> int:
        """The number of starts asked for, checked (0 and 1: a single fit)."""
        n = self.restarts if restarts is None else restarts
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or \
                not 0 <= n <= MAX_RESTARTS:
            raise ValueError(f"restarts must be a whole number >= 0 and <= {MAX_RESTARTS:,} (0 "
                             f"or 1: one start), got {n!r}")
        if n > 1 and CheckpointSettings.from_mapping(self.checkpoint_config).enable_checkpoints:
            raise ValueError("restarts cannot be combined with checkpoints (one fit resumes, "
                             "not a set of starts): set restarts to 0 or disable "
                             "enable_checkpoints")
        return int(n)

    def _run(self, problem, data, p0, lb, ub, tier, batch, identity, n_starts=0) -> FitResult:
        if n_starts > 1:
            return fit_with_restarts(
                problem, data, p0, lb, ub, settings=RestartSettings(restarts=n_starts),
                options=self._options(batch), strategy=tier.value,
                finish=lambda x: self._run(problem, data, x, lb, ub, tier, batch, identity))
        mon, resume = self._monitor(tier, identity, p0, lb, ub, batch, data)
        try:
            return run_fit(problem, data, p0, lb, ub, options=self._options(batch),
                           strategy=tier.value, monitor=mon, resume=resume,
                           recovery_sequence=tuple(self.recovery_sequence),
                           n_devices=len(self.devices()))
        except NLSQNumericalError as exc:
            if self.validate or not getattr(exc, "at_start", False):
                raise
            raise NLSQNumericalError(
                f"{exc}; numerical validation is off (fast_mode, or validate_numerics / "
                "enable_numerical_validation false), so one NaN or inf in the data (a missing "
                "point, which validation leaves out) makes the cost non-finite: turn it on") \
                from exc
        finally:
            if mon.progress is not None:
                mon.progress.close()
