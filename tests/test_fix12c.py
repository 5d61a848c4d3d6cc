"""Regression tests for issue 12's items left open by the probing rounds (fix12c): virtual
sources watched like the data file, the power-law rule only for the built-in model, the
same points counted by both backends, APS-U matrix names, the restarts' power-law label,
small API/CLI/schema refusals and a prompt exit when interrupted during JAX's start."""

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import small_two_time_file

from homodyne.data import open_two_time
from homodyne.data.errors import DataFileError

C2 = "/xpcs/twotime/correlation_map"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return small_two_time_file(tmp_path_factory.mktemp("f12c") / "b.h5")


# --- 1. virtual sources are watched like the file ----------------------------------

def _virtual_copy(small, folder):
    """A copy of ``small`` whose matrices are virtual datasets reading ``src.h5``."""
    src, path = folder / "src.h5", folder / "v.h5"
    shutil.copy(small, path)
    with h5py.File(path, "a") as h5, h5py.File(src, "w") as out:
        for key in sorted(h5[C2]):
            values = h5[C2][key][()]
            del h5[C2][key]
            out[key] = values
            lay = h5py.VirtualLayout(shape=values.shape, dtype="f8")
            lay[:] = h5py.VirtualSource("src.h5", key, shape=values.shape)
            h5[C2].create_virtual_dataset(key, lay)
    return path, src


def _rewrite(src):
    """The source written to in place with the same values (a new mtime, same size)."""
    st = os.stat(src)
    with h5py.File(src, "a") as h5:
        key = sorted(h5)[0]
        h5[key][0, 1] = h5[key][0, 1]
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_a_virtual_source_written_while_read_is_refused(small, tmp_path):
    """Was: only the file holding the virtual dataset was watched; its source rewritten
    during a streaming fit went unseen (later passes would mix two versions)."""
    path, src = _virtual_copy(small, tmp_path)
    source = open_two_time(path)
    assert [f.path for f in source.source_files] == [str(src)]
    source.read_rows(0, 0, 2)  # unchanged: read
    _rewrite(src)
    with pytest.raises(DataFileError, match=rf"virtual source file {src} was written to while "
                                            "being read"):
        source.read_rows(0, 0, 2)
    source.close()
    os.remove(src)
    with pytest.raises(DataFileError, match=rf"virtual source file {src} disappeared"):
        source.check_unchanged()


def test_a_virtual_source_changed_between_runs_changes_the_fingerprint(small, tmp_path):
    """Was: the checkpoint fingerprint stamped only the main file; a source rewritten
    between runs (same sampled values) resumed the old fit's checkpoints."""
    from homodyne.optimization.nlsq_wrapper import _source_identity

    path, src = _virtual_copy(small, tmp_path)
    with open_two_time(path) as source:
        before = _source_identity(source)
        assert _source_identity(source) == before  # stable while nothing changes
    _rewrite(src)
    with open_two_time(path) as source:
        assert _source_identity(source) != before


# --- 2. the power-law rule only for the built-in model --------------------------------

def _line(x, d0, alpha):
    return d0 + alpha * x


def test_a_user_model_with_power_law_names_is_judged_by_the_generic_rule():
    """Was: a user's model with parameters named "D0"/"alpha" was judged by the power-law
    limits: alpha = 200 +/- 1.7 counted as NOT DETERMINED (exponent SE above 1)."""
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    x = np.linspace(0.0, 1.0, 100)
    y = _line(x, 3.0, 200.0) + 5.0 * np.random.default_rng(4).standard_normal(x.size)
    kw = {"p0": [1.0, 100.0], "bounds": ([-1e3, -1e3], [1e3, 1e3])}
    named = NLSQWrapper().fit(_line, x, y, parameter_names=["D0", "alpha"], **kw)
    plain = NLSQWrapper().fit(_line, x, y, parameter_names=["a", "b"], **kw)
    assert 1.0 < named.uncertainties[1] < 0.1 * named.parameters[1]  # SE > 1, well measured
    assert named.generic_rules and "alpha" not in named.undetermined
    assert named.undetermined == plain.undetermined == []  # names change nothing
    np.testing.assert_array_equal(named.parameters, plain.parameters)


# --- 3. both backends fit and count the same points --------------------------------

