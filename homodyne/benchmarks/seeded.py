"""Seeded comparison against SciPy's TRF (issue 14: "within 1e-3 SE of SciPy's optimum").

``case(seed)`` draws one two-time fit problem from the seed; ``run(seed)`` fits it with the
engine through ``NLSQWrapper.fit_two_time`` and with SciPy's ``least_squares`` (TRF, full
tolerance) from the same start on the same bounds, and returns one JSON-able record.

Conventions of a record:
- ``cost`` is 0.5·Σ r² with unit weights (the engine's and SciPy's own convention), both
  recomputed in float64 from the parameters on the case's data (``cost64``);
- ``dchi2`` = 2(cost_ours − cost_scipy)/sigma²: the difference of χ² = Σ (r/sigma)², the
  engine's ``chi_squared`` had it been given the case's noise sigma for every point, so
  Δχ² = 1 is one standard error's worth along one direction;
- ``se_distance`` = max over the engine's free parameters of |p_ours − p_scipy| / SE_ours
  (an infinite SE counts 0, a fixed parameter is skipped).

Summary thresholds: "at or below SciPy's cost" is Δχ² ≤ 1e-6·χ²_scipy (χ² ~ the point
count: the rounding of two sums of thousands of terms, ~1e-3 SE along one direction), "below"
is Δχ² < −1e-6·χ²_scipy, "above" is Δχ² > 1.

Command line::

    python -m homodyne.benchmarks.seeded --seeds 2000-2050 --out F.jsonl [--jobs 2]
    python -m homodyne.benchmarks.seeded --summary F.jsonl [--md OUT.md]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

START_KINDS = ("plain", "off20", "off10x", "corner", "on_bound", "fixed", "float32", "restarts")
BASE_KINDS = ("plain", "off20", "off10x", "corner", "on_bound")
STATIC_LB = [1.0, -2.0, -1000.0]
STATIC_UB = [1e5, 0.5, 1000.0]
SHEAR_LB = [1e-6, -2.0, -1e-2, -30.0]
SHEAR_UB = [1.0, 2.0, 1e-2, 30.0]
PLAIN_PHYS = [100.0, 0.0, 0.0, 1e-4, 0.0, 0.0, 0.0]
BELOW_REL = 1e-6  # |Δχ²| under 1e-6·χ²_scipy: the same cost
ABOVE_DCHI2 = 1.0
WITHIN_SE = 1e-3
F32_SE = 0.05
RESTARTS = 4
SCIPY_MAX_NFEV = 1000
MAX_JOBS = 2


@dataclass
class Case:
    """One drawn fit problem: the model, its data, bounds, start and how it is fitted."""

    seed: int
    mode: str
    n_phi: int
    n_frames: int
    scaling: str
    phi_deg: tuple
    sigma: float
    truth: np.ndarray
    y: np.ndarray
    p0: np.ndarray
    lb: np.ndarray
    ub: np.ndarray
    kind: str
    base: str  # the start the kinds fixed/float32/restarts begin from (= kind otherwise)
    fixed: list = field(default_factory=list)
    fixed_by: str = ""  # "bounds" (min == max) or "fixed=" (the API's argument)
    dtype: str = "float64"
    restarts: int = 0

    def spec(self, dtype: str | None = None):
        from homodyne.model import ModelSpec

        return ModelSpec(
            mode=self.mode,
            n_frames=self.n_frames,
            phi_deg=self.phi_deg,
            scaling=self.scaling,
            dtype=dtype or self.dtype,
        )

    def describe(self) -> str:
        s = (
            f"{self.mode}, {self.n_phi} angle{'s' if self.n_phi > 1 else ''} x "
            f"{self.n_frames} frames, {self.scaling} scaling, sigma {self.sigma:.3g}, "
            f"start {self.kind}"
        )
        if self.base != self.kind:
            s += f" from {self.base}"
        if self.fixed:
            s += f" ({', '.join(self.fixed)} by {self.fixed_by})"
        return s


def _truth(rng, mode: str, n_frames: int, k: int) -> tuple[list, list, list]:
    """Contrast, offset and physical parameters inside the bounds, with J(t) > 0."""
    contrast = list(rng.uniform(0.15, 0.45, k))
    offset = list(rng.uniform(0.95, 1.05, k))
    d0 = 10 ** rng.uniform(3.3, 4.6)  # J·T·q²/2 ~ 0.1-10: a visible decay
    alpha = rng.uniform(-1.5, 0.45)
    t = 0.1 * np.arange(1, n_frames + 1)
    j_min = float(np.min(d0 * t**alpha))
    d_off = rng.uniform(max(-1000.0, -0.8 * j_min), 1000.0)
    phys = [d0, alpha, d_off]
    if mode == "laminar_flow":
        g0 = 10 ** rng.uniform(-5, -2.5)
        phys += [g0, rng.uniform(-0.8, 0.5), g0 * rng.uniform(-0.1, 0.1), rng.uniform(-30.0, 30.0)]
    return contrast, offset, phys


def _bounds(mode: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    lo = [0.0] * k + [0.5] * k + STATIC_LB + (SHEAR_LB if mode == "laminar_flow" else [])
    hi = [1.0] * k + [1.5] * k + STATIC_UB + (SHEAR_UB if mode == "laminar_flow" else [])
    return np.array(lo), np.array(hi)


def _start(rng, base: str, truth: np.ndarray, lb, ub, k: int) -> np.ndarray:
    """The start of kind ``base`` (plain, off20, off10x, corner, on_bound), inside the box."""
    n_phys = truth.size - 2 * k
    p = truth.copy()
    if base in ("plain", "corner"):
        p[:k], p[k : 2 * k] = 0.2, 1.0
        p[2 * k :] = PLAIN_PHYS[:n_phys]
        if base == "corner":
            p[2 * k :] = np.where(rng.random(n_phys) < 0.5, lb[2 * k :], ub[2 * k :])
    elif base in ("off20", "on_bound"):
        p *= 1 + 0.2 * rng.choice([-1.0, 1.0], p.size)
    elif base == "off10x":
        p[:k] *= 0.8
        phys = p[2 * k :]
        phys *= rng.choice([0.1, 10.0], n_phys)
        exponents = [1] + ([4] if n_phys > 3 else [])  # alpha, beta: ±0.5 instead
        phys[exponents] = truth[2 * k :][exponents] + rng.choice([-0.5, 0.5], len(exponents))
    p = np.clip(p, lb, ub)
    if base == "on_bound":
        for i in 2 * k + rng.choice(n_phys, size=int(rng.integers(1, 3)), replace=False):
            p[i] = lb[i] if rng.random() < 0.5 else ub[i]
    return p


def case(seed: int, data: bool = True) -> Case:
    """The fit problem of ``seed``, drawn with ``np.random.default_rng(seed)``; its noise
    from ``default_rng([seed, 1])``. ``data=False``: the draw alone (``y`` left empty)."""
    from homodyne.jaxconf import jnp
    from homodyne.model import ModelSpec, c2_points

    rng = np.random.default_rng(seed)
    mode = "static" if rng.random() < 0.5 else "laminar_flow"
    n_phi = int(rng.integers(1, 9))
    n_frames = int(rng.integers(20, 121))
    scaling = "individual" if rng.random() < 0.5 else "shared"
    step = rng.uniform(8.0, 20.0)
    phi = tuple(float(v) for v in rng.uniform(-30.0, 10.0) + step * np.arange(n_phi))
    k = n_phi if scaling == "individual" else 1
    spec = ModelSpec(mode=mode, n_frames=n_frames, phi_deg=phi, scaling=scaling)
    contrast, offset, phys = _truth(rng, mode, n_frames, k)
    truth = spec.pack(contrast, offset, phys)
    lb, ub = _bounds(mode, k)
    kind = START_KINDS[int(rng.integers(len(START_KINDS)))]
    base = kind if kind in BASE_KINDS else BASE_KINDS[int(rng.integers(4))]
    p0 = _start(rng, base, truth, lb, ub, k)
    sigma = float(0.01 * 10 ** rng.uniform(-0.5, 0.5))
    c = Case(
        seed, mode, n_phi, n_frames, scaling, phi, sigma, truth, np.empty(0), p0, lb, ub, kind, base
    )
    if kind == "fixed":
        names = list(spec.physical_names)
        choices = (
            ["D_offset", "alpha", "D0"]
            if mode == "static"
            else ["beta", "phi0", "gamma_dot_t_offset", "D_offset"]
        )
        c.fixed = sorted(
            (str(n) for n in rng.choice(choices, size=int(rng.integers(1, 3)), replace=False)),
            key=names.index,
        )
        c.fixed_by = "bounds" if rng.random() < 0.5 else "fixed="
        for name in c.fixed:
            i = 2 * k + names.index(name)
            p0[i] = truth[i]
            if c.fixed_by == "bounds":
                lb[i] = ub[i] = truth[i]
    elif kind == "float32":
        c.dtype = "float32"
    elif kind == "restarts":
        c.restarts = RESTARTS
    if not data:
        return c
    y = np.asarray(c2_points(truth, jnp.arange(spec.n_points), spec))
    y = y + np.random.default_rng([seed, 1]).normal(0.0, sigma, y.size)
    c.y = y.astype(np.float32) if c.dtype == "float32" else y
    return c


def _free(c: Case) -> np.ndarray:
    names = list(c.spec().parameter_names)
    return np.array(
        [n not in c.fixed and lo < hi for n, lo, hi in zip(names, c.lb, c.ub, strict=True)]
    )


def trf(c: Case):
    """SciPy's TRF at full tolerance on the float64 model (``jax.jacfwd`` Jacobian) from the
    case's start on its bounds; fixed parameters are held at the start."""
    from scipy.optimize import least_squares

    from homodyne.jaxconf import jax, jnp
    from homodyne.model import c2_points

    spec = c.spec("float64")
    g = jnp.arange(spec.n_points)
    fun = jax.jit(lambda p: c2_points(p, g, spec))
    jac = jax.jit(jax.jacfwd(lambda p: c2_points(p, g, spec)))
    free, y = _free(c), np.asarray(c.y, np.float64)

    def full(z):
        p = c.p0.astype(np.float64)
        p[free] = z
        return p

    r = least_squares(
        lambda z: np.asarray(fun(full(z))) - y,
        c.p0[free],
        jac=lambda z: np.asarray(jac(full(z)))[:, free],
        bounds=(c.lb[free], c.ub[free]),
        method="trf",
        x_scale="jac",
        ftol=1e-15,
        xtol=1e-15,
        gtol=1e-15,
        max_nfev=SCIPY_MAX_NFEV,
    )
    return full(r.x), r


