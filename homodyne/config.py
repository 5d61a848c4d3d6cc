"""YAML configuration: the guide's keys plus what the physics needs, validated on load.

Every problem is reported as one ``ConfigError`` naming the key and the fix; YAML is
loaded with ``yaml.safe_load``. Defaults are filled so the rest of the package
reads plain data classes.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import math
import os
import re
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from homodyne.model import FRAME_TIME_RANGE_S, LAMINAR_PARAMS, MODES, SCALINGS, STATIC_PARAMS
from homodyne.optimization.settings import (
    MAX_AGE_S,
    MAX_RESTARTS,
    CheckpointSettings,
    EngineOptions,
    FaultSettings,
    RestartSettings,
)
from homodyne.optimization.strategy import TIER_NAMES

STRATEGIES = TIER_NAMES
_ENGINE, _FAULTS, _CKPT = EngineOptions(), FaultSettings(), CheckpointSettings()
ONE_TIME = "one_time"  # per-q g2(tau) fits of multi-tau results or tables

# Default bounds: wide physical ranges (physics.md's typical magnitudes well inside).
DEFAULT_BOUNDS = {
    "contrast": (0.0, 1.0),
    "offset": (0.5, 1.5),
    "D0": (1e-3, 1e7),
    "alpha": (-2.0, 2.0),
    "D_offset": (-1e5, 1e5),
    "gamma_dot_t0": (1e-10, 10.0),
    "beta": (-2.0, 2.0),
    "gamma_dot_t_offset": (-1.0, 1.0),
    "phi0": (-180.0, 180.0),
}


class ConfigError(ValueError):
    """A configuration problem: names the key, what is wrong, and how to fix it."""

    def __init__(self, key: str, problem: str, source: str | None = None):
        self.key = key
        self.problem = problem
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {problem}")


# --- schema: key -> (kind, default, extra) --------------------------------------------
# kinds: "str", "int", "float", "bool", "path", "list[float]", "list[str]", "ranges",
#        "bounds", "choice", "section"


def _s(**fields):
    return ("section", None, fields)


SCHEMA = _s(
    analysis_mode=("choice", None, (*MODES, ONE_TIME)),
    per_angle_scaling=("choice", "individual", SCALINGS),
    experimental_data=_s(
        file_path=("path", None, None),
        files=("files", None, None),
        q=("q", None, None),
        q_tolerance=("float", None, "positive"),
        phi_ranges=("ranges", None, None),
        start_frame=("int", 1, "positive"),
        end_frame=("int", -1, None),
        dt=("float", None, "frame_time"),
        gap_h=("float", 2.0e6, "positive"),
        exclude_diagonal_frames=("int", 0, "nonnegative"),
    ),
    initial_parameters=_s(
        parameter_names=("list[str]", None, None),
        values=("list[float]", None, None),
        contrast=("float", None, None),
        offset=("float", None, None),
    ),
    # defaults are in parsed form; ``fixed`` holds the named parameters at their initial value
    parameter_space=_s(bounds=("bounds", {}, None), fixed=("list[str]", [], None)),
    optimization=_s(
        # one engine (bounded Levenberg-Marquardt, the guide's 'trf'); 'lm' is refused
        method=("choice", "trf", ("trf",)),
        max_iterations=("int", _ENGINE.max_iterations, "positive"),
        step_tol_se=("float", _ENGINE.step_tol_se, "positive"),
        gtol=("float", _ENGINE.gtol, "positive"),
        coarse=("bool", _ENGINE.coarse, None),
        coarse_points=("int", _ENGINE.coarse_points, "positive"),
        # starts spread over the bounds, the best fit kept (0 or 1: the given start only)
        restarts=("int", RestartSettings.restarts, "starts"),
        # each LM step corrected along the model's curvature: one more pass per step
        geodesic_acceleration=("bool", _ENGINE.geodesic_acceleration, None),
        # a static fit from a plain start (J flat) first estimates J(t) from the data
        start_estimate=("bool", _ENGINE.start_estimate, None),
        streaming=_s(
            enable_checkpoints=("bool", _CKPT.enable_checkpoints, None),
            checkpoint_dir=("str", _CKPT.checkpoint_dir, None),
            checkpoint_frequency=("int", _CKPT.checkpoint_frequency, "positive"),
            checkpoint_min_interval_s=("float", _CKPT.checkpoint_min_interval_s,
                                       "nonnegative"),
            resume_from_checkpoint=("bool", _CKPT.resume_from_checkpoint, None),
            keep_last_checkpoints=("int", _CKPT.keep_last_checkpoints, "positive"),
            enable_fault_tolerance=("bool", _FAULTS.enable_fault_tolerance, None),
            validate_numerics=("bool", _FAULTS.validate_numerics, None),
            min_success_rate=("float", _FAULTS.min_success_rate, "fraction"),
            max_retries_per_batch=("int", _FAULTS.max_retries_per_batch, "nonnegative"),
        ),
    ),
    performance=_s(
        strategy_override=("choice", None, STRATEGIES),
        memory_limit_gb=("float", None, "positive"),
        enable_progress=("bool", True, None),
        batch_size=("int", None, "positive"),
        max_batch_size=("int", 100_000, "positive"),
        dtype=("choice", "float64", ("float64", "float32")),
        device=("choice", "cpu", ("cpu", "gpu")),
        fast_mode=("bool", False, None),
    ),
    one_time=_s(
        beta=("choice", "free", ("free", "fixed")),
        errors=("choice", "measured", ("measured", "scatter")),
        min_tau_s=("float", None, "positive"),
        max_tau_s=("float", None, "positive"),
        q_range=("list[float]", None, None),
        max_iterations=("int", 200, "positive"),
        series=("list[str]", [], None),
        ages_s=("list[float]", None, None),
        nonnegative_J=("bool", False, None),
    ),
    output=_s(
        directory=("str", "results/fit", None),
        overwrite=("bool", False, None),
        plots=("bool", True, None),
    ),
)


def _type_name(v) -> str:
    return type(v).__name__


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict = 2, 6, 6, 6
_SHORT.maxstring = _SHORT.maxother = 80


def _show(value) -> str:
    """A value as a message shows it: its repr, abbreviated (a YAML alias can expand to
    millions of items; the message stays one short line)."""
    return _SHORT.repr(value)


_FLOAT_LITERAL = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _fits_a_float(value: int) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _check_number(key, value, kind, extra):
    # PyYAML (YAML 1.1) reads 2.0e6 -- no sign in the exponent -- as a string
    if isinstance(value, str) and _FLOAT_LITERAL.match(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        if kind == "int":
            raise ConfigError(key, f"expected an integer, got {_show(value)} ({_type_name(value)})")
        raise ConfigError(key, f"expected a number, got {_show(value)} ({_type_name(value)})")
    if isinstance(value, int) and not _fits_a_float(value):  # 10**400: float() overflows
        raise ConfigError(key, f"must be a finite number, got an integer of "
                               f"{len(str(abs(value)))} digits")
    if kind == "int" and not float(value).is_integer():
        raise ConfigError(key, f"expected an integer, got {_show(value)}")
    if not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number, got {_show(value)}")
    if extra == "positive" and value <= 0:
        raise ConfigError(key, f"must be > 0, got {_show(value)}")
    if extra == "frame_time" and not FRAME_TIME_RANGE_S[0] <= value <= FRAME_TIME_RANGE_S[1]:
        raise ConfigError(key, f"must be a frame time between {FRAME_TIME_RANGE_S[0]:g} s and "
                               f"{FRAME_TIME_RANGE_S[1]:g} s, got {_show(value)}")
    if extra == "nonnegative" and value < 0:
        raise ConfigError(key, f"must be >= 0, got {_show(value)}")
    if extra == "fraction" and not 0 <= value <= 1:
        raise ConfigError(key, f"must be between 0 and 1, got {_show(value)}")
    if extra == "starts" and not 0 <= value <= MAX_RESTARTS:
        raise ConfigError(key, f"must be between 0 and {MAX_RESTARTS:,} (starts in all; 0 or "
                               f"1: the given start only), got {_show(value)}")
    return int(value) if kind == "int" else float(value)


def _validate(node, schema, prefix="") -> dict:
    kind, default, extra = schema
    assert kind == "section"
    if node is None:
        node = {}
    if not isinstance(node, dict):
        raise ConfigError(prefix.rstrip(".") or "<top level>",
                          f"expected a mapping of keys, got {_type_name(node)}")
    out = {}
    for k in node:
        if not isinstance(k, str) or k not in extra:
            close = difflib.get_close_matches(str(k), list(extra), n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else \
                f"; known keys here: {', '.join(extra)}"
            shown = k[:80] if isinstance(k, str) and k.isprintable() else _show(k)
            raise ConfigError(f"{prefix}{shown}", f"unknown key{hint}")
    for k, sub in extra.items():
        key = f"{prefix}{k}"
        if sub[0] == "section":
            out[k] = _validate(node.get(k), sub, key + ".")
            continue
        value = node.get(k, None)
        out[k] = copy.deepcopy(sub[1]) if value is None else _value(key, value, sub)
    return out


def _value(key, value, spec):
    kind, _, extra = spec
    if kind in ("int", "float"):
        return _check_number(key, value, kind, extra)
    if kind == "q":
        return _q_selection(key, value)
    if kind == "files":
        if isinstance(value, str) and value.strip():
            return _no_nul(key, value)
        if isinstance(value, list) and value and all(isinstance(v, str) and v.strip()
                                                     for v in value):
            return [_no_nul(f"{key}[{i}]", v) for i, v in enumerate(value)]
        raise ConfigError(key, "expected a glob pattern or a list of data files, got "
                               f"{_show(value)}")
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {_show(value)}")
        return value
    if kind in ("str", "path"):
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(key, f"expected a non-empty string, got {_show(value)}")
        return _no_nul(key, value)
    if kind == "choice":
        if key == "optimization.method" and value == "lm":
            raise ConfigError(key, "'lm' is not a separate method here: homodyne has one "
                              "engine, a bounded Levenberg-Marquardt trust region (the guide's "
                              "'trf'), which every fit uses; write trf or remove the key")
        if value not in extra:
            raise ConfigError(key, f"must be one of {', '.join(map(str, extra))}; "
                                   f"got {_show(value)}")
        return value
    if kind == "list[str]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, f"expected a list of names, got {_show(value)}")
        return [_no_nul(f"{key}[{i}]", v) for i, v in enumerate(value)]
    if kind == "list[float]":
        if not isinstance(value, list):
            raise ConfigError(key, f"expected a list of numbers, got {_show(value)}")
        return [_check_number(f"{key}[{i}]", v, "float", None) for i, v in enumerate(value)]
    if kind == "ranges":
        if not isinstance(value, list):
            raise ConfigError(key, "expected a list of [min_deg, max_deg] pairs")
        if not value:
            raise ConfigError(key, "an empty list selects no angle; give [min_deg, max_deg] "
                                   "pairs, or remove the key to fit every angle of the file")
        out = []
        for i, pair in enumerate(value):
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise ConfigError(f"{key}[{i}]", f"expected [min_deg, max_deg], got {_show(pair)}")
            lo, hi = (_check_number(f"{key}[{i}]", v, "float", None) for v in pair)
            if lo > hi:
                raise ConfigError(f"{key}[{i}]", f"reversed range: min {lo} > max {hi}; swap "
                                                  "them (ranges do not wrap modulo 360)")
            out.append((lo, hi))
        return out
    if kind == "bounds":
        return _bounds(key, value)
    raise AssertionError(kind)


def _no_nul(key, value: str) -> str:
    """A path or name: no NUL character (the OS refuses it with a ValueError, not an
    OSError, deep inside mkdir or open)."""
    if "\0" in value:
        raise ConfigError(key, f"contains a NUL character (\\0): {_show(value)}; remove it")
    return value


def _q_selection(key, value):
    """A number (one bin), a list of numbers (those bins) or 'all' (every bin of a file)."""
    if isinstance(value, str) and value.strip().lower() == "all":
        return "all"
    if isinstance(value, list):
        if not value:
            raise ConfigError(key, "empty list; give q values, a single q, or 'all'")
        return [_check_number(f"{key}[{i}]", v, "float", "positive")
                for i, v in enumerate(value)]
    if isinstance(value, str) and not _FLOAT_LITERAL.match(value.strip()):
        raise ConfigError(key, f"expected a number, a list of numbers or 'all', got {_show(value)}")
    return _check_number(key, value, "float", "positive")


def _bounds(key, value) -> dict:
    if not isinstance(value, list):
        raise ConfigError(key, "expected a list of {name, min, max} entries")
    out = {}
    known = set(DEFAULT_BOUNDS)
    for i, entry in enumerate(value):
        k = f"{key}[{i}]"
        if not isinstance(entry, dict) or set(entry) - {"name", "min", "max"} or \
                "name" not in entry:
            raise ConfigError(k, f"expected {{name, min, max}}, got {_show(entry)}")
        name = entry["name"]
        if name not in known:
            close = difflib.get_close_matches(str(name), sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{k}.name", f"unknown parameter {name!r}{hint}")
        lo = _check_number(f"{k}.min", entry.get("min", DEFAULT_BOUNDS[name][0]), "float", None)
        hi = _check_number(f"{k}.max", entry.get("max", DEFAULT_BOUNDS[name][1]), "float", None)
        if lo > hi:
            raise ConfigError(k, f"bounds of {name}: min {lo} must be <= max {hi} "
                              "(min == max fixes the parameter)")
        if not math.isfinite(hi - lo):  # the start's margin and the restarts' spread use it
            raise ConfigError(k, f"bounds of {name}: the width max - min = {hi:g} - ({lo:g}) "
                              "exceeds the largest float; narrow them (e.g. to +/-1e300)")
        if name in out:
            raise ConfigError(k, f"{name} is bounded twice")
        out[name] = (lo, hi)
    return out


# --- the typed result ---------------------------------------------------------------


@dataclass
class HomodyneConfig:
    """A validated configuration, with all defaults filled in."""

    analysis_mode: str
    per_angle_scaling: str
    experimental_data: dict
    initial_parameters: dict
    bounds: dict
    optimization: dict
    performance: dict
    output: dict
    one_time: dict = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)  # held at their initial values
    source: str | None = None
    raw: dict = field(default_factory=dict, repr=False)
    # warnings said while the config was read (before a run's fit.log opens): the run
    # writes them into its fit.log too
    config_warnings: tuple[str, ...] = field(default=(), repr=False)

    @property
    def physical_names(self) -> tuple[str, ...]:
        return STATIC_PARAMS if self.analysis_mode == "static" else LAMINAR_PARAMS

    @property
    def is_multi(self) -> bool:
        """Several fits: a list of files, several q values, or every q bin ('all')."""
        d = self.experimental_data
        return d["files"] is not None or d["q"] == "all" or isinstance(d["q"], list)

    @property
    def streaming(self) -> dict:
        return self.optimization["streaming"]

    def physical_initial(self) -> list[float]:
        return list(self.initial_parameters["values"])

    def bound(self, name: str) -> tuple[float, float]:
        return self.bounds.get(name, DEFAULT_BOUNDS[name])


def _resolve(path: str, base: Path | None) -> str:
    """A relative path from the working folder, else from the config's folder (``base``);
    a different file of that name beside the config is named in a warning: which of the two
    was fitted must not depend on where the command happened to be started, unsaid."""
    p = Path(os.path.expanduser(path))
    if p.is_absolute() or base is None:
        return str(p)
    alt = base / p
    if p.exists():
        try:
            other = alt.exists() and not os.path.samefile(p, alt)
        except OSError:
            other = False
        if other:
            logging.getLogger(__name__).warning(
                "%s is read from the working folder (%s); the config's folder holds another "
                "file of that name (%s): give an absolute path to choose", path, p.resolve(), alt)
        return str(p)
    return str(alt) if alt.exists() else str(p)


class _KeptWarnings(logging.Handler):
    """The warnings logged while a config is validated, kept for the run's fit.log."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record) -> None:
        self.messages.append(record.getMessage())


