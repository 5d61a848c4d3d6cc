"""probe24's findings (issue 12, fresh round over the eighth session's merged code): each
test fails on int8b."""

import json
import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest

from homodyne.cli import EXIT_USAGE

SCRIPTS = Path(__file__).resolve().parents[1] / "workflow" / "scripts"


def recorded_set(folder: Path) -> Path:
    """A committed two-file set in ``folder`` and its record job.json."""
    from homodyne.production.report import write_fit_record

    folder.mkdir(parents=True)
    (folder / "a.csv").write_text("1\n")
    (folder / "parameters.json").write_text(json.dumps(
        {"result_files": ["a.csv", "parameters.json"]}))
    return write_fit_record(folder)


def run_script(name: str, snakemake) -> int:
    """A workflow rule script run as Snakemake runs it; its exit status."""
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(SCRIPTS / name), init_globals={"snakemake": snakemake})
    return stop.value.code


def test_the_report_rule_with_a_file_of_the_set_gone_says_one_line_and_exits_2(
        tmp_path, capsys):
    """fits_report over a recorded set missing one of its files (deleted by hand) was a
    FileNotFoundError traceback; a set no longer the recorded one was a ResultFileError
    traceback (the rule script did not go through run_reporting_errors)."""
    record = recorded_set(tmp_path / "chx")
    (tmp_path / "chx" / "a.csv").unlink()
    snakemake = SimpleNamespace(input={"chx": str(record)}, log=[],
                                output={"chx": [str(tmp_path / "report" / "a.csv")]},
                                params=SimpleNamespace(reports={"chx": ["a.csv"]}))
    assert run_script("publish_fit_files.py", snakemake) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err == (f"fits_report: error: {tmp_path / 'chx' / 'a.csv'} of the result set {record} "
                   "records is missing; rerun that fit (snakemake --forcerun on its rule)\n")
    (tmp_path / "chx" / "parameters.json").write_text("{}")  # another set since
    assert run_script("publish_fit_files.py", snakemake) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"fits_report: error: {tmp_path / 'chx'} no longer holds the result set")
    assert err.count("\n") == 1 and not list((tmp_path / "report").glob("*"))


def test_the_summary_rule_refuses_a_set_its_record_does_not_name_in_one_line(
        tmp_path, capsys):
    """A fit's parameters.json that is not the recorded set's (another set committed into
    the folder since, or edited): fits_report refused it, fits_summary summarized it; one
    that cannot be read was a ResultFileError traceback."""
    folders = [tmp_path / f for f in ("chx", "aging", "laminar")]
    for f in folders:
        recorded_set(f)
    snakemake = SimpleNamespace(input=[str(f / "job.json") for f in folders], log=[],
                                output=[str(tmp_path / "summary.md")])
    for other in ('{"result_files": ["parameters.json"]}', "not json"):
        (folders[1] / "parameters.json").write_text(other)
        assert run_script("fits_summary.py", snakemake) == EXIT_USAGE
        assert capsys.readouterr().err == (
            f"fits_summary: error: {folders[1]} no longer holds the result set "
            f"{folders[1] / 'job.json'} records (parameters.json changed); rerun that fit "
            "(snakemake --forcerun on its rule)\n")
        assert not (tmp_path / "summary.md").exists()


def test_the_fetch_rule_with_an_altered_mirror_file_says_one_line_and_exits_2(
        real_data, tmp_path, capsys):
    """A mirror file that fails its checksum: the message was right, inside a traceback."""
    import shutil

    mirror = tmp_path / "mirror"
    shutil.copytree(real_data / "chx_two_time", mirror / "chx_two_time")
    altered = mirror / "chx_two_time" / "fit_parameter_log.json"
    altered.chmod(0o644)
    altered.write_bytes(altered.read_bytes()[:-1] + b" ")
    out = tmp_path / "results" / "fit_parameter_log.json"
    snakemake = SimpleNamespace(
        wildcards=SimpleNamespace(folder="chx_two_time", name="fit_parameter_log.json"),
        output=[str(out)], params=SimpleNamespace(mirror=str(mirror)), log=[])
    assert run_script("fetch_real_data.py", snakemake) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"fetch_real_data: error: {altered}: SHA-256 ")
    assert "does not match the expected" in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("key", ["output.directory", "optimization.streaming.checkpoint_dir"])
def test_a_folder_under_the_home_of_no_user_is_refused_by_name(tmp_path, monkeypatch, key):
    """'~nosuchuser/x' (a typo for ~/x) made a folder named '~nosuchuser' in the working
    folder and the run said 'results in ~nosuchuser/x'."""
    from homodyne.config import ConfigError, load_config

    monkeypatch.chdir(tmp_path)
    overrides = {"experimental_data.file_path": str(tmp_path / "d.h5"),
                 key: "~nosuchuser_p24/x"}
    cfg = tmp_path / "c.yaml"
    cfg.write_text("analysis_mode: static\n")
    with pytest.raises(ConfigError) as refused:
        load_config(cfg, overrides=overrides, require_data=False)
    assert str(refused.value).startswith(
        f"{cfg}: {key}: '~nosuchuser_p24/x': no user 'nosuchuser_p24' has a home folder; give a "
        "path without ~ or with ~ alone")
    assert [p.name for p in tmp_path.iterdir()] == ["c.yaml"]