def cost64(c: Case, p) -> float:
    """0.5·Σ r² of ``p`` on the case's data, in float64."""
    from homodyne.jaxconf import jnp
    from homodyne.model import c2_points

    spec = c.spec("float64")
    model = np.asarray(c2_points(np.asarray(p, np.float64), jnp.arange(spec.n_points), spec))
    return float(0.5 * np.sum((model - np.asarray(c.y, np.float64)) ** 2))


def se_distance(p, ref, se) -> float:
    """max |p − ref| / se over parameters with se > 0 (an infinite se gives 0; a fixed one,
    se = 0, is skipped); NaN where no parameter counts."""
    p, ref = np.asarray(p, float), np.asarray(ref, float)
    se = np.array([np.inf if s is None else s for s in se], float)
    use = np.isfinite(p) & np.isfinite(ref) & ~np.isnan(se) & (se > 0)
    if not use.any():
        return math.nan
    return float(np.max(np.abs(p[use] - ref[use]) / se[use]))


def _engine(c: Case, dtype: str | None = None) -> dict:
    """The engine's fit through the public API; its record fields."""
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    dtype = dtype or c.dtype
    y = c.y if dtype == c.dtype else np.asarray(c.y, np.float64)
    t = time.perf_counter()
    res = NLSQWrapper().fit_two_time(
        None,
        c.spec(dtype),
        c.p0,
        (c.lb, c.ub),
        y=y,
        fixed=c.fixed if c.fixed_by == "fixed=" else None,
        restarts=c.restarts,
    )
    return {
        "cost": float(res.cost),
        "cost64": cost64(c, res.parameters),
        "status": res.status,
        "stop_reason": res.stop_reason,
        "passes": int(res.passes),
        "coarse_passes": int(res.coarse_passes),
        "parameters": res.parameters.tolist(),
        "se": res.uncertainties.tolist(),
        "seconds": time.perf_counter() - t,
        # multi-start: how many starts reached the best minimum, and how many minima
        "restarts": {k: res.restarts[k] for k in ("starts", "reached_best", "distinct_minima")}
        if res.restarts
        else None,
    }


