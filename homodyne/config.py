"""YAML configuration: the guide's keys plus what the physics needs, validated on load.

Every problem is reported as one ``ConfigError`` naming the key and the fix; YAML is
loaded with ``yaml.safe_load``. Defaults are filled so the rest of the package
reads plain data classes.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from homodyne.model import LAMINAR_PARAMS, MODES, SCALINGS, STATIC_PARAMS

STRATEGIES = ("standard", "large", "chunked", "streaming")

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
    analysis_mode=("choice", None, MODES),
    per_angle_scaling=("choice", "individual", SCALINGS),
    experimental_data=_s(
        file_path=("path", None, None),
        q=("float", None, "positive"),
        q_tolerance=("float", None, "positive"),
        phi_ranges=("ranges", None, None),
        start_frame=("int", 1, "positive"),
        end_frame=("int", -1, None),
        dt=("float", None, "positive"),
        gap_h=("float", 2.0e6, "positive"),
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
        method=("choice", "trf", ("trf", "lm")),
        max_iterations=("int", 100, "positive"),
        step_tol_se=("float", 1e-4, "positive"),
        gtol=("float", 1e-6, "positive"),
        coarse=("bool", True, None),
        coarse_points=("int", 250_000, "positive"),
        streaming=_s(
            enable_checkpoints=("bool", False, None),
            checkpoint_dir=("str", "./checkpoints", None),
            checkpoint_frequency=("int", 10, "positive"),
            checkpoint_min_interval_s=("float", 10.0, "nonnegative"),
            resume_from_checkpoint=("bool", True, None),
            keep_last_checkpoints=("int", 3, "positive"),
            enable_fault_tolerance=("bool", True, None),
            validate_numerics=("bool", True, None),
            min_success_rate=("float", 0.5, "fraction"),
            max_retries_per_batch=("int", 2, "nonnegative"),
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
    output=_s(
        directory=("str", "results/fit", None),
        overwrite=("bool", False, None),
        plots=("bool", True, None),
    ),
)


def _type_name(v) -> str:
    return type(v).__name__


_FLOAT_LITERAL = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _check_number(key, value, kind, extra):
    # PyYAML (YAML 1.1) reads 2.0e6 -- no sign in the exponent -- as a string
    if isinstance(value, str) and _FLOAT_LITERAL.match(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        if kind == "int":
            raise ConfigError(key, f"expected an integer, got {value!r} ({_type_name(value)})")
        raise ConfigError(key, f"expected a number, got {value!r} ({_type_name(value)})")
    if kind == "int" and not float(value).is_integer():
        raise ConfigError(key, f"expected an integer, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number, got {value!r}")
    if extra == "positive" and value <= 0:
        raise ConfigError(key, f"must be > 0, got {value!r}")
    if extra == "nonnegative" and value < 0:
        raise ConfigError(key, f"must be >= 0, got {value!r}")
    if extra == "fraction" and not 0 <= value <= 1:
        raise ConfigError(key, f"must be between 0 and 1, got {value!r}")
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
            raise ConfigError(f"{prefix}{k}", f"unknown key{hint}")
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
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if kind in ("str", "path"):
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(key, f"expected a non-empty string, got {value!r}")
        return value
    if kind == "choice":
        if value not in extra:
            raise ConfigError(key, f"must be one of {', '.join(map(str, extra))}; got {value!r}")
        return value
    if kind == "list[str]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, f"expected a list of names, got {value!r}")
        return list(value)
    if kind == "list[float]":
        if not isinstance(value, list):
            raise ConfigError(key, f"expected a list of numbers, got {value!r}")
        return [_check_number(f"{key}[{i}]", v, "float", None) for i, v in enumerate(value)]
    if kind == "ranges":
        if not isinstance(value, list):
            raise ConfigError(key, "expected a list of [min_deg, max_deg] pairs")
        out = []
        for i, pair in enumerate(value):
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise ConfigError(f"{key}[{i}]", f"expected [min_deg, max_deg], got {pair!r}")
            lo, hi = (_check_number(f"{key}[{i}]", v, "float", None) for v in pair)
            if lo > hi:
                raise ConfigError(f"{key}[{i}]", f"min {lo} > max {hi}; swap them")
            out.append((lo, hi))
        return out
    if kind == "bounds":
        return _bounds(key, value)
    raise AssertionError(kind)


def _bounds(key, value) -> dict:
    if not isinstance(value, list):
        raise ConfigError(key, "expected a list of {name, min, max} entries")
    out = {}
    known = set(DEFAULT_BOUNDS)
    for i, entry in enumerate(value):
        k = f"{key}[{i}]"
        if not isinstance(entry, dict) or set(entry) - {"name", "min", "max"} or \
                "name" not in entry:
            raise ConfigError(k, f"expected {{name, min, max}}, got {entry!r}")
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
    fixed: list[str] = field(default_factory=list)  # held at their initial values
    source: str | None = None
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def physical_names(self) -> tuple[str, ...]:
        return STATIC_PARAMS if self.analysis_mode == "static" else LAMINAR_PARAMS

    @property
    def streaming(self) -> dict:
        return self.optimization["streaming"]

    def physical_initial(self) -> list[float]:
        return list(self.initial_parameters["values"])

    def bound(self, name: str) -> tuple[float, float]:
        return self.bounds.get(name, DEFAULT_BOUNDS[name])


def _resolve(path: str, base: Path | None) -> str:
    p = Path(os.path.expanduser(path))
    if p.is_absolute() or p.exists() or base is None:
        return str(p)
    alt = base / p
    return str(alt) if alt.exists() else str(p)


def validate_config(raw: Any, source: str | None = None, *, require_data: bool = True
                    ) -> HomodyneConfig:
    """Validate a parsed YAML mapping; fills defaults; raises one clear ConfigError."""
    try:
        d = _validate(raw, SCHEMA)
        init = d["initial_parameters"]
        names, values = init["parameter_names"], init["values"]
        if values is None:
            raise ConfigError("initial_parameters.values", "missing; give the initial "
                              "physical parameters, e.g. [1000.0, -1.2, 0.0]")
        if names is None:
            names = list(STATIC_PARAMS if len(values) == 3 else LAMINAR_PARAMS)
        mode = d["analysis_mode"] or ("static" if len(names) == 3 else "laminar_flow")
        expected = list(STATIC_PARAMS if mode == "static" else LAMINAR_PARAMS)
        if names != expected:
            raise ConfigError("initial_parameters.parameter_names",
                              f"{mode} mode needs {expected} in this order, got {names}")
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
        data = d["experimental_data"]
        base = Path(source).parent if source else None
        if data["file_path"] is not None:
            data["file_path"] = _resolve(data["file_path"], base)
            check_data_path(data["file_path"])
        elif require_data:
            raise ConfigError("experimental_data.file_path",
                              "missing; set it in the config or pass --data-file")
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
        optimization=d["optimization"],
        performance=d["performance"], output=d["output"], source=source, raw=raw or {})


def check_data_path(path: str) -> None:
    if not os.path.exists(path):
        raise ConfigError("experimental_data.file_path", f"file not found: {path}")
    if os.path.isdir(path):
        raise ConfigError("experimental_data.file_path",
                          f"{path} is a directory; point it at a data file")


def load_config(path, *, require_data: bool = True, overrides: dict | None = None
                ) -> HomodyneConfig:
    """Read a YAML file safely and validate it (``overrides`` patch nested keys first)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError("--config", f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise ConfigError("<yaml>", f"not valid YAML: {exc}", path) from None
    raw = {} if raw is None else raw
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, last = dotted.split(".")
        for k in parents:
            node = node.setdefault(k, {}) if isinstance(node, dict) else node
        if isinstance(node, dict):
            node[last] = value
    return validate_config(raw, path, require_data=require_data)
