"""results/fits/summary.md: what a scientist reads first about the production fits, and
the records through which the workflow knows their result sets without declaring (and so
deleting before a refit) the result files themselves."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from homodyne.output import (
    MARKER,
    MAX_MARKER_BYTES,
    MAX_RECORD_BYTES,
    SET_LIST_KEY,
    atomic_path,
    file_sha256,
    read_json_file,
    write_json,
)
from homodyne.production.multiq import JOB_FILE, ResultFileError


def _fmt(v, unc=None):
    if v is None:
        return "n/a"
    if unc is None:
        return f"{v:.4g}"
    u = "inf (undetermined)" if unc is None or unc in ("inf", float("inf")) else \
        f"{float(unc):.2g}"
    return f"{v:.4g} ± {u}"


def _params(p, names):
    rows = ["| parameter | value ± SE |", "|---|---|"]
    by = p["parameters_by_name"]
    for n in names:
        v = by[n]
        flag = " (at a bound)" if n in p.get("at_bounds", []) else ""
        flag += " (not determined)" if n in p.get("undetermined", []) else ""
        rows.append(f"| {n} | {_fmt(v['value'], v['uncertainty'])}{flag} |")
    return rows


def write_fit_record(folder) -> Path:
    """job.json in ``folder``, written once its result set is committed: the set's files
    and the digest of its marker. A rule declares this record as its only output, since
    Snakemake deletes a job's outputs before it runs (and after it fails)."""
    folder = Path(folder)
    marker = folder / MARKER
    raw = _bounded_bytes(marker)
    files = read_json_file(marker)[SET_LIST_KEY]
    digests = {name: file_sha256(folder / name) for name in files
               if name != MARKER and (folder / name).is_file()}
    return write_json(folder / JOB_FILE, {"result_files": files,
                                          "parameters_sha256": hashlib.sha256(raw).hexdigest(),
                                          "files_sha256": digests})


def publish_fit_files(record, names, targets) -> list[Path]:
    """Copy the files ``names`` (relative to the record's folder) of the set that ``record``
    names to ``targets`` (the copies the report shows: Snakemake may delete them, the set
    stays). A folder that no longer holds that set is a ResultFileError naming the fix."""
    record = Path(record)
    folder = check_record(record)
    digests = read_json_file(record, MAX_RECORD_BYTES).get("files_sha256", {})
    copied = []
    for name, target in zip(names, targets, strict=True):
        try:
            with atomic_path(target) as tmp:
                shutil.copyfile(folder / name, tmp)
                if name in digests and file_sha256(tmp) != digests[name]:
                    raise ResultFileError(
                        f"{folder / name} changed since its fit committed it (the record "
                        f"{record} holds another SHA-256); rerun that fit (snakemake "
                        "--forcerun on its rule)")
        except FileNotFoundError:  # a file of the recorded set deleted or moved since
            raise ResultFileError(f"{folder / name} of the result set {record} records is "
                                  "missing; rerun that fit (snakemake --forcerun on its "
                                  "rule)") from None
        copied.append(Path(target))
    return copied


def check_record(record) -> Path:
    """The folder of ``record`` (a fit's job.json) when it still holds the set the record
    names (its marker's digest), else a ResultFileError naming the fix."""
    record = Path(record)
    folder = record.parent
    try:
        expected = read_json_file(record, MAX_RECORD_BYTES)["parameters_sha256"]
    except (OSError, ValueError, RecursionError, KeyError, TypeError) as exc:
        raise ResultFileError(f"{record} is not a fit's record ({exc}); rerun that fit "
                              "(snakemake --forcerun on its rule)") from None
    try:
        now = hashlib.sha256(_bounded_bytes(folder / MARKER)).hexdigest()
    except OSError:
        now = None
    if now != expected:
        raise ResultFileError(f"{folder} no longer holds the result set {record} records "
                              f"({MARKER} {'missing' if now is None else 'changed'}); rerun "
                              "that fit (snakemake --forcerun on its rule)")
    return folder


def _bounded_bytes(path: Path) -> bytes:
    """The bytes of a marker, read only as far as a marker may be long."""
    with open(path, "rb") as fh:
        raw = fh.read(MAX_MARKER_BYTES + 1)
    if len(raw) > MAX_MARKER_BYTES:
        raise ResultFileError(f"{path} is larger than a result ({MAX_MARKER_BYTES:,} bytes); "
                              "rerun that fit")
    return raw