def test_a_virtual_dataset_mapping_another_selected_matrix_is_refused(tmp_path):
    """c2_00002 a virtual dataset mapping c2_00001 of the same file (by '.' or by the file's
    own name): one angle's matrix was fitted for another, as through a link (19c9a6e)."""
    import h5py
    from helpers import small_two_time_file

    from homodyne.data import DataFileError
    from homodyne.data.twotime import open_two_time

    maps = "/xpcs/twotime/correlation_map"
    for source in (".", "c2.h5"):
        path = small_two_time_file(tmp_path / "c2.h5", n_frames=10)
        with h5py.File(path, "r+") as h5:
            shape, dtype = h5[f"{maps}/c2_00001"].shape, h5[f"{maps}/c2_00001"].dtype
            layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
            layout[...] = h5py.VirtualSource(source, f"{maps}/c2_00001", shape=shape)
            del h5[f"{maps}/c2_00002"]
            h5.create_virtual_dataset(f"{maps}/c2_00002", layout)
        with pytest.raises(DataFileError) as refused:
            open_two_time(path, q=0.0054)
        assert str(refused.value) == (
            f"{path}: {maps}/c2_00002 is a virtual dataset that maps values of "
            f"{maps}/c2_00001, not values of its own: give each its own values (re-export "
            "the file)")
        path.unlink()


@pytest.mark.parametrize("window", [(0.85,), (0.85, 1.15, 2.0), ("a", "b"), 0.85])
def test_an_alpha_window_not_two_numbers_is_refused_by_its_key(window):
    """fit_chx(alpha_window=(0.85,)) said 'not enough values to unpack (expected 2, got 1)'."""
    from homodyne.production.chx import check_alpha_window

    with pytest.raises(ValueError) as refused:
        check_alpha_window(window)
    assert str(refused.value) == (f"fits.chx.alpha_window: {window!r} is not [low, high], two "
                                  "numbers; give e.g. [0.85, 1.15]")


def test_laminar_synthetic_angles_given_twice_are_refused_by_their_key(tmp_path):
    """angles [0, 0] (or 0 and 360) in fits.laminar_synthetic: the fit of the file it
    generated was refused with '...the file lists one (q, phi) bin twice ...; fix the file'."""
    from homodyne.config import ConfigError
    from homodyne.production.laminar import fit_laminar_synthetic

    for angles, first, second in (((0, 45, 0), "0", "0"), ((10, 370), "10", "370")):
        with pytest.raises(ConfigError) as refused:
            fit_laminar_synthetic(tmp_path / "lam", frames=10, angles=angles)
        assert str(refused.value) == (f"fits.laminar_synthetic.angles: {first} and {second} "
                                      "are one angle (equal modulo 360 degrees); list each once")
    assert not (tmp_path / "lam").exists()


def test_an_aging_delay_window_without_a_point_is_refused_by_its_key(tmp_path):
    """max_tau_s below min_tau_s (fits.aps_aging.max_tau_s: 0.0001 passes the workflow's
    schema) said 'cannot convert float NaN to integer', a traceback in the rule's log."""
    from helpers import aging_series

    from homodyne.config import ConfigError
    from homodyne.production.aging import fit_aging

    paths = aging_series(tmp_path, D0=1.0, alpha=-0.5, Doff=0.0, offset=1.0, n=2)
    with pytest.raises(ConfigError) as refused:
        fit_aging(paths, tmp_path / "aging", max_tau_s=1e-4, plots=False)
    assert str(refused.value) == (
        "max_tau_s: the delay window [0.001, 0.0001] s holds no usable point of the data "
        "(delays 2e-05 to 2 s); widen it (fits.aps_aging.max_tau_s in the workflow config, "
        "one_time.min_tau_s / max_tau_s in a fit config)")
    assert not (tmp_path / "aging" / "parameters.json").exists()


def test_a_bad_output_dir_option_is_named_as_the_option(tmp_path, monkeypatch, capsys):
    """--output-dir '~nosuchuser/y' was blamed on 'c.yaml: output.directory', a key the
    config does not hold (as --data-file was, probe22 W1)."""
    from helpers import streaming_cli_config

    from homodyne.cli import main

    cfg = streaming_cli_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["--config", str(cfg), "--output-dir", "~nosuchuser_p24/y"]) == EXIT_USAGE
    assert capsys.readouterr().err == (
        "homodyne: error: --output-dir: '~nosuchuser_p24/y': no user 'nosuchuser_p24' has a "
        "home folder; give a path without ~ or with ~ alone (your home folder)\n")
    assert not list(tmp_path.glob("~*"))