def validate_config(raw: Any, source: str | None = None, *, require_data: bool = True
                    ) -> HomodyneConfig:
    """Validate a parsed YAML mapping; fills defaults; raises one clear ConfigError. What
    it warns about is also kept (``config_warnings``) for the fit.log that opens later."""
    kept = _KeptWarnings()
    logger = logging.getLogger(__name__)
    logger.addHandler(kept)
    try:
        cfg = _validate_config(raw, source, require_data=require_data)
    finally:
        logger.removeHandler(kept)
    return dataclasses.replace(cfg, config_warnings=tuple(kept.messages)) if kept.messages \
        else cfg


def _validate_config(raw: Any, source: str | None, *, require_data: bool) -> HomodyneConfig:
    try:
        d = _validate(raw, SCHEMA)
        _expand_home(d)
        init = d["initial_parameters"]
        names, values = init["parameter_names"], init["values"]
        data = d["experimental_data"]
        base = Path(source).parent if source else None
        if data["files"] is not None:
            if data["file_path"] is not None:
                raise ConfigError("experimental_data.files", "give either file_path (one file) "
                                  "or files (a list or glob), not both")
            data["files"] = _resolve_files(data["files"], base)
        elif data["file_path"] is not None:
            data["file_path"] = _resolve(data["file_path"], base)
            check_data_path(data["file_path"])
        if _is_one_time(d, data["file_path"]):
            for i, p in enumerate(d["one_time"]["series"]):
                if not p.strip():
                    raise ConfigError(f"one_time.series[{i}]", "empty path; give a multi-tau "
                                      "file of the aging series or remove the entry")
            d["one_time"]["series"] = [_resolve(p, base) for p in d["one_time"]["series"]]
            return _one_time_config(d, source, raw)
        if isinstance(raw, dict) and raw.get("one_time") not in (None, {}):
            raise ConfigError("one_time", f"applies to analysis_mode: one_time only (this is a "
                              f"{d['analysis_mode'] or 'two-time'} fit); remove it")
        if values is None:
            raise ConfigError("initial_parameters.values", "missing; give the initial "
                              "physical parameters, e.g. [1000.0, -1.2, 0.0]")
        if names is None:
            names = list(STATIC_PARAMS if len(values) == 3 else LAMINAR_PARAMS)
        mode = d["analysis_mode"] or ("static" if len(names) == 3 else "laminar_flow")
        expected = list(STATIC_PARAMS if mode == "static" else LAMINAR_PARAMS)
        given = (raw.get("experimental_data") or {}) if isinstance(raw, dict) else {}
        if mode == "static" and given.get("gap_h") is not None:  # it would do nothing
            raise ConfigError("experimental_data.gap_h", "applies to laminar_flow fits only "
                              "(the static model has no shear term); remove it")
        if names != expected:
            raise ConfigError("initial_parameters.parameter_names",
                              f"{mode} mode needs {expected} in this order, got {_show(names)}")
        if len(values) != len(names):
            raise ConfigError("initial_parameters.values",
                              f"{len(values)} values for {len(names)} parameter names")
        init["parameter_names"] = names
        allowed = set(expected) | {"contrast", "offset"}
        for name in d["parameter_space"]["bounds"]:
            if name not in allowed:
                raise ConfigError("parameter_space.bounds",
                                  f"{name} is not a parameter of {mode} mode")
        bounds = d["parameter_space"]["bounds"]
        for name in d["parameter_space"]["fixed"]:
            if name not in allowed:
                raise ConfigError("parameter_space.fixed",
                                  f"{name!r} is not a parameter of {mode} mode; choose from "
                                  f"{sorted(allowed)}")
        for name in ("contrast", "offset"):  # no value: held at a rough estimate from the data
            if name in d["parameter_space"]["fixed"] and init[name] is None:
                raise ConfigError("parameter_space.fixed", f"{name} is fixed but "
                                  f"initial_parameters.{name} is not given: it would be held at "
                                  "a rough estimate from the data's first row; give the value "
                                  "(or bounds with min == max), or let it be fitted")
        for name, v in zip(names, values, strict=True):
            lo, hi = bounds.get(name, DEFAULT_BOUNDS[name])
            if not lo <= v <= hi:
                raise ConfigError("initial_parameters.values",
                                  f"{name} = {v} lies outside its bounds [{lo}, {hi}]; "
                                  "change the value or the bounds")
        for name in ("contrast", "offset"):
            v = init[name]
            lo, hi = bounds.get(name, DEFAULT_BOUNDS[name])
            if v is not None and not lo <= v <= hi:
                raise ConfigError(f"initial_parameters.{name}",
                                  f"{v} lies outside its bounds [{lo}, {hi}]")
        if data["file_path"] is None and data["files"] is None and require_data:
            raise ConfigError("experimental_data.file_path",
                              "missing; set it (or experimental_data.files) in the config "
                              "or pass --data-file")
        opt = d["optimization"]
        if opt["restarts"] > 1 and opt["streaming"]["enable_checkpoints"]:
            raise ConfigError("optimization.restarts", f"{opt['restarts']} starts cannot be "
                              "combined with optimization.streaming.enable_checkpoints (one fit "
                              "resumes, not a set of starts): set restarts to 0 or disable "
                              "checkpoints")
        _refuse_contradictions(raw if isinstance(raw, dict) else {}, d)
        end = data["end_frame"]
        if end != -1 and end < data["start_frame"] + 1:
            raise ConfigError("experimental_data.end_frame",
                              f"{end} must be -1 (last frame) or > start_frame "
                              f"({data['start_frame']})")
    except ConfigError as exc:
        if source and not str(exc).startswith(source):
            raise ConfigError(exc.key, exc.problem, source) from None
        raise
    return HomodyneConfig(
        analysis_mode=mode, per_angle_scaling=d["per_angle_scaling"], experimental_data=data,
        initial_parameters=init, bounds=bounds, fixed=d["parameter_space"]["fixed"],
        optimization=d["optimization"], performance=d["performance"], output=d["output"],
        one_time=d["one_time"], source=source, raw=raw or {})


