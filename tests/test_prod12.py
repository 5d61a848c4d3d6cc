"""Issue 12, 'Stale, lost or mixed results', for the production fits: each commits its
whole result set (parameters.json last) and its Snakemake rule declares only a record, so
a refit that fails or is stopped while writing leaves the previous complete set."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import aging_series

import homodyne.plots as plots
import homodyne.production.aging as aging
import homodyne.production.chx as chx
import homodyne.production.laminar as laminar
from homodyne.optimization.nlsq_wrapper import NLSQWrapper

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (hidden ones too: a temporary file left is a change)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".homodyne.lock"}


def figure(path, *args, **kw) -> Path:
    """A figure writer's stand-in (matplotlib is not under test: the set's commit is)."""
    Path(path).write_bytes(b"a figure")
    return Path(path)


CHX_FILES = ("comparison.csv", "rate_vs_age.png", "fit.h5", "c2_heatmaps.png", "c2_cuts.png",
             "scaling_per_angle.png", "residual_histogram.png", "parameters.json")
AGING_PLOTS = ("q2_scaling.png", "g2_fits_and_residuals.png", "aging_law.png")
AGING_FILES = ("per_age.csv", "per_age_q_rates.csv", "points.csv.gz", *AGING_PLOTS,
               "parameters.json")
FIGURES = [(plots, n) for n in ("plot_heatmaps", "plot_cuts", "plot_scaling",
                                "plot_residual_histogram")] + [(chx, "_plot")]


@pytest.fixture
def quick_figures(monkeypatch):
    for module, name in FIGURES:
        monkeypatch.setattr(module, name, figure)
    monkeypatch.setattr(aging, "_plots", aging_figures)


def aging_figures(paths, *args):
    """fit_aging's figures' stand-in: the paths given (or, as _plots took before, the
    folder to write them into)."""
    if isinstance(paths, os.PathLike):
        paths = [Path(paths) / name for name in AGING_PLOTS]
    for path in paths:
        figure(path)


def disk_full(*args, **kw):
    raise OSError(errno.ENOSPC, "No space left on device")


def stop(*args, **kw):
    raise KeyboardInterrupt


@pytest.fixture(scope="module")
def chx_fitted(real_data, tmp_path_factory):
    """A complete CHX result set (a real fit, 60 iterations at most) and its fit."""
    out = tmp_path_factory.mktemp("chx") / "chx"
    with pytest.MonkeyPatch.context() as m:
        for module, name in FIGURES:
            m.setattr(module, name, figure)
        r = chx.fit_chx(real_data / "chx_two_time" / "test_g2.npy",
                        real_data / "chx_two_time" / "fit_results_raw.json", out,
                        max_iterations=60)
    return out, r["result"]


@pytest.fixture
def chx_set(chx_fitted, tmp_path):
    """A copy of that set, for one test to refit, and the fit."""
    template, result = chx_fitted
    shutil.copytree(template, tmp_path / "chx")
    return tmp_path / "chx", result


def refit_chx(real_data, out, monkeypatch, result, **kw):
    """fit_chx again with the engine's fit replaced by the one already made (the writing is
    under test, not the fit): the files differ from the first set by the alpha window."""
    monkeypatch.setattr(NLSQWrapper, "fit_two_time", lambda self, *a, **k: result)
    return chx.fit_chx(real_data / "chx_two_time" / "test_g2.npy",
                       real_data / "chx_two_time" / "fit_results_raw.json", out,
                       alpha_window=(0.7, 1.3), **kw)


@pytest.mark.parametrize("where, error", [
    ("chx._plot", disk_full),  # after comparison.csv was written
    ("plots.plot_cuts", stop),  # Ctrl-C after fit.h5 and the heat maps were written
    ("chx.write_json", stop),  # Ctrl-C while the marker, the last file, is written
])
def test_a_chx_refit_failing_while_it_writes_leaves_the_previous_set(
        chx_set, real_data, monkeypatch, quick_figures, where, error):
    out, result = chx_set
    before = snapshot(out)
    module, name = where.split(".")
    monkeypatch.setattr({"chx": chx, "plots": plots}[module], name, error)
    with pytest.raises(KeyboardInterrupt if error is stop else OSError):
        refit_chx(real_data, out, monkeypatch, result)
    assert snapshot(out) == before  # byte for byte, and no temporary file left


def test_a_chx_refit_replaces_the_set_as_a_whole(chx_set, real_data, monkeypatch,
                                                 quick_figures):
    out, result = chx_set
    before = snapshot(out)
    r = refit_chx(real_data, out, monkeypatch, result)
    after = snapshot(out)
    assert sorted(after) == sorted(CHX_FILES)  # no temporary file, nothing else
    assert after["comparison.csv"] != before["comparison.csv"]  # the new alpha window's
    p = json.loads(after["parameters.json"])
    assert p["alpha_window"] == [0.7, 1.3] and p["n_compared"] == len(r["comparison"])
    assert sorted(p["result_files"]) == sorted(CHX_FILES)
    assert r["files"] == {name: out / name for name in CHX_FILES}


AGING_LAW = dict(D0=3.0e6, alpha=-0.6, Doff=2.0e3, offset=1.0, n=3)


def test_an_aging_refit_that_fails_or_is_stopped_leaves_the_previous_set(
        tmp_path, monkeypatch, quick_figures):
    paths = aging_series(tmp_path, **AGING_LAW)
    out = tmp_path / "aging"
    fitted = aging.fit_aging(paths, out, min_tau_s=1e-4, max_tau_s=2.0,
                             error_model="measured", max_iterations=60)["result"]
    before = snapshot(out)
    # the refits below: the first fit's parameters, on a shorter delay window (so every
    # table differs); writing is under test, not the fit
    monkeypatch.setattr(NLSQWrapper, "fit", lambda self, *a, **k: fitted)
    assert set(before) == set(AGING_FILES)
    # the refit's tables differ (a shorter delay window); the figures fail (disk full),
    # then Ctrl-C comes while the marker is written, after every other file
    for name, error, caught in (("_plots", disk_full, OSError),
                                ("write_json", stop, KeyboardInterrupt)):
        with monkeypatch.context() as m:
            m.setattr(aging, name, error)
            with pytest.raises(caught):
                aging.fit_aging(paths, out, min_tau_s=1e-4, max_tau_s=0.5,
                                error_model="measured", max_iterations=60)
        assert snapshot(out) == before, name
    # a refit without figures replaces the set as a whole: the old figures go with it
    aging.fit_aging(paths, out, min_tau_s=1e-4, max_tau_s=0.5, error_model="measured",
                    max_iterations=60, plots=False)
    after = snapshot(out)
    assert set(after) == set(AGING_FILES) - set(AGING_PLOTS)
    assert json.loads(after["parameters.json"])["max_tau_s"] == 0.5
    assert after["per_age.csv"] != before["per_age.csv"]


def test_a_laminar_refit_that_fails_keeps_the_previous_fit_folder_and_its_data(
        tmp_path, monkeypatch, quick_figures):
    """The laminar set holds the CLI run's folder fit/: staged and committed with the
    set. A refit with other settings that fails after its fit/ was written leaves the
    previous fit/ and the data it was fitted to."""
    out = tmp_path / "laminar"
    settings = dict(frames=40, angles=(0, 45, 90), seed=3)
    laminar.fit_laminar_synthetic(out, **settings)
    before = snapshot(out)
    (data,) = [n for n in before if n.endswith(".h5") and "/" not in n]
    assert {"parameters.json", "fit/parameters.json", "fit/fit.h5"} <= set(before)
    assert json.loads(before["fit/parameters.json"])["data_file"] == str(out / data)
    with monkeypatch.context() as m:
        m.setattr(laminar, "write_json", disk_full)  # the marker, after fit/ was written
        with pytest.raises(OSError, match="No space left"):
            laminar.fit_laminar_synthetic(out, **{**settings, "frames": 36})
    assert snapshot(out) == before
    laminar.fit_laminar_synthetic(out, **{**settings, "frames": 36})
    after = snapshot(out)
    (new,) = [n for n in after if n.endswith(".h5") and "/" not in n]
    assert new != data  # the data of the set there, only
    assert json.loads(after["fit/parameters.json"])["data_file"] == str(out / new)
    assert after["fit/fit.h5"] != before["fit/fit.h5"]
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]


@pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake not installed")
def test_the_fit_rules_declare_only_their_records(tmp_path):
    """Snakemake deletes a job's declared outputs before it runs and after it fails: each
    production fit's rule declares only its record (the dry run lists the outputs), the
    report shows copies of the committed files, and the summary follows the records."""
    repo = tmp_path / "repo"
    shutil.copytree(REPO, repo, ignore=shutil.ignore_patterns(
        ".git", ".venv", "results", ".snakemake", "__pycache__", ".pytest_cache",
        "*.egg-info", "tests"))
    targets = ["results/fits/summary.md", "results/report/fits/chx/c2_cuts.png"]
    proc = subprocess.run([str(SNAKEMAKE), "-n", "--forceall", *targets, "--configfile",
                           "config/test.yaml"], cwd=repo, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = {}
    for block in proc.stdout.split("\nrule ")[1:]:
        lines = dict(line.strip().split(": ", 1) for line in block.splitlines()[1:]
                     if line.startswith("    ") and ": " in line)
        jobs[block.split(":", 1)[0]] = lines
    for rule, fit in (("fit_chx", "chx"), ("fit_aps_aging", "aging"),
                      ("fit_laminar_synthetic", "laminar"), ("fit_one_time", "one_time")):
        assert jobs[rule]["output"] == f"results/fits/{fit}/job.json", rule
        assert f"results/fits/{fit}/job.json" in jobs["fits_summary"]["input"]
        assert jobs[rule]["log"] and jobs[rule]["benchmark"]
    report = jobs["fits_report"]
    assert sorted(report["input"].split(", ")) == sorted(
        f"results/fits/{fit}/job.json" for fit in ("chx", "aging", "laminar", "one_time"))
    assert {f"results/report/fits/chx/{n}" for n in
            ("comparison.csv", "rate_vs_age.png", "c2_heatmaps.png", "c2_cuts.png")} <= \
        set(report["output"].split(", "))
    assert not [f for f in report["output"].split(", ")
                if not f.startswith("results/report/fits/")]


def test_the_report_copies_only_the_set_its_record_names(tmp_path):
    from homodyne.production.multiq import ResultFileError
    from homodyne.production.report import publish_fit_files, write_fit_record

    (tmp_path / "a.csv").write_text("1\n")
    (tmp_path / "parameters.json").write_text(json.dumps({"result_files": ["a.csv",
                                                                           "parameters.json"]}))
    record = write_fit_record(tmp_path)
    assert json.loads(record.read_text())["result_files"] == ["a.csv", "parameters.json"]
    copy = tmp_path / "report" / "a.csv"
    assert publish_fit_files(record, ["a.csv"], [copy]) == [copy]
    assert copy.read_text() == "1\n"
    (tmp_path / "parameters.json").write_text("{}")  # another set committed since
    with pytest.raises(ResultFileError, match=r"no longer holds the result set .*changed"):
        publish_fit_files(record, ["a.csv"], [copy])
