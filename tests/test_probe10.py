"""Regression tests for probe10's findings (issue 12, a fresh round over main): an ASCII
standard output, ``homodyne generate`` values the fit refuses, damaged .npy headers, bounds
whose width overflows, and a multi-start whose Sobol start makes the model overflow."""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from helpers import bounds_for, make_spec, noisy_data, start_for, truth_for

from homodyne.cli import main
from homodyne.config import ConfigError, validate_config
from homodyne.data import open_two_time
from homodyne.data.errors import DataFileError
from homodyne.data.synthetic import generate_synthetic
from homodyne.onetime.data import read_one_time
from homodyne.optimization.nlsq_wrapper import NLSQWrapper
from homodyne.optimization.result import FitResult
from homodyne.pipeline import write_two_time_outputs


def test_an_ascii_standard_output_escapes_a_non_ascii_path_instead_of_a_traceback(tmp_path):
    """Was a UnicodeEncodeError traceback and exit 1 after the work was done (the result set
    committed): the console script printing a path with 'ü' under PYTHONIOENCODING=ascii."""
    out = tmp_path / "ü" / "d.h5"
    script = ("import sys\n"
              "from homodyne import entry\n"
              f"sys.argv = ['homodyne', 'generate', '--output', {str(out)!r}, '--frames', '20']\n"
              "sys.exit(entry.main())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith(f"wrote {str(out).replace('ü', chr(92) + 'xfc')}: 190 points")
    assert out.is_file()


@pytest.mark.parametrize("argv, option", [
    (["--dt", "1e300"], "argument --dt: --dt = 1e+300 s is not a detector frame time"),
    (["--dt", "1e-13"], "argument --dt: --dt = 1e-13 s is not a detector frame time"),
    (["--output-name", "d.npy"], "argument --output: {out} would be an HDF5 file named .npy"),
    (["--angles", "0,45,0.0"], "argument --angles: an angle is given twice ('0,45,0.0')"),
])
def test_generate_refuses_what_the_fit_would_refuse(tmp_path, capsys, argv, option):
    """Was a ValueError traceback (exit 1) for a frame time outside the range a fit takes,
    and an HDF5 file named .npy that every fit then refused."""
    out = tmp_path / (argv[1] if argv[0] == "--output-name" else "d.h5")
    extra = [] if argv[0] == "--output-name" else argv
    with pytest.raises(SystemExit) as stop:
        main(["generate", "--output", str(out), "--frames", "10", *extra])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert option.format(out=out) in err and "Traceback" not in err
    assert not out.exists()


def _npy_bytes(tmp_path) -> bytes:
    c2 = 1.0 + 0.3 * np.exp(-np.abs(np.subtract.outer(np.arange(20.0), np.arange(20.0))) / 5)
    np.save(tmp_path / "ok.npy", c2)
    return (tmp_path / "ok.npy").read_bytes()


def _flipped(raw: bytes, offset: int, xor: int) -> bytes:
    b = bytearray(raw)
    b[offset] ^= xor
    return bytes(b)


# offsets in the header of a 20 x 20 float64 .npy (10 magic+length, then the dict text):
# a quote, the dict's comma, a space of the padding turned into a NUL
@pytest.mark.parametrize("offset, xor", [(11, 1), (24, 0xFF), (100, 0x20), (20, 0x20)])
def test_a_damaged_npy_header_is_a_data_error(tmp_path, offset, xor):
    """Was tokenize.TokenError escaping numpy's header parser: a traceback, exit 1 (104 of
    384 one-byte flips over the measured CHX matrix's header)."""
    raw = _npy_bytes(tmp_path)
    path = tmp_path / "bad.npy"
    path.write_bytes(_flipped(raw, offset, xor))
    with pytest.raises(DataFileError, match="the array has no readable .npy header"):
        open_two_time(path)


def test_a_damaged_npy_header_inside_a_one_time_npz_table_is_a_data_error(tmp_path):
    tau = np.logspace(-3, 0, 12)
    g2 = 1 + 0.3 * np.exp(-np.outer(tau, [5.0, 20.0]))
    np.savez(tmp_path / "ok.npz", tau=tau, q=np.array([0.01, 0.02]), g2=g2,
             sigma=np.full_like(g2, 0.01))
    with zipfile.ZipFile(tmp_path / "ok.npz") as zin, \
            zipfile.ZipFile(tmp_path / "bad.npz", "w") as zout:
        for info in zin.infolist():
            member = zin.read(info)
            zout.writestr(info, _flipped(member, 100, 0x20) if info.filename == "g2.npy"
                          else member)
    assert read_one_time(tmp_path / "ok.npz").g2.shape == (12, 2)
    with pytest.raises(DataFileError, match="array 'g2' has no readable .npy header "
                                            r"\(source code cannot contain null bytes\)"):
        read_one_time(tmp_path / "bad.npz")


@pytest.mark.parametrize("name", ["contrast", "offset", "D0"])
def test_bounds_whose_width_overflows_are_a_config_error(name):
    """Was p0 = -inf ('p0 must be finite' traceback, exit 1) for contrast or offset bounds of
    +/-1e308 (the start's 1% margin of hi - lo = inf), and NaN restart starts for D0."""
    raw = {"experimental_data": {},
           "initial_parameters": {"values": [8000.0, -0.4, 80.0]},
           "parameter_space": {"bounds": [{"name": name, "min": -1e308, "max": 1e308}]}}
    with pytest.raises(ConfigError, match=rf"parameter_space.bounds\[0\]: bounds of {name}: "
                       r"the width max - min = 1e\+308 - \(-1e\+308\) exceeds the largest "
                       r"float; narrow them"):
        validate_config(raw, require_data=False)
    raw["parameter_space"]["bounds"][0].update(min=-1e300, max=1e300)  # still taken
    assert validate_config(raw, require_data=False).bound(name) == (-1e300, 1e300)


def test_a_restart_start_where_the_model_overflows_is_skipped_not_the_fit():
    """Was exit 3 'Non-finite model values ... at the full stage's first parameters [...,
    nan, -815, nan]': alpha bounds of +/-1000 put a Sobol start where t^-alpha overflows,
    and that one start failed the whole multi-start fit."""
    spec = make_spec("static", n_frames=24, n_phi=2)
    truth = truth_for(spec)
    y = noisy_data(spec, truth, seed=4)
    lb, ub = bounds_for(spec)
    k = 2 * spec.n_scaling_sets
    lb[k + 1], ub[k + 1] = -1e3, 1e3  # alpha
    best = NLSQWrapper(restarts=3).fit_two_time(None, spec, start_for(spec, truth), (lb, ub),
                                                y=y)
    assert "skipped: model not finite there" in best.messages[-1]
    assert best.converged
    # D0, alpha as the data give them (truth 1e4, -0.5), not a start's overflow
    assert abs(best.parameters[k] - truth[k]) < 4 * best.uncertainties[k]
    assert abs(best.parameters[k + 1] - truth[k + 1]) < 4 * best.uncertainties[k + 1]


def test_jax_platforms_naming_a_backend_jax_lacks_is_one_clean_error(tmp_path):
    """Was a traceback from deep inside JAX at the first array (an empty AssertionError for
    JAX_PLATFORMS=cuda on a machine without a GPU, a RuntimeError for a typo), exit 1."""
    script = ("import sys\n"
              "from homodyne import entry\n"
              f"sys.argv = ['homodyne', 'generate', '--output', {str(tmp_path / 'd.h5')!r}, "
              "'--frames', '20']\n"
              "sys.exit(entry.main())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "JAX_PLATFORMS": "bogus"})
    assert done.returncode == 2
    assert done.stderr.startswith("homodyne: error: JAX_PLATFORMS: 'bogus': JAX cannot start it")
    assert done.stderr.rstrip().endswith("unset JAX_PLATFORMS or set it to cpu")
    assert done.stderr.count("\n") == 1 and not (tmp_path / "d.h5").exists()


def test_fit_h5_and_the_figures_state_an_outcome_that_is_not_converged(tmp_path, monkeypatch):
    """Was: fit.h5 held only the parameters and the heat maps' title only the file name, so
    either file read on its own passed a NOT converged fit for a converged one."""
    import h5py

    from homodyne import plots

    spec = make_spec("static", n_frames=24, n_phi=2)
    generate_synthetic(tmp_path / "d.h5", spec, truth_for(spec), noise_sigma=0.01, seed=3)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({
        "experimental_data": {"file_path": str(tmp_path / "d.h5")},
        "initial_parameters": {"values": [8000.0, -0.4, 80.0]},
        "optimization": {"max_iterations": 1},
        "output": {"directory": str(tmp_path / "out"), "plots": False}}))
    assert main(["--config", str(cfg), "--quiet"]) == 4
    result = json.loads((tmp_path / "out" / "parameters.json").read_text())
    with h5py.File(tmp_path / "out" / "fit.h5") as h5:
        attrs = dict(h5.attrs)
    assert result["status"] == attrs["status"] == "not_converged"
    assert attrs["data_file"] == result["data_file"] == str(tmp_path / "d.h5")
    assert json.loads(attrs["parameter_names"]) == result["parameter_names"]
    assert np.array_equal(attrs["parameters"], result["parameters"])

    titles = []  # the heat maps of each outcome (figures not drawn)
    monkeypatch.setattr(plots, "plot_heatmaps", lambda path, **kw: titles.append(kw["title"]))
    for name in ("plot_cuts", "plot_scaling", "plot_residual_histogram"):
        monkeypatch.setattr(plots, name, lambda path, **kw: None)
    names = ("contrast[0]", "contrast[1]", "offset[0]", "offset[1]", "D0", "alpha", "D_offset")
    base = {k: result[k] for k in ("parameters", "uncertainties", "covariance", "cost",
                                   "n_points", "stop_reason", "strategy", "iterations",
                                   "passes")}
    with open_two_time(tmp_path / "d.h5") as src:
        for kw in ({"converged": True}, {"converged": False},
                   {"converged": True, "at_bounds": ["D0", "alpha", "D_offset"]}):
            fit = FitResult(parameter_names=names, reduced_chi_squared=1.0,
                            **{**base, **kw, "parameters": np.array(result["parameters"]),
                               "uncertainties": np.array(result["uncertainties"]),
                               "covariance": np.array(result["covariance"])})
            write_two_time_outputs(tmp_path / "w", src, spec, fit, plots=True)
    assert titles == ["d.h5 (static)", "d.h5 (static): NOT converged",
                      "d.h5 (static): converged but NOT DETERMINED"]


def _two_matrices(tmp_path, name, **maps):
    """An APS-U (``bins``) or older-layout (``dq``) file of two 12-frame matrices."""
    import h5py

    c2 = 1.0 + 0.3 * np.exp(-np.abs(np.subtract.outer(np.arange(12.0), np.arange(12.0))) / 4)
    path = tmp_path / f"{name}.h5"
    with h5py.File(path, "w") as h5:
        h5["/entry/instrument/detector_1/frame_time"] = 0.1
        if "bins" in maps:
            h5["/xpcs/qmap/dynamic_v_list_dim0"] = maps["q"]
            h5["/xpcs/qmap/dynamic_v_list_dim1"] = maps["phi"]
            h5["/xpcs/twotime/processed_bins"] = maps["bins"]
            for k in (1, 2):
                h5[f"/xpcs/twotime/correlation_map/c2_{k:05d}"] = c2 * (1 + 0.01 * k)
        else:
            h5["/xpcs/dqlist"], h5["/xpcs/dphilist"] = maps["q"], maps["phi"]
            for k in (1, 2):
                h5[f"/exchange/C2T_all/c2_{k:05d}"] = c2 * (1 + 0.01 * k)
    return path


@pytest.mark.parametrize("maps", [
    {"q": [0.0054], "phi": [0.0, 45.0], "bins": [1, 1]},  # one bin listed twice
    {"q": [0.0054], "phi": [0.0, 0.0], "bins": [1, 2]},  # a phi map with one angle twice
    {"q": [0.0054, 0.0054], "phi": [0.0], "bins": [1, 2]},  # two q bins of one value
    {"q": [0.0054, 0.0054], "phi": [10.0, 10.0]},  # older layout, one pair twice
])
def test_a_file_listing_one_q_phi_bin_twice_is_refused(tmp_path, maps):
    """Was fitted as two angles at the same phi (parameters.json phi_deg [0, 0] for a file
    whose matrices are of two angles; a laminar fit's shear term then wrong), exit 0."""
    with pytest.raises(DataFileError, match=r"c2_00001 and .*c2_00002 are both at q = 0.0054, "
                                            r"phi = (0|10) deg: the file lists one \(q, phi\) "
                                            "bin twice"):
        open_two_time(_two_matrices(tmp_path, "dup", **maps), q=0.0054)
    fine = {"q": [0.0054], "phi": [0.0, 45.0], "bins": [1, 2]} if "bins" in maps else \
        {"q": [0.0054, 0.0054], "phi": [0.0, 45.0]}  # the same layout, each bin once
    with open_two_time(_two_matrices(tmp_path, "fine", **fine), q=0.0054) as src:
        assert src.phi_deg == (0.0, 45.0)


def test_a_config_key_with_an_invisible_character_is_shown_as_such():
    """Was "analysis_mode: unknown key; did you mean 'analysis_mode'?" (the NUL invisible)."""
    with pytest.raises(ConfigError, match=r"^'analysis_mode\\x00': unknown key; did you mean "
                                          "'analysis_mode'"):
        validate_config({"analysis_mode\0": "static"}, require_data=False)


@pytest.mark.parametrize("kw, message", [
    ({"mode": "laminar_flow", "gap_h": float("nan")}, "got gap_h=nan"),
    ({"mode": "laminar_flow", "gap_h": -1.0}, "got gap_h=-1.0"),
    ({"q": "0.0054"}, "got q='0.0054'"),
    ({"dt": True}, "got dt=True"),
    ({"phi_deg": (0.0, float("nan"))}, "phi_deg must be finite angles in degrees"),
])
def test_model_spec_names_a_value_the_model_cannot_use(kw, message):
    """Was accepted (gap_h NaN or negative, phi NaN, dt=True: a NaN model or a 1 s frame)
    or a raw TypeError ('>' not supported between 'str' and 'int') for q given as text."""
    from homodyne.model import ModelSpec

    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ModelSpec(**{"mode": "static", "n_frames": 10, "phi_deg": (0.0,), **kw})


@pytest.mark.parametrize("names", [["a", "a"], [1, 2]])
def test_parameter_names_must_be_distinct_strings(names):
    """Was accepted: parameters_by_name then held one entry for two parameters."""
    x = np.linspace(0.0, 1.0, 50)
    with pytest.raises(ValueError, match="parameter_names must be distinct strings"):
        NLSQWrapper().fit(lambda x, a, b: a * x + b, x, 2 * x + 1, [1.0, 0.0],
                          parameter_names=names)


def test_a_benchmark_record_of_an_undetermined_fit_claims_no_recovery_error(tmp_path):
    """Was max_abs_error_se = 0.0 (a perfect recovery) for a fit whose every SE is infinite
    (1 point, 5 parameters): (fit - truth) / inf."""
    from homodyne.benchmarks.runner import bench_engine

    spec = make_spec("static", n_frames=2, n_phi=1)
    generate_synthetic(tmp_path / "tiny.h5", spec, truth_for(spec), noise_sigma=0.01, seed=3)
    rec = bench_engine(tmp_path / "tiny.h5", tmp_path / "rec.json", tier="standard")
    assert rec["n_points"] == 1 and not np.isfinite(rec["uncertainties"]).any()
    assert rec["max_abs_error_se"] is None
    assert json.loads((tmp_path / "rec.json").read_text())["max_abs_error_se"] is None


@pytest.mark.parametrize("header, message", [
    ("tau,sigma(q=0.005),g2(q=0.005)", "columns 'sigma(q=0.005)', 'g2(q=0.005)': expected a "
                                       "g2 column then the sigma column of the same q"),
    ("tau,g2(q=0.005),sigma(q=0.007)", "columns 'g2(q=0.005)', 'sigma(q=0.007)': expected"),
    ("tau,g2(q=0.005),sigma(q=0.005),g2(q=0.005),sigma(q=0.005)",
     r"the header names a q value twice \(\[0.005, 0.005\]\)"),
])
def test_a_csv_table_whose_columns_are_not_g2_then_sigma_is_refused(tmp_path, header, message):
    """Was read by position: a sigma column first was fitted as g2 (exit 0, 'undetermined'),
    and one q given twice gave two fits reported under one q."""
    n = header.count(",")
    rows = "".join(f"{t}" + ",1.2,0.01" * (n // 2) + "\n" for t in (0.001, 0.01, 0.1))
    (tmp_path / "g2.csv").write_text(f"{header}\n{rows}")
    pattern = message if "twice" in message else message.replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(DataFileError, match=pattern):
        read_one_time(tmp_path / "g2.csv")
    (tmp_path / "ok.csv").write_text('"tau","g2(q=0.005)","sigma(q=0.005)"\n'
                                     "0.001,1.3,0.01\n0.01,1.2,0.01\n")
    assert read_one_time(tmp_path / "ok.csv").q.tolist() == [0.005]  # quoted names still read


def test_a_csv_table_without_rows_is_one_message_without_a_numpy_warning(tmp_path, recwarn):
    """Was numpy's 'UserWarning: loadtxt: input contained no data' on the console, then
    '1 columns of numbers for 3 names'."""
    (tmp_path / "g2.csv").write_text("tau,g2(q=0.005),sigma(q=0.005)\n")
    with pytest.raises(DataFileError, match="holds a header but no rows of numbers below it"):
        read_one_time(tmp_path / "g2.csv")
    assert not [w for w in recwarn if "loadtxt" in str(w.message)]


def test_an_npz_table_naming_a_q_twice_is_refused(tmp_path):
    tau = np.logspace(-3, 0, 8)
    g2 = 1 + 0.3 * np.exp(-np.outer(tau, [5.0, 20.0]))
    np.savez(tmp_path / "t.npz", tau=tau, q=np.array([0.01, 0.01]), g2=g2,
             sigma=np.full_like(g2, 0.01))
    with pytest.raises(DataFileError, match=r"the table names a q value twice \(\[0.01, 0.01\]\)"):
        read_one_time(tmp_path / "t.npz")


def test_a_relative_data_path_naming_two_files_warns_which_one_is_fitted(tmp_path, monkeypatch,
                                                                         caplog):
    """Was silent: started from another folder holding a file of the same name, the run
    fitted that one, not the file beside the config (both b.h5 in the log and results)."""
    (tmp_path / "cfg").mkdir()
    (tmp_path / "run").mkdir()
    for folder in ("cfg", "run"):
        (tmp_path / folder / "b.h5").write_bytes(folder.encode())
    raw = {"experimental_data": {"file_path": "b.h5"},
           "initial_parameters": {"values": [8000.0, -0.4, 80.0]}}
    source = str(tmp_path / "cfg" / "c.yaml")
    monkeypatch.chdir(tmp_path / "run")
    assert validate_config(raw, source).experimental_data["file_path"] == "b.h5"
    assert "b.h5 is read from the working folder" in caplog.text
    assert str(tmp_path / "cfg" / "b.h5") in caplog.text
    caplog.clear()
    monkeypatch.chdir(tmp_path / "cfg")  # the same file both ways: nothing to say
    raw["experimental_data"]["file_path"] = "b.h5"
    validate_config(raw, source)
    assert "working folder" not in caplog.text


def test_one_q_bin_refitted_from_a_config_of_files_keeps_every_row_of_the_summary(tmp_path):
    """Was: `--q 0.006` on a config listing its files (experimental_data.files, the workflow's
    style) refitted the bin and rewrote summary.csv with that bin's row only, although the
    other bin's folder and results stayed (the help: 'refreshes the summary.csv')."""
    import pandas as pd

    from homodyne.production.multiq_data import AgingSeries, write_series_file

    data = write_series_file(tmp_path, AgingSeries(q=(0.004, 0.006), ages_s=(0.0,), frames=16,
                                                   angles=(0.0,)), 0)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({
        "experimental_data": {"files": [str(data)], "q": "all"},
        "initial_parameters": {"values": [1e4, -0.5, 100.0]},
        "output": {"directory": str(tmp_path / "out"), "plots": False}}))
    main(["--config", str(cfg), "--quiet"])
    before = pd.read_csv(tmp_path / "out" / "summary.csv")
    main(["--config", str(cfg), "--q", "0.006", "--overwrite", "--quiet"])
    after = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert list(before["q_index"]) == list(after["q_index"]) == [0, 1]
    assert after["D0"].tolist() == before["D0"].tolist()  # the same data and settings