def run(seed: int) -> dict:
    """Fit ``case(seed)`` with SciPy's TRF and with the engine; one record (see the module
    docstring for the conventions)."""
    c = case(seed)
    rec = {
        "seed": int(seed),
        "case": c.describe(),
        "model": c.mode,
        "kind": c.kind,
        "base": c.base,
        "n_points": int(c.y.size),
        "sigma": c.sigma,
        "names": list(c.spec().parameter_names),
        "truth": c.truth.tolist(),
        "p0": c.p0.tolist(),
    }
    t = time.perf_counter()
    p_ref, r = trf(c)
    rec["scipy"] = {
        "cost": float(r.cost),
        "cost64": cost64(c, p_ref),
        "status": int(r.status),
        "converged": bool(r.status > 0),
        "nfev": int(r.nfev),
        "parameters": p_ref.tolist(),
        "seconds": time.perf_counter() - t,
    }
    try:
        ours = _engine(c)
    except Exception as exc:  # a failed fit is a finding: recorded, the run goes on
        rec["ours"] = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
        return _jsonable(rec)
    rec["ours"] = ours
    rec["dchi2"] = 2.0 * (ours["cost64"] - rec["scipy"]["cost64"]) / c.sigma**2
    rec["chi2_scipy"] = 2.0 * rec["scipy"]["cost64"] / c.sigma**2
    rec["se_distance"] = se_distance(ours["parameters"], p_ref, ours["se"])
    if c.dtype == "float32":
        twin = _engine(c, "float64")
        rec["float64_twin"] = twin
        rec["f32_se_distance"] = se_distance(ours["parameters"], twin["parameters"], twin["se"])
    return _jsonable(rec)


