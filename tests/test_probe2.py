"""Faults found by a fresh round of adversarial probing (issue 12, probe2): HDF5 objects that
are not what they claim, non-finite angles, multi-q runs, and configs."""

import h5py
import numpy as np
import pytest

from homodyne.data import DataFileError, open_two_time

C2 = "/xpcs/twotime/correlation_map"


def _apsu(path, *, phi=(0.0, 45.0), matrices=None):
    """A small valid APS-U two-time file (one q, len(phi) angles); ``matrices(h5)`` may
    write the c2 datasets itself."""
    m = 1.0 + 0.3 * np.exp(-np.abs(np.subtract.outer(np.arange(20.0), np.arange(20.0))) / 5)
    with h5py.File(path, "w") as h5:
        h5["/xpcs/qmap/dynamic_v_list_dim0"] = [0.005]
        h5["/xpcs/qmap/dynamic_v_list_dim1"] = list(phi)
        h5["/xpcs/twotime/processed_bins"] = list(range(1, len(phi) + 1))
        h5["/entry/instrument/detector_1/frame_time"] = 0.1
        if matrices is None:
            for k in range(len(phi)):
                h5[f"{C2}/c2_{k + 1:05d}"] = np.triu(m)
        else:
            matrices(h5)
    return path


def _external(target, name="target.h5"):
    def write(h5):
        h5[f"{C2}/c2_00001"] = h5py.ExternalLink(name, "/m")
        h5[f"{C2}/c2_00002"] = h5py.ExternalLink(name, "/m")
    return write


def _virtual(source):
    def write(h5):
        for k in (1, 2):
            layout = h5py.VirtualLayout(shape=(20, 20), dtype="f8")
            layout[:] = h5py.VirtualSource(source, f"/m{k}", shape=(20, 20))
            h5.create_virtual_dataset(f"{C2}/c2_{k:05d}", layout, fillvalue=0)
    return write


