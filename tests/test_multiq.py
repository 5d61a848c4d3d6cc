"""Every q bin of every file: q/files selection, the per-(file, q) fits and their summary
table against the known truth of a synthetic multi-q aging series, and the plots."""

import math

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import yaml

from homodyne.cli import main
from homodyne.config import ConfigError, validate_config
from homodyne.plots import noise_from_differences, plot_cuts
from homodyne.production.multiq import plan_jobs
from homodyne.production.multiq_data import AgingSeries, write_series_file

SERIES = AgingSeries(q=(0.003, 0.004, 0.005, 0.006, 0.007), ages_s=(0.0, 600.0), frames=80,
                     angles=(0.0,), seed=5)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    folder = tmp_path_factory.mktemp("series")
    for k in range(len(SERIES.ages_s)):
        write_series_file(folder, SERIES, k)
    return folder


def fit_config(files, q="all", out="out"):
    return {
        "analysis_mode": "static",
        "experimental_data": {"files": files, "q": q},
        "initial_parameters": {"values": [8000.0, -0.4, 80.0]},
        "parameter_space": {"bounds": [{"name": "D0", "min": 1.0, "max": 1e5},
                                       {"name": "alpha", "min": -2.0, "max": 0.5},
                                       {"name": "D_offset", "min": -1000.0, "max": 1000.0}]},
        "performance": {"enable_progress": False},
        "output": {"directory": str(out)},
    }


def test_cli_q_all_fits_every_file_and_bin_and_recovers_the_shared_truth(series, tmp_path,
                                                                         capsys):
    cfg = tmp_path / "multi.yaml"
    raw = fit_config(str(series / "age_*.h5"), q=0.005, out=tmp_path / "out")
    raw["output"]["plots"] = False  # per-fit figures: test_config_cli; ~1 s each here
    cfg.write_text(yaml.safe_dump(raw))
    # --q all overrides the single q of the config: 2 files x 5 bins
    assert main(["--config", str(cfg), "--q", "all", "--quiet"]) == 0
    assert "10 fits (10 ok, 0 failed, 0 flagged)" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "out/summary.csv")
    assert len(table) == 10
    assert list(table[["file", "q_index"]].itertuples(index=False, name=None)) == \
        [(f"age_{k:02d}", i) for k in range(2) for i in range(5)]
    np.testing.assert_allclose(table["q"], list(SERIES.q) * 2)
    numeric = ["q", "age_s", "n_points", "contrast[0]", "contrast[0]_se", "offset[0]",
               "offset[0]_se",
               "D0", "D0_se", "alpha", "alpha_se", "D_offset", "D_offset_se",
               "reduced_chi2", "passes", "time_s"]
    assert table[numeric].notna().all().all() and np.isfinite(table[numeric]).all().all()
    assert (table["status"] == "ok").all() and (table["tier"] == "STANDARD").all()
    assert (table["passes"] >= 1).all() and (table["n_points"] == 80 * 79 // 2).all()
    for k, (fid, g) in enumerate(table.groupby("file")):
        truth = SERIES.truth(k)  # every q bin of a file shares one J(t)
        assert g["age_s"].iloc[0] == SERIES.ages_s[k]
        for name, t in zip(("D0", "alpha", "D_offset"), truth, strict=True):
            z = (g[name] - t) / g[f"{name}_se"]
            assert (z.abs() < 4).all(), (fid, name, z.tolist())
        w = 1 / g["D0_se"] ** 2
        d0, d0_se = (w * g["D0"]).sum() / w.sum(), 1 / math.sqrt(w.sum())
        assert abs(d0 - truth[0]) < 4 * d0_se, (fid, d0, d0_se, truth[0])
    np.testing.assert_allclose(table["reduced_chi2"], SERIES.noise**2, rtol=0.1)
    job = tmp_path / "out/age_01/q03"
    for f in ("parameters.json", "job.json", "fit.h5", "fit.log"):
        assert (job / f).stat().st_size > 0, f
    for png in ("parameters_vs_q.png", "parameters_vs_file.png"):
        assert (tmp_path / "out" / png).stat().st_size > 1000
    # a rerun does not silently replace the results
    assert main(["--config", str(cfg), "--q", "all", "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_q_number_list_or_all_selects_bins_and_far_q_is_refused(series):
    files = str(series / "age_*.h5")
    jobs = plan_jobs(validate_config(fit_config(files, q=[0.0041, 0.0069])), "root")
    assert [(j.file_id, j.q_index, j.q) for j in jobs] == [
        ("age_00", 1, 0.004), ("age_00", 4, 0.007), ("age_01", 1, 0.004), ("age_01", 4, 0.007)]
    assert str(jobs[1].output_dir) == "root/age_00/q04"
    assert len(plan_jobs(validate_config(fit_config([str(series / "age_01.h5")])))) == 5
    with pytest.raises(ConfigError, match=r"experimental_data.q: no q bin of .*age_00.h5 within "
                       r"0.002 of 0.02 \(bins: 0.003, 0.004, 0.005, 0.006, 0.007\)"):
        plan_jobs(validate_config(fit_config(files, q=0.02)))
    for bad, message in (
        ({"q": "some"}, "experimental_data.q: expected a number, a list of numbers or 'all'"),
        ({"q": []}, "experimental_data.q: empty list"),
        ({"files": str(series / "nothing_*.h5")}, "experimental_data.files: no file matches"),
        ({"file_path": str(series / "age_00.h5")}, "give either file_path (one file) or files"),
    ):
        raw = fit_config(files)
        raw["experimental_data"].update(bad)
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            validate_config(raw)


def test_cli_refuses_a_q_far_from_every_bin_and_a_missing_q(series, tmp_path, capsys):
    cfg = fit_config(None, q=0.02)
    del cfg["experimental_data"]["files"]
    cfg["experimental_data"]["file_path"] = str(series / "age_00.h5")
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["--config", str(path), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no q bin within 0.002 of q = 0.02 (nearest 0.007; bins: 0.003, 0.004, 0.005, " \
        "0.006, 0.007)" in err and "Traceback" not in err
    del cfg["experimental_data"]["q"]
    path.write_text(yaml.safe_dump(cfg))
    assert main(["--config", str(path), "--output-dir", str(tmp_path / "o")]) == 2
    assert "holds 5 q bins (0.003, 0.004, 0.005, 0.006, 0.007); choose one with " \
        "experimental_data.q (or q: all" in capsys.readouterr().err
    assert not (tmp_path / "o" / "parameters.json").exists()


def test_noise_estimate_from_the_data_alone():
    rng = np.random.default_rng(0)
    t = np.arange(200.0)
    smooth = 1 + 0.3 * np.exp(-np.abs(t[:, None] - t[None, :]) / 50.0)
    noisy = smooth + rng.normal(0, 0.02, smooth.shape)
    assert noise_from_differences(noisy[None]) == pytest.approx(0.02, rel=0.05)


def test_cuts_are_a_grid_not_one_long_row(tmp_path):
    n, t = 10, np.arange(1, 31) * 0.1
    data = np.ones((n, t.size, t.size))
    plot_cuts(tmp_path / "cuts.png", times=t, phi_deg=list(range(0, 100, 10)), data=data,
              model=data)
    height, width = matplotlib.image.imread(tmp_path / "cuts.png").shape[:2]
    assert width <= 1600 and height >= 2.5 * 3.4 * 90  # 4 wide, 3 rows (was 4,050 x 324)