def _load(folder) -> dict:
    """A production fit's parameters.json; one that is not a JSON object is named."""
    path = Path(folder) / "parameters.json"
    try:
        p = read_json_file(path)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ResultFileError(f"{path} cannot be read as a result ({exc}); rerun that fit "
                              "(snakemake --forcerun on its rule)") from None
    if not isinstance(p, dict):
        raise ResultFileError(f"{path} is not a result (not a JSON object); rerun that fit")
    return p


def write_fit_summary(out_md, chx_dir, aging_dir, laminar_dir, one_time_dir=None) -> Path:
    """Write results/fits/summary.md from the production fits' parameters.json; a file
    without the fields it reads (hand-edited, another version) is one ResultFileError
    naming the folders, never a traceback."""
    dirs = [chx_dir, aging_dir, laminar_dir] + ([one_time_dir] if one_time_dir else [])
    loaded = [_load(d) for d in dirs]
    try:
        L = _summary_lines(*loaded)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise ResultFileError(
            f"the production results in {', '.join(str(d) for d in dirs)} lack a field the "
            f"summary reads or hold it in another form ({type(exc).__name__}: {exc}); rerun "
            "those fits (snakemake --forcerun on their rules)") from None
    out = Path(out_md)
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(L) + "\n")
    return out


def _summary_lines(chx: dict, aging: dict, lam: dict, ot: dict | None = None) -> list[str]:
    L = ["# Production fits", "",
         "Every number below comes from this run; figures sit next to each fit's "
         "`parameters.json`. Convergence means the Gauss-Newton step is below 1e-4 standard "
         "errors and the gradient vanishes; parameters the data do not determine are shown "
         "with an infinite uncertainty rather than a made-up one.", "",
         "## 1. CHX two-time matrix (NSLS-II), static model, frame units", "",
         f"Data: `{chx['data']}`, {chx['n_points']:,} points (strict upper triangle). "
         f"Units: {chx['units']}.", "",
         f"- status: {'converged' if chx['converged'] else 'NOT converged'} ({chx['stop_reason']})",
         f"- reduced chi2 = {chx['reduced_chi_squared']:.4g} (no errors in the file: residuals in "
         "data units)",
         *_rate_lines(chx),
         f"- against the authors' per-age 2·gamma where their stretching exponent is within "
         f"{chx['alpha_window']}: {chx['n_compared']} ages, median |z| = "
         f"{_fmt(chx['median_abs_z'])}, {100 * (chx['fraction_within_2_sigma'] or 0):.0f}% within "
         "2 sigma (`chx/comparison.csv`, `chx/rate_vs_age.png`).", ""]
    L += _params(chx, ["contrast", "offset", "D0", "alpha", "D_offset"])
    if chx.get("undetermined"):
        L += ["", f"D0, alpha and D_offset are individually undetermined "
              f"({', '.join(chx['undetermined'])}): the data prefer alpha -> 0 with D0 and "
              "-D_offset growing together, i.e. J(t) ~ a + b ln t, the edge of the power-law "
              "family. J(t) itself is well determined (its band is propagated through the "
              "pseudo-inverse of JᵀJ)."]
    L += ["", "## 2. APS 8-ID-I aging condensate: one-time limit, all ages and q jointly", "",
          f"{len(aging['files'])} files, ages {aging['ages_s'][0]:.0f}-{aging['ages_s'][-1]:.0f} "
          f"s (window midpoints), delays {aging['min_tau_s']}-{aging['max_tau_s']} s, "
          f"{aging['n_points']:,} points, error model '{aging['error_model']}'.", "",
          f"- status: {'converged' if aging['converged'] else 'NOT converged'} "
          f"({aging['stop_reason']})",
          f"- reduced chi2 = {aging['reduced_chi_squared']:.4g} with the error model above.",
          "- J(t) < 0 inside the fitted window: UNPHYSICAL (g2 rises at long delays), min "
          f"J = {aging['J_min_in_window']:.3g}" if aging.get("J_negative_in_window") else
          "- J(t) > 0 throughout the fitted window.",
          "- The reported errors understate the point-to-point scatter of g2 by the factors in "
          "the table (robust scatter of second differences over adjacent delays / their "
          "reported error, 1 = honest errors); delays below "
          f"{aging['min_tau_s']} s scatter most and are excluded.",
          f"- q² scaling: median log-log slope of the free per-age rates = "
          f"{_fmt(aging['q_scaling_slope_median'])} (2 = diffusive), where rates are resolved "
          "(`aging/q2_scaling.png`).",
          f"- Honest verdict: {aging['single_mode_note']} (`aging/g2_fits_and_residuals.png`).",
          "", "| age [s] | scatter ratio | chi2_red (model errors) | chi2_red (reported errors) "
          "| J(t) [Å²/s] | slope of Gamma(q) |", "|---|---|---|---|---|---|"]
    for a in aging["per_age"]:
        slope = a.get("slope")
        slope_s = "n/a" if slope is None or slope != slope else \
            f"{slope:.2f} ± {a['slope_err']:.2f}"
        L.append(f"| {a['age']:.0f} | {a['scatter_ratio']:.1f} | {a['chi2_red']:.3g} | "
                 f"{a['chi2_red_reported_errors']:.3g} | {_fmt(a['J_fit'], a['J_fit_err'])} | "
                 f"{slope_s} |")
    L += ["", "Aging law parameters:", ""]
    L += _params(aging, ["offset", "D0", "alpha", "D_offset"])
    L += ["", "## 3. Laminar flow, synthetic data in the APS-U layout", "",
          f"`{lam['data']}`: {lam['n_points']:,} points, strategy {lam['strategy']}, "
          f"{'converged' if lam['converged'] else 'NOT converged'}; max |fit - truth| = "
          f"{lam['max_abs_z']:.2f} standard errors.", "",
          "| parameter | truth | fit ± SE | z |", "|---|---|---|---|"]
    for r in lam["truth_vs_fit"]:
        L.append(f"| {r['name']} | {r['truth']:.4g} | {_fmt(r['fit'], r['se'])} | "
                 f"{r['z']:+.2f} |")
    if ot is not None:
        L += _one_time_section(ot)
    return L