CRAFTED = {
    "group": (lambda h5: (h5.create_group(f"{C2}/c2_00001"), h5.create_group(f"{C2}/c2_00002")),
              r"c2_00001 is a group, expected a dataset"),
    "external": (_external("target.h5"),
                 r"c2_00001 is an external link to target.h5; external links are not read"),
    "external_missing": (_external("gone.h5", "gone.h5"),
                         r"c2_00001 is an external link to gone.h5"),
    "external_group": (lambda h5: h5.__setitem__(C2, h5py.ExternalLink("target.h5", "/g")),
                       r"correlation_map is an external link to target.h5"),
    "virtual_missing": (_virtual("gone.h5"),
                        r"c2_00001 is a virtual dataset whose source file gone.h5 is missing"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_objects_that_are_not_local_datasets_give_one_data_error(tmp_path, case):
    """A group in place of a matrix crashed with AttributeError (traceback, exit 1); an
    external link was called 'truncated' or 'corrupt HDF5 metadata'; a virtual dataset
    whose source is missing was read as zeros."""
    with h5py.File(tmp_path / "target.h5", "w") as t:
        t["m"] = np.ones((20, 20))
        t["g/c2_00001"] = np.ones((20, 20))
    write, message = CRAFTED[case]
    with pytest.raises(DataFileError, match=message):
        open_two_time(_apsu(tmp_path / "crafted.h5", matrices=write))


def test_a_virtual_dataset_with_its_source_present_is_read(tmp_path):
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "source.h5", "w") as s:
        for k in (1, 2):  # one source per angle: two angles mapping one are refused (fix12k)
            s[f"m{k}"] = np.triu(rng.random((20, 20)) + 1.0)
    src = open_two_time(_apsu(tmp_path / "vds.h5", matrices=_virtual("source.h5")))
    assert src.phi_deg == (0.0, 45.0)


@pytest.mark.parametrize("phi", [(0.0, np.nan), (np.inf, 45.0)])
def test_non_finite_angles_in_the_file_are_one_data_error(tmp_path, phi):
    """A NaN angle was written as null in parameters.json (static), silently dropped by
    phi_ranges or blamed on 'the model overflows ... check p0' (laminar)."""
    with pytest.raises(DataFileError, match=r"dynamic_v_list_dim1 holds non-finite phi values"):
        open_two_time(_apsu(tmp_path / "phi.h5", phi=phi))


def test_a_q_map_of_text_is_one_data_error(tmp_path):
    path = _apsu(tmp_path / "text.h5")
    with h5py.File(path, "r+") as h5:
        del h5["/xpcs/qmap/dynamic_v_list_dim0"]
        h5["/xpcs/qmap/dynamic_v_list_dim0"] = np.array([b"small"])
    with pytest.raises(DataFileError, match=r"dynamic_v_list_dim0 does not hold numbers"):
        open_two_time(path)


def test_a_file_locked_by_its_writer_is_named_as_such(tmp_path):
    """A file still open for writing (the acquisition holds HDF5's lock) was called
    'not a readable HDF5 file (truncated or corrupt?)'."""
    import fcntl
    import os

    path = _apsu(tmp_path / "busy.h5")
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what HDF5 takes for a writer
        with pytest.raises(DataFileError, match=r"busy.h5: is open for writing by another "
                                                r"program \(HDF5 file lock\); wait until"):
            open_two_time(path)
    finally:
        os.close(fd)
    assert open_two_time(path).phi_deg == (0.0, 45.0)


# --- multi-q runs ------------------------------------------------------------------------

def _multi_q_file(path, age_s):
    """Two q bins of one angle (40 frames of a J(t) = 1e4 t^-0.5 decay), and the sample age
    ``age_s`` as the aging series records it."""
    rng = np.random.default_rng(1)
    t = np.arange(1, 41) * 0.1
    with h5py.File(path, "w") as h5:
        h5["/xpcs/qmap/dynamic_v_list_dim0"] = [0.004, 0.0054]
        h5["/xpcs/qmap/dynamic_v_list_dim1"] = [0.0]
        h5["/xpcs/twotime/processed_bins"] = [1, 2]
        h5["/entry/instrument/detector_1/frame_time"] = 0.1
        for k, q in enumerate((0.004, 0.0054), 1):
            j = 1e4 * np.abs(np.subtract.outer(t ** 0.5, t ** 0.5)) / 0.5
            c2 = 1.0 + 0.3 * np.exp(-q * q * j) + 0.01 * rng.standard_normal((40, 40))
            h5[f"{C2}/c2_{k:05d}"] = np.triu(c2)
        h5.create_group("/homodyne/synthetic").attrs["age_s"] = age_s
    return path


def test_multi_q_runs_checkpoint_per_bin_survive_a_bad_age_links_and_a_stop(
        tmp_path, capsys, monkeypatch):
    """A run of every q bin of a file with checkpoints on: all fits shared the one
    checkpoint_dir, so from the second on no checkpoint could be saved ('give each fit its
    own checkpoint_dir' - one key for all jobs); a sample age that is not a number crashed
    the run with a traceback after the first bin; the summary figures were written through
    symlinks planted in the output folder. Then a rerun (--overwrite, other frames)
    stopped by Ctrl-C in its second bin left the first run's summary.csv beside the first
    bin's new results."""
    import json

    import pandas as pd
    import yaml

    import homodyne.pipeline as pipeline
    from homodyne.cli import main
    from homodyne.config import load_config
    from homodyne.production.multiq import run_all

    data = _multi_q_file(tmp_path / "series.h5", "young")
    raw = yaml.safe_load(_example_config(tmp_path).replace(str(tmp_path / "data.h5"),
                                                           str(data)))
    raw["experimental_data"]["q"] = "all"
    raw["optimization"] = {"coarse": False, "max_iterations": 3, "streaming": {
        "enable_checkpoints": True, "checkpoint_dir": str(tmp_path / "ck"),
        "checkpoint_frequency": 1, "checkpoint_min_interval_s": 0.0}}
    raw["performance"] = {"strategy_override": "streaming", "batch_size": 200,
                          "enable_progress": False}
    out, victims = tmp_path / "out", tmp_path / "victims"
    raw["output"] = {"plots": False, "directory": str(out)}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    out.mkdir()
    victims.mkdir()
    for name in ("parameters_vs_q.png", "parameters_vs_file.png"):
        (victims / name).write_text("keep")
        (out / name).symlink_to(victims / name)

    assert main(["--config", str(tmp_path / "cfg.yaml")]) in (0, 4)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "not written" not in err
    assert "sample age /homodyne/synthetic/age_s unreadable" in err
    for qi in ("q00", "q01"):
        params = json.loads((out / "series" / qi / "parameters.json").read_text())
        diag = params["streaming_diagnostics"]
        assert diag["checkpoint_saves"] > 0 and diag["checkpoint_errors"] == []
        assert list((tmp_path / "ck" / "series" / qi).glob("homodyne_state_batch_*.h5"))
        assert json.loads((out / "series" / qi / "job.json").read_text())["age_s"] is None
    assert not list((tmp_path / "ck").glob("homodyne_state_batch_*.h5"))
    for name in ("parameters_vs_q.png", "parameters_vs_file.png"):
        assert (victims / name).read_text() == "keep"
        assert not (out / name).is_symlink()
        assert (out / name).read_bytes()[:4] == b"\x89PNG"

    raw["experimental_data"]["start_frame"] = 5
    raw["optimization"]["streaming"]["enable_checkpoints"] = False
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    real, calls = pipeline.run_from_config, []

    def ctrl_c_in_the_second_fit(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(pipeline, "run_from_config", ctrl_c_in_the_second_fit)
    with pytest.raises(KeyboardInterrupt):
        run_all(load_config(tmp_path / "cfg.yaml"), overwrite=True)
    table = pd.read_csv(out / "summary.csv")
    assert len(table) == 2
    for row in table.itertuples():
        params = json.loads((out / "series" / f"q{row.q_index:02d}" /
                             "parameters.json").read_text())
        assert row.n_points == params["n_points"]
        assert row.reduced_chi2 == pytest.approx(params["reduced_chi_squared"], rel=1e-12)
    assert list(table.n_points) == [36 * 35 // 2, 40 * 39 // 2]


# --- configs -----------------------------------------------------------------------------

def _example_config(tmp_path) -> str:
    """The static example with its data path pointed at an existing (empty) file."""
    from pathlib import Path

    (tmp_path / "data.h5").touch()
    text = (Path(__file__).resolve().parents[1] / "homodyne" / "examples" /
            "static.yaml").read_text()
    return text.replace("data/static_example.h5", str(tmp_path / "data.h5")) \
        .replace('output:\n  directory: "results/example_static"\n', "")


def test_yaml_merge_keys_load_as_in_safe_load_and_duplicates_stay_refused(tmp_path):
    """`<<: *defaults` (standard YAML, accepted by safe_load and Snakemake) was refused with
    'could not determine a constructor for the tag ...merge'."""
    from homodyne.config import ConfigError, load_config

    base = _example_config(tmp_path)
    cfg = tmp_path / "merge.yaml"
    cfg.write_text(base + "output:\n  <<: [{plots: false, overwrite: true}]\n"
                          "  overwrite: false\n")
    assert load_config(cfg).output == {"directory": "results/fit", "overwrite": False,
                                       "plots": False}
    cfg.write_text(base + "output:\n  <<: {plots: false}\n  plots: true\n  plots: false\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'plots' \(line \d+\); keep only one") \
            as err:
        load_config(cfg)
    assert "\n" not in str(err.value)  # one line, the position included


def test_a_value_expanded_by_yaml_aliases_gives_a_short_message(tmp_path):
    """A 1 kB config whose phi_ranges is a nested alias (9^8 leaves) printed a 140 MB
    error line after seconds of formatting."""
    from homodyne.config import ConfigError, load_config

    nested = "&a [1, 2, 3, 4, 5, 6, 7, 8, 9]"
    for prev, name in zip("abcdefg", "bcdefgh", strict=True):
        nested = f"&{name} [{nested}" + f", *{prev}" * 8 + "]"
    cfg = tmp_path / "aliases.yaml"
    cfg.write_text(_example_config(tmp_path).replace(
        "  start_frame: 1", f"  phi_ranges: {nested}\n  start_frame: 1"))
    assert len(nested) < 300  # 300 bytes of YAML, 9^8 numbers once expanded
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert err.value.key == "experimental_data.phi_ranges[0]"
    assert len(str(err.value)) < 600, len(str(err.value))



def test_validate_checks_the_data_of_every_file_of_a_run(tmp_path, capsys):
    """With `files:`, validate only listed the planned fits: a file without one finite
    value passed (exit 0) and failed the run."""
    import yaml

    from homodyne.cli import main

    good = _apsu(tmp_path / "a.h5")
    bad = _apsu(tmp_path / "b.h5", matrices=lambda h5: [
        h5.__setitem__(f"{C2}/c2_{k:05d}", np.full((20, 20), np.nan)) for k in (1, 2)])
    raw = yaml.safe_load(_example_config(tmp_path))
    del raw["experimental_data"]["file_path"]
    raw["experimental_data"].update(files=[str(good), str(bad)], q=0.005)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert main(["validate", "--config", str(tmp_path / "c.yaml")]) == 2
    out, err = capsys.readouterr()
    assert "a.h5  q bin 0 (q = 0.005)" in out and "2 angles x 20 frames, 380 points" in out
    assert "b.h5: /xpcs/twotime/correlation_map/c2_00001 holds no finite values" in out
    assert "1 of 2 fits cannot run" in err


def test_a_selection_too_small_for_the_parameters_is_refused_before_the_fit(
        tmp_path, capsys, monkeypatch):
    """start_frame = N-1 (2 frames): a fit ran first ('NOT DETERMINED: fewer points than
    parameters'), then 'only 2 of the 2 selected points are finite (100.00%) ... choose data
    without NaN' - there was no NaN."""
    import yaml

    from homodyne.cli import main
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    raw = yaml.safe_load(_example_config(tmp_path).replace(
        str(tmp_path / "data.h5"), str(_apsu(tmp_path / "small.h5"))))
    raw["experimental_data"]["start_frame"] = 19
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(NLSQWrapper, "fit_two_time", lambda *a, **k: pytest.fail("fitted"))
    assert main(["--config", str(tmp_path / "c.yaml"), "--output-dir",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert ("the selection holds only 2 points (2 angles x 2 frames); a fit of 7 parameters "
            "needs at least 140: widen the frame or angle selection") in err
    assert "NaN" not in err


@pytest.mark.parametrize("key, value, instead", [
    ("q", "all", "use one_time.q_range"), ("files", ["g2.csv"], "use one_time.series"),
    ("phi_ranges", [[0, 10]], "fits every q of its file"),
    ("start_frame", 5, "use one_time.min_tau_s/max_tau_s")])
def test_two_time_keys_in_a_one_time_config_are_refused_not_ignored(tmp_path, key, value,
                                                                      instead):
    """`--q all` with a one-time table was routed to the two-time multi-q runner ('not a
    readable HDF5 file'); `files:` gave 'file_path: missing'; phi_ranges and start_frame
    were silently ignored."""
    from homodyne.config import ConfigError, validate_config

    table = tmp_path / "g2.csv"
    table.write_text("tau,g2(q=0.005),sigma(q=0.005)\n0.001,1.3,0.01\n0.01,1.2,0.01\n")
    data = {"file_path": str(table), key: value}
    if key == "files":
        data = {key: [str(table)]}
    with pytest.raises(ConfigError, match=rf"experimental_data\.{key}: applies to two-time "
                                          rf"data only; .*{instead}"):
        validate_config({"analysis_mode": "one_time", "experimental_data": data}, "c.yaml")


def test_sections_of_the_other_mode_are_refused_not_ignored(tmp_path):
    """`one_time: {beta: fixed}` in a static config, and initial values, bounds or
    performance settings in a one-time config, were silently ignored."""
    import yaml

    from homodyne.config import ConfigError, load_config, validate_config

    raw = yaml.safe_load(_example_config(tmp_path))
    raw["one_time"] = {"beta": "fixed"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"one_time: applies to analysis_mode: one_time only "
                                          r"\(this is a static fit\); remove it"):
        load_config(tmp_path / "c.yaml")
    table = tmp_path / "g2.csv"
    table.write_text("tau,g2(q=0.005),sigma(q=0.005)\n0.001,1.3,0.01\n0.01,1.2,0.01\n")
    for section, value in (("performance", {"strategy_override": "streaming"}),
                           ("initial_parameters", {"values": [1.0, 2.0, 3.0]})):
        with pytest.raises(ConfigError, match=rf"{section}: applies to two-time fits only"):
            validate_config({"analysis_mode": "one_time", section: value,
                             "experimental_data": {"file_path": str(table)}}, "c.yaml")


def test_an_output_folder_name_too_long_is_one_clear_error(tmp_path, capsys):
    """A folder name over the file system's 255 bytes ended in a traceback (OSError from
    Path.exists), exit 1."""
    import yaml

    from homodyne.cli import main

    raw = yaml.safe_load(_example_config(tmp_path).replace(
        str(tmp_path / "data.h5"), str(_apsu(tmp_path / "small.h5"))))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    long = tmp_path / ("x" * 300)
    assert main(["--config", str(tmp_path / "c.yaml"), "--output-dir", str(long)]) == 2
    err = capsys.readouterr().err
    assert f"output folder {long} cannot be used (File name too long); choose another " \
           "--output-dir" in err and "Traceback" not in err


def test_files_naming_one_file_with_brackets_finds_it(tmp_path):
    """`files: ".../a[1].h5"` - an existing file whose name is also a glob pattern that
    does not match itself - was refused with 'no file matches'."""
    from homodyne.config import validate_config

    data = _apsu(tmp_path / "a[1].h5")
    cfg = validate_config({"analysis_mode": "static", "experimental_data": {
        "files": str(data)}, "initial_parameters": {"values": [1e4, -0.5, 100.0]}}, "c.yaml")
    assert cfg.experimental_data["files"] == [str(data)]


# --- Python API ----------------------------------------------------------------------------

@pytest.mark.parametrize("kw, message", [
    ({"ydata": np.zeros(0), "xdata": np.zeros(0)}, r"ydata is empty: there is nothing to fit"),
    ({"bounds": ([0, 0, 0], [9, 9, 9])},
     r"bounds must be scalars or have one value per parameter \(2\), got 3 lower and 3 upper"),
    ({"model_func": "wrong shape"},
     r"model_func returns shape \(3,\) for 8 points of xdata; it must return one value per "
     r"point"),
])
def test_api_misuse_is_named_not_blamed_on_nan_or_numpy(kw, message):
    """Empty data and a model of the wrong output shape ended in 'only 0.0% of batches
    succeeded ... Check the data for NaN/Inf regions and p0'; bounds of the wrong length in
    numpy's 'operands could not be broadcast together with remapped shapes'."""
    import jax.numpy as jnp

    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    x = np.linspace(0.0, 5.0, 50)
    args = {"model_func": lambda x, a, b: a * jnp.exp(-b * x), "xdata": x,
            "ydata": 2 * np.exp(-1.3 * x), "p0": [1.0, 1.0], **kw}
    if kw.get("model_func") == "wrong shape":
        args["model_func"] = lambda x, a, b: a * jnp.ones(3)
    with pytest.raises(ValueError, match=message):
        NLSQWrapper(enable_progress=False).fit(**args)


def test_a_fit_stopped_by_a_signal_says_interrupted_not_too_few_points():
    """Ctrl-C in the first pass printed 'NOT DETERMINED: fewer points than parameters:
    interrupted by SIGINT' and wrote status too_few_points to parameters.interrupted.json."""
    import os
    import signal

    import jax.numpy as jnp

    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    def ctrl_c(batch, params, loss, success):
        os.kill(os.getpid(), signal.SIGINT)  # the driver turns it into a flag

    x = np.linspace(0.0, 5.0, 400)
    r = NLSQWrapper(enable_progress=False, callback=ctrl_c, strategy_override="streaming",
                    batch_size=100).fit(lambda x, a, b: a * jnp.exp(-b * x), x,
                                        2 * np.exp(-1.3 * x), p0=[1.0, 1.0])
    assert r.interrupted_by == "SIGINT"
    assert r.status == "interrupted" and r.as_dict()["status"] == "interrupted"


def test_other_fits_checkpoints_are_reported_once_per_run(tmp_path, caplog):
    """'3 checkpoint(s) in ... belong to another fit' was logged twice in every run."""
    import logging

    from homodyne.optimization import checkpoint_manager as cm

    with h5py.File(tmp_path / "homodyne_state_batch_0003.h5", "w") as h5:
        h5.attrs.update({"batch_idx": 3, "fingerprint": "a" * 64})
    cm._append_trailer(tmp_path / "homodyne_state_batch_0003.h5", "a" * 64)
    m = cm.CheckpointManager(tmp_path)
    m.fingerprint = "b" * 64
    with caplog.at_level(logging.WARNING, logger="homodyne"):
        assert m.find_latest_valid_checkpoint() is None
        assert m.find_latest_valid_checkpoint() is None
    assert caplog.text.count("belong to another fit") == 1


def test_a_fit_with_every_physical_parameter_fixed_is_not_called_converged(tmp_path, capsys):
    """parameter_space.fixed naming every parameter: exit 0 with status 'converged' and zero
    uncertainties, though the data determined nothing; --strict let it pass."""
    import json

    import yaml

    from homodyne.cli import main

    raw = yaml.safe_load(_example_config(tmp_path).replace(
        str(tmp_path / "data.h5"), str(_apsu(tmp_path / "small.h5"))))
    raw["parameter_space"]["fixed"] = ["D0", "alpha", "D_offset"]
    raw["output"] = {"plots": False}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert main(["--config", str(tmp_path / "c.yaml"), "--output-dir", str(tmp_path / "o"),
                 "--strict"]) == 5
    params = json.loads((tmp_path / "o" / "parameters.json").read_text())
    assert params["status"] == "undetermined" and params["fixed"] == ["D0", "alpha", "D_offset"]
    assert "converged but NOT DETERMINED (every physical parameter on a bound, fixed or " \
           "undetermined)" in capsys.readouterr().err


def test_summary_counts_stay_integers_beside_a_failed_row(tmp_path):
    """With one failed (file, q) the counts were written as 14280.0 and 6.0."""
    from homodyne.production.multiq import write_summary

    rows = [{"file": "a", "age_s": None, "q_index": 0, "q": 0.005, "n_points": 14280,
             "D0": 1e4, "D0_se": 10.0, "status": "ok", "passes": 6},
            {"file": "b", "age_s": None, "q_index": 0, "q": 0.005, "status": "failed: x"}]
    lines = write_summary(rows, tmp_path).read_text().splitlines()
    assert lines[1].startswith("a,,0,0.005,14280,") and ",ok,6" in lines[1]
    assert lines[2] == "b,,0,0.005,,,,failed: x,"


def test_a_folder_named_like_a_result_file_is_refused_before_the_fit(tmp_path, capsys,
                                                                      monkeypatch):
    """A folder 'fit.h5' in the output folder: the fit ran, then 'could not write the results
    (Is a directory); free space or choose another --output-dir'."""
    import yaml

    from homodyne.cli import main
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    raw = yaml.safe_load(_example_config(tmp_path).replace(
        str(tmp_path / "data.h5"), str(_apsu(tmp_path / "small.h5"))))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "o" / "fit.h5").mkdir(parents=True)
    monkeypatch.setattr(NLSQWrapper, "fit_two_time", lambda *a, **k: pytest.fail("fitted"))
    assert main(["--config", str(tmp_path / "c.yaml"), "--output-dir", str(tmp_path / "o"),
                 "--overwrite"]) == 2
    assert f"{tmp_path / 'o' / 'fit.h5'} is a folder where the result file fit.h5 goes; move " \
           "it away or choose another --output-dir" in capsys.readouterr().err


def test_the_workflow_accepts_the_folder_of_every_q_bin_index(tmp_path):
    """fit_q_bin's wildcard qi was constrained to two digits: a file with 100 or more q
    bins planned folders q100... that no rule could make. (Snakemake cannot take a
    brace quantifier such as \\d{2,} in a constraint: the workflow test checks q00 is made.)"""
    import re
    from pathlib import Path

    from homodyne.config import validate_config
    from homodyne.production.multiq import plan_jobs

    snakefile = (Path(__file__).resolve().parents[1] / "Snakefile").read_text()
    qi = re.search(r'^\s*qi=r"([^"]+)",', snakefile, re.M).group(1)
    q = np.linspace(0.001, 0.1, 120)
    with h5py.File(tmp_path / "many.h5", "w") as h5:
        h5["/xpcs/qmap/dynamic_v_list_dim0"] = q
        h5["/xpcs/qmap/dynamic_v_list_dim1"] = [0.0]
        h5["/xpcs/twotime/processed_bins"] = np.arange(1, q.size + 1)
        for k in range(q.size):
            h5[f"{C2}/c2_{k + 1:05d}"] = np.eye(3)
    cfg = validate_config({"analysis_mode": "static", "experimental_data": {
        "file_path": str(tmp_path / "many.h5"), "q": "all"},
        "initial_parameters": {"values": [1e4, -0.5, 100.0]}}, "c.yaml")
    names = [j.output_dir.name for j in plan_jobs(cfg)]
    assert names[100] == "q100"
    assert all(re.fullmatch(qi, n[1:]) for n in names), qi


@pytest.mark.parametrize("kind", ["loop", "dangling"])
def test_a_symlink_that_leads_nowhere_is_named_as_such(tmp_path, capsys, kind):
    """A symlink loop given as the data file said 'file not found: loop1'."""
    import yaml

    from homodyne.cli import main

    link = tmp_path / "data_link.h5"
    if kind == "loop":
        (tmp_path / "other.h5").symlink_to(link)
        link.symlink_to(tmp_path / "other.h5")
        why = "is a loop of symbolic links; point it at the data file itself"
    else:
        link.symlink_to(tmp_path / "gone.h5")
        why = f"is a symbolic link to {str(tmp_path / 'gone.h5')!r}, which does not exist"
    raw = yaml.safe_load(_example_config(tmp_path).replace(str(tmp_path / "data.h5"), str(link)))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert main(["--config", str(tmp_path / "c.yaml"), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{link} {why}" in err and "Traceback" not in err
    with pytest.raises(DataFileError, match="symbolic link"):
        open_two_time(link)


def test_open_two_time_takes_bytes_and_names_an_empty_or_odd_path(tmp_path):
    """open_two_time(b'...') raised TypeError about endswith; '' said ': file does not exist'."""
    data = _apsu(tmp_path / "small.h5")
    from_bytes, from_str = open_two_time(bytes(data)), open_two_time(data)
    assert (from_bytes.n_frames, list(from_bytes.phi_deg)) == \
        (from_str.n_frames, list(from_str.phi_deg))
    with pytest.raises(DataFileError, match="no data file given"):
        open_two_time("")
    with pytest.raises(DataFileError, match="is not a file path"):
        open_two_time(3.5)


def test_a_memory_limit_below_the_fits_minimum_is_a_setting_error(tmp_path, capsys):
    """performance.memory_limit_gb: 1e-9 gave exit 3 'fit failed'; it is a setting to change."""
    import yaml

    from homodyne.cli import main

    raw = yaml.safe_load(_example_config(tmp_path).replace(
        str(tmp_path / "data.h5"), str(_apsu(tmp_path / "small.h5"))))
    raw.setdefault("performance", {})["memory_limit_gb"] = 1e-9
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert main(["--config", str(tmp_path / "c.yaml"), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "homodyne: error: performance.memory_limit_gb = 1e-09 is too small" in err