def _expand_home(d: dict) -> None:
    """``~`` in the output and checkpoint folders means the home folder, as it does in
    the data paths (it made a folder named ``~`` in the working folder, and the run said
    'results in ~/out')."""
    stream = d["optimization"]["streaming"]
    for section, key, dotted in ((d["output"], "directory", "output.directory"),
                                 (stream, "checkpoint_dir",
                                  "optimization.streaming.checkpoint_dir")):
        if isinstance(section.get(key), str):
            section[key] = os.path.expanduser(section[key])
            if section[key].startswith("~"):  # ~name of no user: a folder named '~name' here
                raise ConfigError(dotted, f"{section[key]!r}: no user "
                                  f"{section[key][1:].split('/')[0]!r} has a home folder; "
                                  "give a path without ~ or with ~ alone (your home folder)")


def _given(raw: dict, dotted: str):
    """The value the user wrote for a dotted key (None when not written)."""
    node = raw
    for k in dotted.split("."):
        node = node.get(k) if isinstance(node, dict) else None
    return node


def _refuse_contradictions(raw: dict, d: dict) -> None:
    """Two keys of which the second would silently lose: one ConfigError naming both."""
    perf = d["performance"]
    pairs = [("optimization.coarse", False, "optimization.coarse_points",
              "there is no coarse stage for it to size"),
             ("optimization.streaming.enable_fault_tolerance", False,
              "optimization.streaming.max_retries_per_batch",
              "without fault tolerance a failed batch is not retried"),
             ("performance.fast_mode", True, "optimization.streaming.validate_numerics",
              "fast mode turns the NaN/Inf validation off")]
    for first, value, second, why in pairs:
        if _given(raw, first) is value and _given(raw, second) not in (None, False):
            raise ConfigError(second, f"is set but {first} is {str(value).lower()}: {why}; "
                              f"remove one of the two keys")
    opt = d["optimization"]
    if opt["geodesic_acceleration"] and opt["streaming"]["enable_checkpoints"]:
        raise ConfigError("optimization.geodesic_acceleration", "cannot be combined with "
                          "optimization.streaming.enable_checkpoints (its directional passes "
                          "are not replayed on resume); set one of the two to false")
    batch, most = perf["batch_size"], perf["max_batch_size"]
    if batch is not None and batch > most:
        raise ConfigError("performance.batch_size", f"{batch:,} exceeds "
                          f"performance.max_batch_size ({most:,}); lower batch_size or raise "
                          "max_batch_size")