def test_both_backends_leave_out_points_with_infinite_sigma():
    """Was: the nlsq backend passed sigma = inf points on to nlsq and counted them (n_points
    and degrees of freedom 10 higher than the homodyne engine's for the same data)."""
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    x = np.linspace(0.0, 1.0, 100)
    y = _line(x, 3.0, 200.0) + 5.0 * np.random.default_rng(4).standard_normal(x.size)
    sigma = np.full(x.size, 5.0)
    sigma[::10] = np.inf
    y[5] = np.nan
    kw = {"p0": [1.0, 100.0], "bounds": ([-1e3, -1e3], [1e3, 1e3]), "sigma": sigma,
          "parameter_names": ["D0", "alpha"]}
    ours = NLSQWrapper().fit(_line, x, y, **kw)
    theirs = NLSQWrapper(backend="nlsq").fit(_line, x, y, **kw)
    assert ours.n_points == theirs.n_points == 89
    np.testing.assert_allclose(theirs.parameters, ours.parameters, rtol=1e-6)
    np.testing.assert_allclose(theirs.reduced_chi_squared, ours.reduced_chi_squared, rtol=1e-6)
    assert theirs.undetermined == ours.undetermined == []  # the generic rule in both


# --- 4. APS-U matrices are paired with their bins by the number in their name ----------

BINS = "/xpcs/twotime/processed_bins"


def _renamed(small, tmp_path, renames, bins=None, n_q=1):
    """A copy of ``small`` with matrices renamed, processed_bins replaced and ``n_q`` q bins."""
    path = tmp_path / "r.h5"
    shutil.copy(small, path)
    with h5py.File(path, "a") as h5:
        for old, new in renames.items():
            h5[C2].move(old, new)
        if bins is not None:
            del h5[BINS]
            h5[BINS] = np.asarray(bins)
        q = h5["/xpcs/qmap/dynamic_v_list_dim0"][()]
        del h5["/xpcs/qmap/dynamic_v_list_dim0"]
        h5["/xpcs/qmap/dynamic_v_list_dim0"] = np.full(n_q, q[0])
    return path


@pytest.mark.parametrize(("renames", "bins", "message"), [
    ({"c2_00001": "c2_zzz"}, None, rf"{C2}/c2_zzz is not named c2_NNNNN \(NNNNN: its position "
                                   rf"in {BINS}, as boost_corr writes it\); the matrices cannot "
                                   "be paired with their q/phi bins - rename it"),
    ({"c2_00002": "c2_001"}, None, rf"{C2}/c2_00001 and {C2}/c2_001 both carry the number 1"),
    ({"c2_00002": "c2_00005"}, None, rf"the matrices under {C2} are numbered 1, 5: neither "
                                     rf"their positions 1..2 in {BINS} nor the bins it lists "
                                     r"\(\[1, 2\]\)"),
    ({}, [2, 1], r"numbered 1, 2: both their positions 1..2 in .* and, in another order, the "
                 r"bins it lists \(\[2, 1\]\); they cannot be paired"),
])
def test_apsu_matrix_names_that_cannot_be_paired_with_bins_are_refused(
        small, tmp_path, renames, bins, message):
    """Was: matrices paired with processed_bins by sorted name - c2_00001 renamed c2_zzz
    sorted last and the two angles were swapped without a word."""
    with pytest.raises(DataFileError, match=message):
        open_two_time(_renamed(small, tmp_path, renames, bins))


BY_BIN = {"c2_00002": "c2_00004", "c2_00001": "c2_00003"}


@pytest.mark.parametrize(("renames", "bins"), [({}, [3, 4]), (BY_BIN, [3, 4]), (BY_BIN, [4, 3])])
def test_apsu_matrices_pair_by_position_or_by_bin_number(small, tmp_path, renames, bins):
    """Bins 3 and 4 (the second q): matrices named by their position (boost_corr: c2_00001,
    c2_00002) or by their bin numbers (c2_00003, c2_00004; listed in either order: paired
    by sorted name, bins [4, 3] swapped the angles) are read with the same angles."""
    plain = open_two_time(small)
    got = open_two_time(_renamed(small, tmp_path, renames, bins, n_q=2))
    assert got.phi_deg == plain.phi_deg
    np.testing.assert_array_equal(got.read_packed(), plain.read_packed())


# --- 6. small refusals: p0 missing, generate --version, workflow config ----------------

def test_a_missing_p0_is_named():
    """Was: "p0 has 1 values but model_func takes 2 parameters" (None counted as a value)."""
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    x = np.linspace(0.0, 1.0, 10)
    with pytest.raises(ValueError, match=r"^p0 is required: one start value per parameter"):
        NLSQWrapper().fit(_line, x, x, p0=None)


