"""The Snakemake workflow, run for real on a temporary copy of the repository."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
pytestmark = pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake not installed")

TINY = {
    "datasets": {
        "static_tiny": {"mode": "static", "angles": [0, 60], "frames": 140, "seed": 1},
        "laminar_tiny": {"mode": "laminar_flow", "angles": [0, 45, 90], "frames": 120,
                         "seed": 2},
    },
    "benchmark": {
        "tiers": {"static_tiny": ["auto", "streaming"], "laminar_tiny": ["streaming"]},
        "devices": ["cpu", "gpu"],
        "overhead_dataset": "static_tiny",
        "overhead_tier": "streaming",
        "checkpoint_frequencies": [10],
        "fault_modes": ["full", "fast"],
        "overhead_rounds": 2,
        "peers": {"datasets": ["static_tiny"],
                  "methods": ["scipy-trf", "nlsq-curve_fit", "nlsq-hybrid_streaming"],
                  "max_points": {"scipy-trf": 100000, "nlsq-curve_fit": 100000},
                  "nlsq_max_points": 100},
        "seeded": {"seeds": "237", "jobs": 1},
    },
    "fits": {"laminar_synthetic": {"frames": 100, "angles": [0, 45, 90], "seed": 3}},
    "multiq": {"synthetic": {"q": [0.004, 0.0055, 0.007], "ages_s": [0, 600], "frames": 100,
                             "angles": [0], "seed": 4}},
}


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory):
    dst = tmp_path_factory.mktemp("wf") / "repo"
    shutil.copytree(REPO, dst, ignore=shutil.ignore_patterns(
        ".git", ".venv", "results", ".snakemake", "__pycache__", ".pytest_cache", "*.egg-info"))
    cfg = yaml.safe_load((REPO / "config/test.yaml").read_text())
    for k, v in TINY.items():
        cfg[k] = v if k not in ("fits", "multiq") else {**cfg[k], **v}
    mirror = REPO.parent / "shared" / "data" / "real"
    cfg["data_mirror"] = str(os.environ.get("HOMODYNE_DATA_MIRROR", mirror))
    (dst / "config/tiny.yaml").write_text(yaml.safe_dump(cfg))
    return dst


def smk(repo, *args, check=True, timeout=900):
    env = dict(os.environ, PATH=f"{SNAKEMAKE.parent}:{os.environ['PATH']}")
    proc = subprocess.run([str(SNAKEMAKE), *args], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


@pytest.mark.parametrize("target", ["fit", "benchmark"])
@pytest.mark.parametrize("profile", ["default", "slurm", "slurm-gpu"])
def test_dry_runs_with_every_profile(repo_copy, target, profile):
    out = smk(repo_copy, "-n", target, "--configfile", "config/test.yaml", "--profile",
              f"profiles/{profile}")
    assert "This was a dry-run" in out.stdout


def test_full_config_dry_run_covers_the_grid(repo_copy):
    out = smk(repo_copy, "-n", "benchmark").stdout
    for name in ("static_1B", "laminar_1B", "engine_streaming_gpu", "peer_nlsq-curve_fit_large",
                 "overhead_streaming"):
        assert name in out
    # each tier inside its own range, auto-selected; every tier forced on one size
    for size in ("300k", "3M", "30M", "300M", "1B"):
        for mode in ("static", "laminar"):
            assert f"runs/{mode}_{size}/engine_auto_cpu.json" in out
    for tier in ("standard", "large", "chunked", "streaming"):
        assert f"runs/static_3M/engine_{tier}_cpu.json" in out
    for size in ("10M", "100M"):
        assert f"runs/static_{size}/peer_nlsq-curve_fit_large.json" in out


def test_lint_and_format(repo_copy):
    smk(repo_copy, "--lint")
    snakefmt = SNAKEMAKE.with_name("snakefmt")
    if snakefmt.exists():
        subprocess.run([str(snakefmt), "--check", "Snakefile", "workflow"], cwd=repo_copy,
                       check=True, capture_output=True)


def test_bad_config_is_rejected_by_the_schema(repo_copy):
    cfg = yaml.safe_load((repo_copy / "config/tiny.yaml").read_text())
    cfg["datasets"]["static_tiny"]["frames"] = "many"
    (repo_copy / "config/bad.yaml").write_text(yaml.safe_dump(cfg))
    out = smk(repo_copy, "-n", "benchmark", "--configfile", "config/bad.yaml", check=False)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "'many' is not of type 'integer'" in text and "frames" in text


def test_benchmark_runs_and_summarises(repo_copy):
    smk(repo_copy, "--cores", "2", "benchmark", "--configfile", "config/tiny.yaml")
    res = repo_copy / "results/benchmark"
    targets = pd.read_csv(res / "summary.csv")
    runs = pd.read_csv(res / "runs.csv")
    assert {"target", "guide", "ours", "status"} <= set(targets.columns)
    assert set(targets["status"]) <= {"PASS", "FAIL", "not run"}
    eng = runs[(runs["kind"] == "engine") & runs["unavailable"].isna()]
    assert len(eng) >= 3
    for col in ("wall_s", "points_per_s", "residuals_per_s_per_pass", "peak_rss_mb"):
        assert eng[col].map(math.isfinite).all() and (eng[col] > 0).all(), col
    # every engine run lands on the reference optimum (scipy TRF on the static data)
    static = eng[eng["dataset"] == "static_tiny"]
    assert (static["reference"] == "scipy-trf").all() and (static["dist_ref_se"] < 1e-2).all()
    gpu = runs[runs["name"].str.contains("gpu", na=False)]
    assert gpu["unavailable"].str.contains("no GPU").all() or gpu["unavailable"].isna().all()
    auto = eng[eng["name"] == "auto-cpu"]
    assert list(auto["tier"]) == ["STANDARD"]  # the size picked the tier
    # nlsq is installed by default: its exact curve_fit runs and lands on the optimum;
    # a method past its limit is recorded as skipped
    nlsq = runs[runs["name"] == "nlsq-curve_fit"]
    assert nlsq["unavailable"].isna().all() and (nlsq["dist_ref_se"] < 0.1).all()
    skipped = runs[runs["name"] == "nlsq-hybrid_streaming"]
    assert skipped["unavailable"].str.startswith("skipped").all()
    for png in ("memory_vs_points", "throughput_vs_points", "ours_vs_peers"):
        assert (res / f"{png}.png").stat().st_size > 1000
    assert "| target" in (res / "summary.md").read_text()
    # the seeded comparison against SciPy's TRF: its record, summary and target rows
    seeded = [json.loads(ln) for ln in (res / "seeded.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in seeded] == [237] and seeded[0]["se_distance"] <= 1e-3
    assert "## Seeded comparison against SciPy's TRF" in (res / "summary.md").read_text()
    assert (targets["target"].str.startswith("seeded cases")).sum() == 2
    # overheads come from one paired-pass run: every variant against its baseline
    over = json.loads((res / "runs/static_tiny/overhead_streaming.json").read_text())
    assert set(over["variants"]) == {"null", "ckpt10", "ckpt10-strict", "full", "fast"}
    assert all(math.isfinite(v["overhead"]) for v in over["variants"].values())
    assert set(over["kernel"]) == {"null", "full", "fast"}  # fault modes vs all checks off
    ck = targets[targets["target"] == "checkpoint overhead at frequency 10"].iloc[0]
    assert ck["status"] in ("PASS", "FAIL") and "paired passes" in ck["note"]


def test_fit_target_on_real_data(repo_copy, real_data):
    smk(repo_copy, "--cores", "2", "fit", "--configfile", "config/tiny.yaml")
    fits = repo_copy / "results/fits"
    summary = (fits / "summary.md").read_text()
    assert "CHX two-time" in summary and "aging" in summary and "Laminar flow" in summary
    for name in ("chx", "aging", "laminar"):
        p = json.loads((fits / name / "parameters.json").read_text())
        vals = p["parameters"]
        assert all(math.isfinite(v) for v in vals)
        unc = [u for u in p["uncertainties"] if isinstance(u, float)]
        assert unc and all(u > 0 for u in unc)
        assert p["n_points"] > 1000
    for png in ("chx/rate_vs_age.png", "chx/c2_heatmaps.png", "aging/q2_scaling.png",
                "aging/g2_fits_and_residuals.png", "laminar/fit/c2_heatmaps.png"):
        assert (fits / png).stat().st_size > 1000
    # every (file, q bin) of the synthetic aging series, one job each, gathered
    table = pd.read_csv(fits / "multiq_synthetic/summary.csv")
    assert len(table) == 2 * 3 and set(table["file"]) == {"age_00", "age_01"}
    assert table.drop(columns=["status", "tier", "file", "output_dir"]).notna().all().all()
    assert (table["status"] == "ok").all()
    d0_truth = table["age_s"].map(lambda age: 1e4 / (1 + age / 600.0))
    assert ((table["D0"] - d0_truth).abs() < 4 * table["D0_se"]).all()
    assert ((table["alpha"] + 0.5).abs() < 4 * table["alpha_se"]).all()
    for job in table["output_dir"]:
        assert (repo_copy / job / "parameters.json").exists()
        assert (repo_copy / job / "c2_cuts.png").stat().st_size > 1000
    # a hand-edited production result: one error naming the folders, not a KeyError
    from homodyne.production.multiq import ResultFileError
    from homodyne.production.report import write_fit_summary

    chx = fits / "chx/parameters.json"
    edited = json.loads(chx.read_text())
    del edited["parameters_by_name"]
    chx.write_text(json.dumps(edited))
    dirs = [fits / n for n in ("chx", "aging", "laminar")]
    with pytest.raises(ResultFileError, match="lack a field.*'parameters_by_name'"):
        write_fit_summary(fits / "summary2.md", *dirs)
    chx.write_text("[1, 2]")
    with pytest.raises(ResultFileError, match="chx/parameters.json is not a result"):
        write_fit_summary(fits / "summary2.md", *dirs)
    assert not (fits / "summary2.md").exists()
    # the measured CHX matrix through the same scatter/gather: one bin, an honest status
    chx = pd.read_csv(fits / "multiq_chx/summary.csv")
    assert len(chx) == 1 and chx["file"].iloc[0] == "test_g2" and chx["q"].iloc[0] == 1.0
    assert math.isfinite(chx["reduced_chi2"].iloc[0]) and chx["n_points"].iloc[0] == 350 * 349 // 2
    # every parameter determined: J(t) > 0 falls as the sample ages (D0 < 0, alpha ~ 0.4)
    assert chx["status"].iloc[0] == "ok" and chx["D0"].iloc[0] < 0 < chx["alpha"].iloc[0]
    assert chx["settings_match"].iloc[0]  # (the gather marks each bin against the config)
    for run in ("multiq_synthetic", "multiq_chx"):
        for png in ("parameters_vs_q", "parameters_vs_file"):
            assert (fits / run / f"{png}.png").stat().st_size > 1000


def test_a_bin_whose_refit_fails_keeps_its_previous_results(repo_copy):
    """Snakemake deletes a job's declared outputs before it runs and after it fails: the
    per-bin rule declares only its job record, so the bin's previous complete result set
    (parameters.json, its marker, included) survives a refit that fails."""
    import h5py
    import numpy as np

    target = ["--cores", "2", "results/fits/multiq_synthetic/summary.csv",
              "--configfile", "config/tiny.yaml"]
    smk(repo_copy, *target)
    bins = sorted((repo_copy / "results/fits/multiq_synthetic/age_01").glob("q*"))
    assert len(bins) == 3
    before = {b: {n: (b / n).read_bytes() for n in ("parameters.json", "fit.h5", "fit.log")}
              for b in bins}
    data = repo_copy / "results/datasets/aging_series/age_01.h5"
    original = data.read_bytes()
    with h5py.File(data, "r+") as h5:  # every matrix NaN: each bin's refit is refused
        def blank(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.ndim >= 2 and obj.dtype.kind == "f":
                obj[...] = np.nan
        h5.visititems(blank)
    try:
        failed = smk(repo_copy, *target, "--keep-going", check=False)
        assert failed.returncode != 0
        for b, files in before.items():
            for name, content in files.items():
                assert (b / name).read_bytes() == content, f"{b.name}/{name} changed"
    finally:
        data.write_bytes(original)