def _is_one_time(d: dict, file_path) -> bool:
    """analysis_mode: one_time, or no mode and no physical start values with a one-time
    file (multi-tau HDF5 result, CSV or NPZ table)."""
    if d["analysis_mode"] == ONE_TIME:
        return True
    if d["analysis_mode"] is not None or d["initial_parameters"]["values"] is not None \
            or file_path is None:
        return False
    from homodyne.onetime.data import is_one_time_file

    return is_one_time_file(file_path)


# experimental_data keys of two-time fits: one-time mode has its own (one_time.*)
TWO_TIME_ONLY = {"files": "one_time.series for more files of the sample",
                 "q": "one_time.q_range", "q_tolerance": "one_time.q_range",
                 "phi_ranges": None, "start_frame": "one_time.min_tau_s/max_tau_s",
                 "end_frame": "one_time.min_tau_s/max_tau_s", "dt": None, "gap_h": None,
                 "exclude_diagonal_frames": "one_time.min_tau_s"}


TWO_TIME_SECTIONS = ("per_angle_scaling", "initial_parameters", "parameter_space",
                     "optimization", "performance")


def _one_time_config(d: dict, source, raw) -> HomodyneConfig:
    ot = d["one_time"]
    for section in TWO_TIME_SECTIONS:
        if (raw or {}).get(section) not in (None, {}):
            raise ConfigError(section, "applies to two-time fits only; a one-time fit takes its "
                              "start values from the data and its settings from one_time.*: "
                              "remove it")
    given = (raw or {}).get("experimental_data") or {}
    for key, instead in TWO_TIME_ONLY.items():
        if given.get(key) is not None:  # it would do nothing: say so instead of ignoring it
            use = f"; use {instead}" if instead else ""
            raise ConfigError(f"experimental_data.{key}", "applies to two-time data only; a "
                              f"one-time fit (multi-tau g2) fits every q of its file{use}")
    if d["experimental_data"]["file_path"] is None:
        raise ConfigError("experimental_data.file_path",
                          "missing; set it in the config or pass --data-file")
    qr = ot["q_range"]
    if qr is not None and (len(qr) != 2 or qr[0] > qr[1]):
        raise ConfigError("one_time.q_range", f"expected [q_min, q_max], got {_show(qr)}")
    for i, path in enumerate(ot["series"]):
        check_data_path(path, key=f"one_time.series[{i}]")
    seen = {os.path.realpath(d["experimental_data"]["file_path"]): "experimental_data.file_path"}
    for i, path in enumerate(ot["series"]):  # one file twice: two equal ages, a degenerate fit
        first = seen.setdefault(os.path.realpath(path), f"one_time.series[{i}]")
        if first != f"one_time.series[{i}]":
            raise ConfigError(f"one_time.series[{i}]", f"{path} is already {first}; list each "
                              "file of the aging series once")
    ages = ot["ages_s"]
    if ages is not None and len(ages) != 1 + len(ot["series"]):
        raise ConfigError("one_time.ages_s", f"{len(ages)} ages for {1 + len(ot['series'])} "
                          "files (experimental_data.file_path, then one_time.series)")
    for i, age in enumerate(ages or []):
        if age <= 0:
            raise ConfigError(f"one_time.ages_s[{i}]", f"must be > 0 (seconds since the sample "
                              f"was prepared), got {age}")
        if age > MAX_AGE_S:
            raise ConfigError(f"one_time.ages_s[{i}]", f"{age:g} s is older than any sample "
                              f"(at most {MAX_AGE_S:g} s): give the ages in seconds")
    if ot["series"]:  # refused after the per-q fits ("not a readable HDF5 file") before
        _refuse_tables_in_series([("experimental_data.file_path",
                                   d["experimental_data"]["file_path"]),
                                  *((f"one_time.series[{i}]", path)
                                    for i, path in enumerate(ot["series"]))])
    given = (raw or {}).get("one_time") or {}
    if not ot["series"]:  # without a series there is no J-model fit for them to steer
        for key in ("ages_s", "nonnegative_J"):
            if given.get(key) not in (None, False):
                raise ConfigError(f"one_time.{key}", "applies to the aging J-model fitted over "
                                  "experimental_data.file_path and one_time.series; with no "
                                  "series it would do nothing: list the other files of the "
                                  "series or remove it")
    lo, hi = ot["min_tau_s"], ot["max_tau_s"]
    if lo is not None and hi is not None and lo >= hi:
        raise ConfigError("one_time.min_tau_s", f"{lo} must be < max_tau_s ({hi})")
    return HomodyneConfig(
        analysis_mode=ONE_TIME, per_angle_scaling=d["per_angle_scaling"],
        experimental_data=d["experimental_data"], initial_parameters=d["initial_parameters"],
        bounds=d["parameter_space"]["bounds"], optimization=d["optimization"],
        performance=d["performance"], output=d["output"], one_time=ot, source=source,
        raw=raw or {})