@pytest.mark.parametrize("command", ["generate", "validate"])
def test_every_command_prints_the_version(command, capsys):
    """Was: `homodyne generate --version` -> "the following arguments are required:
    --output" (exit 2)."""
    from homodyne import __version__
    from homodyne.cli import main

    with pytest.raises(SystemExit) as stop:
        main([command, "--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"homodyne {__version__}\n"


def _workflow_config():
    import yaml

    root = Path(__file__).resolve().parents[1]
    return root, yaml.safe_load((root / "config/test.yaml").read_text())


def test_a_dataset_name_the_rules_cannot_use_is_refused_by_the_schema():
    """Was: `datasets."a/b"` passed the schema (run names had a pattern, datasets none)."""
    snakemake_utils = pytest.importorskip("snakemake.utils")
    from snakemake.exceptions import WorkflowError

    root, cfg = _workflow_config()
    cfg["datasets"]["a/b"] = next(iter(cfg["datasets"].values()))
    with pytest.raises(WorkflowError, match=r"'a/b' does not match"):
        snakemake_utils.validate(cfg, str(root / "workflow/schemas/config.schema.yaml"))


def test_a_nan_in_the_workflow_config_stops_the_plan():
    """Was: `physics.static: [.nan, ...]` passed the schema and the dry run; the generate
    job refused it only when it ran. common.smk (plain Python, read as the plan is made)
    now stops the plan."""
    root, cfg = _workflow_config()
    common = root / "workflow/rules/common.smk"
    code = compile(common.read_text(), str(common), "exec")
    exec(code, {"config": cfg})  # the test config passes
    cfg["physics"]["static"][0] = float("nan")
    with pytest.raises(ValueError, match=r"^config physics\.static\[0\]: must be a finite "
                                         r"number, got nan; fix the config$"):
        exec(code, {"config": cfg})


# --- 7. an interrupt during JAX's TPU probe ends the program at once --------------------

SIGNAL_AS_THE_TPU_TIMER_STARTS = """\
import os, signal, sys, threading, time
start = threading.Timer.start
def start_then_signal(self):
    start(self)
    if self.interval == 60.0:  # JAX's TPU-probe warning timer, before its try/finally
        os.write(2, b"sent\\n")
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1.0)
threading.Timer.start = start_then_signal
from homodyne.entry import main
sys.exit(main())
"""


def test_an_interrupt_as_jax_starts_its_tpu_probe_ends_the_program_at_once(tmp_path):
    """Was: Ctrl-C landing as JAX started its TPU-probe timer (cancelled in a finally the
    interrupt skipped) printed the one line, then Python waited 60 s for the timer before
    exiting (measured 64 s; now about 2 s)."""
    import subprocess
    import sys
    import time

    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-c", SIGNAL_AS_THE_TPU_TIMER_STARTS, "generate",
                           "--output", str(tmp_path / "g.h5"), "--frames", "20"],
                          capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t0
    if "sent" not in done.stderr:
        pytest.skip("this JAX starts no 60 s TPU-probe timer")
    assert done.returncode == 130, done.stderr[-2000:]
    assert done.stderr.splitlines()[-1] == ("homodyne: interrupted (Ctrl-C); results already "
                                            "in the output folder are untouched")
    assert took < 30, f"took {took:.0f} s to exit"


# --- 5. the power-law label belongs to the parameters reported -----------------------

def test_a_power_law_ending_inside_the_bounds_is_not_labelled_on_the_bounds():
    """Was (probe8 F10, with --restarts 4): "power law of alpha: on the bounds: the
    unbounded optimum (D0 = -9817, ...) is outside the bounds" beside D0 = 9986 +/- 78 with
    no "(at bound)" flag: the label of the internal-coordinate stage, before the finish in
    user coordinates ended inside the bounds."""
    from homodyne.optimization.driver import _report_edges
    from homodyne.optimization.result import FitResult

    class Coords:  # the static power law: (amplitude, exponent, offset)
        triples = [(2, 3, 4)]

        @staticmethod
        def at_log_edge(exponent):
            return False

    names = ("contrast", "offset", "D0", "alpha", "D_offset")
    outside = ("the unbounded optimum (D0 = -9817, alpha = -0.5, D_offset = 95) is outside "
               "the bounds")

    def reported(at_bounds):
        result = FitResult(parameter_names=names,
                           parameters=np.array([0.3, 1, 9986, -0.5, 95]),
                           uncertainties=np.full(5, 0.1), covariance=np.eye(5) * 0.01, cost=1.0,
                           n_points=500, reduced_chi_squared=1.0, converged=True,
                           stop_reason="converged", strategy="STANDARD", iterations=4,
                           passes=5, at_bounds=at_bounds)
        return _report_edges(result, Coords(), {3: outside}).power_law_optimum["alpha"]

    assert reported([]) == (f"interior (the internal-coordinate fit: {outside}; the finish "
                            "in user coordinates ended inside the bounds)")
    assert reported(["D0"]) == f"on the bounds: {outside}"  # as before, beside (at bound)