def _jsonable(v):
    """Standard JSON: non-finite floats become null."""
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


# --- the summary ------------------------------------------------------------------------
def _num(v, default=math.nan) -> float:
    return default if v is None else float(v)


def classify(rec: dict) -> dict:
    """Where one record stands against SciPy: at_or_below, below, within (1e-3 SE), above
    (Δχ² > 1); all False when the engine failed."""
    if rec["ours"].get("status") == "error" or rec.get("dchi2") is None:
        return {"at_or_below": False, "below": False, "within": False, "above": True}
    tol = BELOW_REL * _num(rec.get("chi2_scipy"), 0.0)
    d = float(rec["dchi2"])
    return {
        "at_or_below": d <= tol,
        "below": d < -tol,
        "within": _num(rec.get("se_distance"), math.inf) <= WITHIN_SE,
        "above": d > ABOVE_DCHI2,
    }


def summarize(records: list[dict]) -> dict:
    """Counts over the records (the comparison's numbers; see ``format_summary``)."""
    conv = [r for r in records if r["scipy"]["converged"]]
    cls = [classify(r) for r in conv]
    status: dict[str, int] = {}
    for r in records:
        status[r["ours"]["status"]] = status.get(r["ours"]["status"], 0) + 1
    f32 = [r for r in records if "float64_twin" in r]
    return {
        "cases": len(records),
        "scipy_converged": len(conv),
        "at_or_below": sum(c["at_or_below"] for c in cls),
        "below": sum(c["below"] for c in cls),
        "within_1e-3_se": sum(c["within"] for c in cls),
        "above_dchi2_1": sum(c["above"] for c in cls),
        "above_dchi2_1_converged": sum(
            c["above"] and r["ours"]["status"] == "converged"
            for c, r in zip(cls, conv, strict=True)
        ),
        "status": dict(sorted(status.items())),
        "full_passes": sum(int(r["ours"].get("passes", 0)) for r in records),
        "coarse_passes": sum(int(r["ours"].get("coarse_passes", 0)) for r in records),
        "float32": len(f32),
        "float32_within_0.05_se": sum(
            _num(r.get("f32_se_distance"), math.inf) <= F32_SE for r in f32
        ),
        "float32_passes_pm1": sum(
            abs(r["ours"].get("passes", -99) - r["float64_twin"]["passes"]) <= 1 for r in f32
        ),
    }


def not_at_or_below(records: list[dict]) -> list[dict]:
    """Records whose engine result lies above SciPy's cost (whatever SciPy's status)."""
    return [r for r in records if not classify(r)["at_or_below"]]


def _g(v) -> str:
    return "n/a" if v is None else f"{v:.6g}"