def _resolve_files(files, base: Path | None) -> list[str]:
    """A glob (relative to the config's folder if it matches nothing from here) or a list."""
    import glob

    if isinstance(files, str):
        pattern = os.path.expanduser(files)
        found = sorted(glob.glob(pattern))
        if not found and base is not None and not os.path.isabs(pattern):
            found = sorted(glob.glob(str(base / pattern)))
        if not found:  # a file name with [ ] is a pattern that does not match itself
            found = [p for p in (pattern, str(base / pattern) if base else None)
                     if p is not None and os.path.isfile(p)][:1]
        if not found:
            raise ConfigError("experimental_data.files", f"no file matches {_show(files)}; check "
                              "the pattern (quote it in YAML) or list the files")
        files = found
    out = [_resolve(f, base) for f in files]
    for f in out:
        check_data_path(f, key="experimental_data.files")
    return out


def _refuse_tables_in_series(keyed_paths) -> None:
    """An aging series (one_time.series) is fitted from multi-tau HDF5 files (each records
    its start time, hence its age); a CSV table among them is refused before any fit."""
    import h5py

    for key, path in keyed_paths:
        if os.path.isfile(path) and os.access(path, os.R_OK) and not h5py.is_hdf5(path):
            raise ConfigError(key, f"{path} is not a multi-tau HDF5 file; the aging J-model "
                              "of one_time.series is fitted from multi-tau HDF5 files (each "
                              "records its start time): list those files, or fit a g2 table "
                              "alone (without one_time.series)")