def _rate_lines(chx: dict) -> list[str]:
    """The CHX rate q²·|J(t)| at the first and last frame, and the fit's own note where its
    J(t) is negative at every frame: the table's D0 and D_offset then give J < 0, the
    mirror of the positive J the rate shows (c2 depends on |∫J| only)."""
    (first, last), (e_first, e_last) = (chx["rate_at_first_and_last_frame"],
                                        chx["rate_err_at_first_and_last_frame"])
    trend = "falls" if last < first else "rises" if last > first else "goes"
    lines = [f"- rate q²·|J(t)| {trend} from {_fmt(first, e_first)} at frame 1 to "
             f"{_fmt(last, e_last)} per frame at the last frame."]
    notes = [v[v.index("J(t) < 0"):] for v in (chx.get("power_law_optimum") or {}).values()
             if isinstance(v, str) and "J(t) < 0" in v]
    return lines + [f"- {n}." for n in notes]


def _one_time_section(ot: dict) -> list[str]:
    pl = ot["rate_power_law"]
    L = ["", "## 4. One-time g2 of one measured multi-tau file, per q (general path)", "",
         f"`{Path(ot['data_file']).name}`: {ot['n_points']:,} points, model {ot['model']}, "
         f"beta {ot['options']['beta']}, errors {ot['options']['errors']}.", "",
         f"- status: {ot['summary']}"]
    if pl.get("exponent") is not None:
        L.append(f"- rates: Gamma ∝ q^n with n = {_fmt(pl['exponent'], pl['exponent_err'])} "
                 f"over {pl['n_q']} resolved q bins (2 = diffusion; `one_time/rates_vs_q.png`).")
    L += ["", "| q [1/Å] | Gamma [1/s] | contrast | chi2_red | status |", "|---|---|---|---|---|"]
    for r in ot["per_q"]:
        flag = f" (gamma {r['gamma_flag']})" if r["gamma_flag"] else ""
        L.append(f"| {r['q']:.4g} | {_fmt(r['gamma'], r['gamma_err'])} | "
                 f"{_fmt(r['contrast'], r['contrast_err'])} | {_fmt(r['reduced_chi_squared'])} | "
                 f"{r['status']}{flag} |")
    return L