def format_summary(records: list[dict]) -> str:
    """The summary as Markdown: counts, then one row per case above SciPy's cost."""
    s = summarize(records)
    n = s["scipy_converged"]
    lines = [
        f"Seeded comparison against SciPy's TRF: {s['cases']} cases (seeds "
        f"{min((r['seed'] for r in records), default='-')}–"
        f"{max((r['seed'] for r in records), default='-')}), SciPy converged on {n}.",
        "Δχ² = 2(cost_ours − cost_scipy)/sigma² (χ² with the data's noise sigma); at or "
        f"below: Δχ² ≤ {BELOW_REL:g}·χ²_scipy; below: Δχ² < −{BELOW_REL:g}·χ²_scipy; "
        "SE distance: max |p_ours − p_scipy| / SE_ours.",
        "",
        "| of the cases where SciPy converged | count |",
        "|---|---|",
        f"| at or below SciPy's cost | {s['at_or_below']} of {n} |",
        f"| below SciPy's cost | {s['below']} of {n} |",
        f"| within {WITHIN_SE:g} SE of SciPy's optimum | {s['within_1e-3_se']} of {n} |",
        f"| above by Δχ² > {ABOVE_DCHI2:g} (reported converged) | {s['above_dchi2_1']} "
        f"({s['above_dchi2_1_converged']}) of {n} |",
        "",
        "Status (all cases): "
        + ", ".join(f"{k} {v}" for k, v in s["status"].items())
        + f". Full passes in all: {s['full_passes']} (coarse {s['coarse_passes']}).",
        f"float32: within {F32_SE:g} SE of the float64 twin {s['float32_within_0.05_se']} of "
        f"{s['float32']}, passes within ±1 {s['float32_passes_pm1']} of {s['float32']}.",
        "",
    ]
    bad = not_at_or_below(records)
    if bad:
        lines += [
            "Cases not at SciPy's optimum or below:",
            "",
            "| seed | model | start | SciPy cost | SciPy status | ours cost | "
            "ours status | full passes | Δχ² | SE distance |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in bad:
            o, sc = r["ours"], r["scipy"]
            start = r["kind"] + ("" if r["base"] == r["kind"] else f" ({r['base']})")
            lines.append(
                f"| {r['seed']} | {r['model']} | {start} | {_g(sc['cost64'])} | "
                f"{sc['status']} | {_g(o.get('cost64'))} | {o['status']} | "
                f"{o.get('passes', 'n/a')} | {_g(r.get('dchi2'))} | "
                f"{_g(r.get('se_distance'))} |"
            )
    return "\n".join(lines) + "\n"


def target_rows(records: list[dict]) -> list[dict]:
    """Rows for the benchmark's targets table (issue 14's comparison targets)."""
    s = summarize(records)
    n = s["scipy_converged"]
    return [
        {
            "target": "seeded cases: at or below SciPy's cost (SciPy converged)",
            "guide": "all",
            "ours": f"{s['at_or_below']} of {n}",
            "pass": s["at_or_below"] == n,
            "note": f"below {s['below']}; above by Δχ² > 1: {s['above_dchi2_1']}",
        },
        {
            "target": "seeded cases: within 1e-3 SE of SciPy's optimum",
            "guide": "all",
            "ours": f"{s['within_1e-3_se']} of {n}",
            "pass": s["within_1e-3_se"] == n,
            "note": f"full passes in all {s['full_passes']}",
        },
        {
            "target": "seeded float32 cases: within 0.05 SE of float64, passes ±1",
            "guide": "all",
            "ours": f"{s['float32_within_0.05_se']}, {s['float32_passes_pm1']} of {s['float32']}",
            "pass": s["float32_within_0.05_se"] == s["float32"] == s["float32_passes_pm1"],
            "note": "",
        },
    ]


# --- the record file and the command line -------------------------------------------------
class RecordFileError(ValueError):
    """A records file that is not this comparison's JSONL (said in one line, exit 2)."""


def _is_record(r) -> bool:
    """Whether ``r`` has the fields the summary and the resume read (a record of ``run``)."""
    return (
        isinstance(r, dict)
        and type(r.get("seed")) is int
        and isinstance(r.get("scipy"), dict)
        and {"converged", "cost64", "status"} <= r["scipy"].keys()
        and isinstance(r.get("ours"), dict)
        and "status" in r["ours"]
        and all(isinstance(r.get(k), str) for k in ("kind", "base", "model"))
    )


def load(path) -> list[dict]:
    """The records of a JSONL file; a last line cut short (a stopped run) is left out. A file
    that is not text, or a line that is not a record of ``run``, is a ``RecordFileError``."""
    p = Path(path)
    if not p.exists():
        return []
    try:
        lines = p.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise RecordFileError(
            f"{p}: not a text file (byte {exc.start}); give a JSONL file written by --out"
        ) from None
    out = []
    for i, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines):
                continue
            rec = None
        if not _is_record(rec):
            raise RecordFileError(
                f"{p} line {i}: not a seeded comparison record; give a JSONL file written by "
                "--out (or remove the line)"
            )
        out.append(rec)
    return out