def check_data_path(path: str, key: str = "experimental_data.file_path") -> None:
    from homodyne.data.errors import unnameable_reason

    if (why := unnameable_reason(path)) is not None:
        raise ConfigError(key, f"{path} {why}")
    if not os.path.exists(path):
        from homodyne.data.errors import missing_reason

        why = missing_reason(path)
        raise ConfigError(key, f"file not found: {path}" if why == "file does not exist"
                          else f"{path} {why}")
    if os.path.isdir(path):
        raise ConfigError(key,
                          f"{path} is a directory; point it at a data file")
    if not os.path.isfile(path):  # a FIFO or device would block or read forever
        raise ConfigError(key, f"{path} is not a regular file (a pipe or device); point it "
                               "at a data file")
    if not os.access(path, os.R_OK):
        from homodyne.data.errors import UNREADABLE

        raise ConfigError(key, f"{path} {UNREADABLE}")


MAX_CONFIG_BYTES = 1 << 20  # configs are a few kB; anything this big is data given by mistake


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (not last-wins); merge
    keys (``<<: *defaults``) work as in safe_load: a key written out overrides a merged one."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {key_node.start_mark.line + 1}); "
                    "keep only one", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path, *, require_data: bool = True, overrides: dict | None = None
                ) -> HomodyneConfig:
    """Read a YAML file safely and validate it (``overrides`` patch nested keys first)."""
    path = os.fspath(path)
    if not path.strip():
        raise ConfigError("--config", "empty path; give the YAML config file")
    if os.path.isdir(path):
        raise ConfigError("--config", f"{path} is a directory; give the YAML config file in it")
    if not os.path.exists(path):
        raise ConfigError("--config", f"config file not found: {path}")
    if not os.path.isfile(path):  # a pipe (<(...)), /dev/null, a device: not a saved config
        raise ConfigError("--config", f"{path} is not a regular file (a pipe or device); give "
                          "the YAML config file itself")
    size = os.path.getsize(path)
    if size > MAX_CONFIG_BYTES:  # YAML would parse a data table for minutes, in GBs
        raise ConfigError("--config", f"{path} holds {size:,} bytes; a config is a small YAML "
                          f"file (at most {MAX_CONFIG_BYTES:,} bytes): is it the data? give "
                          "data with experimental_data.file_path or --data-file")
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.load(fh, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except PermissionError:
        from homodyne.data.errors import UNREADABLE

        raise ConfigError("--config", f"{path} {UNREADABLE}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError("<file>", f"not UTF-8 text (byte {exc.start}); save the config "
                          "as UTF-8", path) from None
    except yaml.YAMLError as exc:
        raise ConfigError("<yaml>", "not valid YAML: " + " ".join(str(exc).split()), path) \
            from None
    except RecursionError:  # thousands of nested [ or {: no config is built like that
        raise ConfigError("<yaml>", "lists or mappings nested too deeply to read; a config "
                          "nests a few levels: correct the file", path) from None
    except ValueError as exc:  # a scalar YAML matched but Python cannot build: an integer of
        # more than 4,300 digits, a date such as 2024-13-45
        why = " ".join(str(exc).split())
        why = why if len(why) <= 100 else why[:97] + "..."
        raise ConfigError("<yaml>", f"a value YAML reads as a number or date cannot be built "
                          f"({why}); quote it or correct it", path) from None
    raw = {} if raw is None else raw
    if overrides is not None and not isinstance(overrides, dict):
        raise TypeError(f"overrides must be a dict of dotted keys (e.g. "
                        f"{{'experimental_data.q': 0.0054}}), got {type(overrides).__name__}")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, last = dotted.split(".")
        for depth, k in enumerate(parents):
            if not isinstance(node, dict):
                break
            if node.get(k) is None:  # a section whose keys are all commented out reads
                node[k] = {}  # as null, which validation takes as empty: so does an override
            node = node[k]
            if not isinstance(node, dict):
                above = ".".join(parents[:depth + 1])
                raise ConfigError(dotted, f"{above} is a value ({_show(node)}), not a section "
                                  "with keys; override it as a whole or correct the key", path)
        if isinstance(node, dict):
            node[last] = value
    return validate_config(raw, path, require_data=require_data)