def _append(path: Path, rec: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(rec, allow_nan=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _repair(path: Path, records: list[dict]) -> None:
    """Rewrite the file from its whole records when its last line was cut short."""
    if path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        from homodyne.output import atomic_path

        with atomic_path(path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in records))


def parse_seeds(text: str) -> list[int]:
    """'2000-2050' (inclusive), '7' or '1,5,9-11'."""
    seeds: list[int] = []
    for part in text.split(","):
        a, sep, b = part.strip().partition("-")
        lo, hi = int(a), int(b) if sep else int(a)
        if hi < lo or lo < 0:
            raise ValueError(part)
        seeds += range(lo, hi + 1)
    return seeds


def _quiet_worker() -> None:
    logging.disable(logging.WARNING)


def run_seeds(seeds, out, jobs: int = 1) -> int:
    """Run the seeds not yet in ``out`` (appended one record a line as each ends); returns
    how many were run."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    have = load(out)
    _repair(out, have)
    todo = [s for s in seeds if s not in {r["seed"] for r in have}]
    if jobs == 1 or len(todo) < 2:
        for s in todo:
            _append(out, run(s))
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(jobs, initializer=_quiet_worker) as pool:
            for rec in pool.imap_unordered(run, todo):
                _append(out, rec)
    return len(todo)


def code_digest() -> str:
    """SHA-256 (16 hex digits) of the package's Python sources: a work file of records is
    reused only by the code that made it (the workflow's resumable file is named by it)."""
    import hashlib

    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def select(records: list[dict], seeds) -> list[dict]:
    """The records of ``seeds`` (the last one of a seed met twice), in seed order."""
    by_seed = {r["seed"]: r for r in records}
    return [by_seed[s] for s in sorted(set(seeds)) if s in by_seed]


def write_outputs(records: list[dict], jsonl, md) -> None:
    """The records as JSONL and their summary as Markdown, each written atomically."""
    from homodyne.output import atomic_path

    with atomic_path(jsonl) as tmp:
        tmp.write_text("".join(json.dumps(r, allow_nan=False) + "\n" for r in records))
    with atomic_path(md) as tmp:
        tmp.write_text(format_summary(records))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m homodyne.benchmarks.seeded", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument(
        "--seeds", help="e.g. 2000-2050 or 1,5,9-11 (inclusive); with --summary: only these"
    )
    ap.add_argument("--out", help="JSONL file the records are appended to (resumes)")
    ap.add_argument("--jobs", type=int, default=1, help=f"processes, 1 to {MAX_JOBS}")
    ap.add_argument("--summary", help="JSONL file to summarise (Markdown to stdout)")
    ap.add_argument("--md", help="with --summary: also write the Markdown to this file")
    a = ap.parse_args(argv)
    try:
        return _main(ap, a)
    except (RecordFileError, OSError) as exc:
        msg = str(exc) if isinstance(exc, RecordFileError) else f"{exc.filename}: {exc.strerror}"
        ap.exit(2, f"{ap.prog}: error: {msg}\n")
    return 2  # pragma: no cover (ap.exit raises)


def _main(ap, a) -> int:
    seeds = None
    if a.seeds:
        try:
            seeds = parse_seeds(a.seeds)
        except ValueError:
            ap.error(f"--seeds {a.seeds!r}: give a range such as 2000-2050 or a list 1,5,9-11")
    if a.summary:
        if not Path(a.summary).is_file():
            ap.error(f"--summary {a.summary}: no such file; run --seeds ... --out first")
        records = load(a.summary)
        if seeds is not None:
            records = select(records, seeds)
        if not records:
            ap.error(f"--summary {a.summary}: no records{' of these seeds' if seeds else ''}")
        text = format_summary(records)
        print(text, end="")
        if a.md:
            from homodyne.output import atomic_path

            with atomic_path(a.md) as tmp:
                tmp.write_text(text)
        return 0
    if not (seeds and a.out):
        ap.error("give --seeds and --out (or --summary FILE)")
    if not 1 <= a.jobs <= MAX_JOBS:
        ap.error(f"--jobs {a.jobs}: use 1 to {MAX_JOBS} processes")
    n = run_seeds(seeds, a.out, a.jobs)
    print(f"{n} case(s) run, {len(seeds) - n} already in {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
