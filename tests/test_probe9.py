"""Regression tests for probe9's findings (issue 12, a fresh round over this session's
changes): virtual datasets that crashed HDF5 or read fill values past the storage checks,
legitimate storage that must still be read, and long-double arrays in the Python API."""

import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from helpers import make_spec, small_two_time_file, truth_for

from homodyne.data import open_two_time
from homodyne.data.errors import DataFileError
from homodyne.data.synthetic import generate_synthetic

C2 = "/xpcs/twotime/correlation_map"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return small_two_time_file(tmp_path_factory.mktemp("p9small") / "b.h5")


def _crafted(small, tmp_path, edit):
    """A copy of ``small`` whose matrices ``edit(h5, key, values, folder)`` rewrote."""
    path = tmp_path / "x.h5"
    shutil.copy(small, path)
    with h5py.File(path, "a") as h5:
        for key in sorted(h5[C2]):
            values = h5[C2][key][()]
            del h5[C2][key]
            edit(h5, key, values, tmp_path)
    return path


def _layout(values, *maps):
    lay = h5py.VirtualLayout(shape=values.shape, dtype="f8")
    for where, source in maps:
        lay[where] = source
    return lay


def _maps_itself(h5, key, values, folder):
    src = h5py.VirtualSource(".", f"{C2}/{key}", shape=values.shape)
    h5[C2].create_virtual_dataset(key, _layout(values, (slice(None), src)), fillvalue=1.0)


def _maps_a_pair(h5, key, values, folder):
    there = h5py.VirtualSource(".", f"/loop/{key}", shape=values.shape)
    back = h5py.VirtualSource(".", f"{C2}/{key}", shape=values.shape)
    h5[C2].create_virtual_dataset(key, _layout(values, (slice(None), there)), fillvalue=1.0)
    h5.require_group("loop").create_virtual_dataset(
        key, _layout(values, (slice(None), back)), fillvalue=1.0)


def _error_in_a_child(call: str, timeout: int = 120) -> str:
    """What ``call`` prints as a DataFileError in a fresh interpreter: a crash or a hang
    there fails the test instead of the test session."""
    code = ("from homodyne.data import open_two_time\n"
            "from homodyne.data.errors import DataFileError\n"
            "from homodyne.data.multitau import read_multitau\n"
            f"try:\n    {call}\nexcept DataFileError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize("edit", [_maps_itself, _maps_a_pair])
def test_a_virtual_dataset_that_maps_itself_is_refused_not_a_segfault(small, tmp_path, edit):
    """Was: HDF5 recursed reading the matrix until the process died (exit 139, no word)."""
    path = _crafted(small, tmp_path, edit)
    out = _error_in_a_child(f"open_two_time({str(path)!r}).read_packed()")
    assert "is a virtual dataset that maps itself (through" in out


def _half_mapped_twice(h5, key, values, folder):
    n = values.shape[0] // 2
    with h5py.File(folder / "half.h5", "a") as src:
        src[key] = values[:n]
    part = h5py.VirtualSource("half.h5", key, shape=(n, values.shape[1]))
    h5[C2].create_virtual_dataset(key, _layout(values, (slice(0, n), part),
                                               (slice(0, n), part)), fillvalue=1.0)


def _beyond_the_source(h5, key, values, folder):
    n = values.shape[0]
    with h5py.File(folder / "same.h5", "a") as src:
        src[key] = values
    declared = h5py.VirtualSource("same.h5", key, shape=(2 * n, n))
    h5[C2].create_virtual_dataset(key, _layout(values, (slice(None), declared[n // 2: n // 2 + n])),
                                  fillvalue=1.0)


def _source_in_external_raw(h5, key, values, folder):
    raw = folder / f"{key}.bin"
    data = values.astype("<f8").tobytes()
    raw.write_bytes(data[: len(data) // 2])
    with h5py.File(folder / "ext.h5", "a") as src:
        src.create_dataset(key, shape=values.shape, dtype="<f8",
                           external=[(str(raw), 0, len(data))])
    whole = h5py.VirtualSource("ext.h5", key, shape=values.shape)
    h5[C2].create_virtual_dataset(key, _layout(values, (slice(None), whole)), fillvalue=1.0)


def _source_half_written(h5, key, values, folder):
    n = values.shape[0]
    with h5py.File(folder / "half_written.h5", "a") as src:
        src.create_dataset(key, shape=values.shape, dtype="f8", chunks=(5, n), fillvalue=1.0)
        src[key][: n // 2] = values[: n // 2]
    whole = h5py.VirtualSource("half_written.h5", key, shape=values.shape)
    h5[C2].create_virtual_dataset(key, _layout(values, (slice(None), whole)), fillvalue=1.0)


@pytest.mark.parametrize("edit, message", [
    (_source_in_external_raw, r"c2_00001 \(through its virtual source ext.h5:c2_00001\) keeps "
                              r"its values in the external raw file"),
    (_source_half_written, r"source half_written.h5:c2_00001 was never \(or only in part\) "
                           r"written"),
    (_half_mapped_twice, r"maps 450 of its 900 values \(the rest would read as its fill value"),
    (_beyond_the_source, r"maps values beyond the end of its source same.h5:c2_00001 "
                         r"\(shape \(30, 30\)"),
])
def test_virtual_mappings_that_read_fill_values_are_named(small, tmp_path, edit, message):
    """Was: a virtual source in external raw storage half as long as declared (zeros) or
    chunked and half written (fill values), and one region mapped twice counted as the whole
    matrix (the unmapped half): all fitted, exit 0; a mapping past the end of a source that
    holds as many values as mapped was called a truncated file."""
    with pytest.raises(DataFileError, match=message):
        open_two_time(_crafted(small, tmp_path, edit)).read_packed()


def _filters(h5, key, values, folder):
    h5[C2].create_dataset(key, data=values.astype(">f4"), chunks=(7, 30), compression="gzip",
                          shuffle=True, fletcher32=True)


def _rows_in_another_file(h5, key, values, folder):
    n, m = values.shape[0] // 2, values.shape[0]
    with h5py.File(folder / "rows.h5", "a") as src:
        src[f"{key}a"], src[f"{key}b"] = values[:n], values[n:]
    maps = [(slice(0, n), h5py.VirtualSource("rows.h5", f"{key}a", shape=(n, m))),
            (slice(n, m), h5py.VirtualSource("rows.h5", f"{key}b", shape=(m - n, m)))]
    h5[C2].create_virtual_dataset(key, _layout(values, *maps), fillvalue=np.nan)


def _nested_and_sliced(h5, key, values, folder):
    m = values.shape[0]
    big = np.zeros((m + 3, m + 3))
    big[:m, :m] = values
    h5[f"/raw/{key}"] = big
    inner = h5py.VirtualSource(".", f"/raw/{key}", shape=big.shape)[:m, :m]
    h5["raw"].create_virtual_dataset(f"v{key}", _layout(values, (slice(None), inner)))
    outer = h5py.VirtualSource(".", f"/raw/v{key}", shape=values.shape)
    h5[C2].create_virtual_dataset(key, _layout(values, (slice(None), outer)))


@pytest.mark.parametrize("edit", [_filters, _rows_in_another_file, _nested_and_sliced])
def test_legitimate_storage_is_still_read(small, tmp_path, edit):
    """Control for the checks above: compressed big-endian float32 data, a virtual dataset
    whose rows come from two sources in another file, and a virtual dataset of a virtual
    dataset of a slice are read as the plain file."""
    plain = open_two_time(small).read_packed()
    got = open_two_time(_crafted(small, tmp_path, edit)).read_packed()
    tol = 1e-7 if edit is _filters else 0
    np.testing.assert_allclose(got, plain, rtol=tol, atol=0)


def test_the_api_takes_a_long_double_array():
    """Was: ``ydata.astype(np.longdouble)`` -> JAX TypeError "Dtype float128 is not a valid
    JAX array type"; it is fitted as float64."""
    import jax.numpy as jnp

    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    def model(x, a, b):
        return a * jnp.exp(-b * x)

    x = np.linspace(0.0, 5.0, 300)
    y = 2.0 * np.exp(-1.3 * x) + 0.01 * np.random.default_rng(1).standard_normal(x.size)
    kw = {"p0": [1.0, 1.0], "bounds": ([0.0, 0.0], [10.0, 10.0])}
    ref = NLSQWrapper().fit(model, x, y, **kw)
    got = NLSQWrapper().fit(model, x.astype(np.longdouble), y.astype(np.longdouble),
                            sigma=np.full(x.size, 0.01, np.longdouble), **kw)
    np.testing.assert_allclose(got.parameters, ref.parameters, rtol=1e-7)


@pytest.mark.parametrize("name", ["fit.log", "parameters.json"])
def test_a_config_kept_in_the_output_folder_under_a_result_name_is_not_overwritten(
        small, tmp_path, name):
    """The config stored in the output folder as fit.log (or as JSON, parameters.json) and
    run there with --overwrite: the run's log / marker replaced the config, without a word."""
    from homodyne.config import load_config
    from homodyne.output import OutputDirError
    from homodyne.pipeline import run_from_config

    out = tmp_path / "out"
    out.mkdir()
    text = (f"analysis_mode: static\nexperimental_data:\n  file_path: {small}\n"
            "initial_parameters:\n  values: [8000.0, -0.4, 80.0]\noutput:\n  plots: false\n")
    (out / name).write_text(text)
    with pytest.raises(OutputDirError, match=rf"out/{name}, a result file this run writes"):
        run_from_config(load_config(out / name), output_dir=out, overwrite=True)
    assert (out / name).read_text() == text


@pytest.mark.parametrize("strategy", ["standard", "streaming"])
def test_one_absurd_finite_value_is_a_data_error_naming_it(tmp_path, strategy):
    """Was: one c2 value of 1e200 (finite, so past the NaN/inf checks) among 1,560 points ->
    exit 3 "the model overflows there; check p0, bounds and the model function"."""
    from homodyne.config import load_config
    from homodyne.pipeline import run_from_config

    spec = make_spec("static", n_frames=40, n_phi=2)
    path = tmp_path / "d.h5"
    generate_synthetic(path, spec, truth_for(spec), noise_sigma=0.01, seed=3, dtype="float64")
    with h5py.File(path, "a") as h5:
        h5[f"{C2}/c2_00002"][5, 10] = 1e200
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"analysis_mode: static\nexperimental_data:\n  file_path: {path}\n"
                   "initial_parameters:\n  values: [8000.0, -0.4, 80.0]\n"
                   f"performance:\n  strategy_override: {strategy}\n  batch_size: 500\n"
                   "output:\n  plots: false\n")
    with pytest.raises(DataFileError, match=r"c2_00002 holds 1e\+200 at frames \(6, 11\): a "
                                            r"two-time correlation is of order 1"):
        run_from_config(load_config(cfg), output_dir=tmp_path / "out")
    assert not (tmp_path / "out" / "parameters.json").exists()


@pytest.mark.parametrize("tier", [None, "streaming"])
def test_the_api_names_a_finite_ydata_value_whose_square_overflows(tier):
    """Was: one ydata value of 1e200 (no sigma) -> NLSQNumericalError "the model overflows
    there; check p0, bounds and the model function"; streamed in batches of 100, its batch was
    dropped with a warning and the fit 'converged' on 1,900 of 2,000 points."""
    import jax.numpy as jnp

    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    def model(x, a, b):
        return a * jnp.exp(-b * x)

    x = np.linspace(0.0, 5.0, 2000)
    y = 2.0 * np.exp(-0.7 * x)
    y[7] = 1e200
    wrapper = NLSQWrapper(strategy_override=tier, batch_size=100 if tier else None)
    with pytest.raises(ValueError, match=r"ydata\[7\] = 1e\+200: values beyond 1e\+100 cannot "
                                         r"be fitted"):
        wrapper.fit(model, x, y, p0=[1.0, 1.0], bounds=([0.0, 0.0], [10.0, 10.0]))


def test_a_multitau_start_time_that_maps_itself_is_refused_not_a_segfault(real_data, tmp_path):
    """The multi-tau reader read /entry/start_time without the storage check the other
    datasets get: a virtual start_time mapping itself killed the process (exit -11)."""
    from homodyne.data.multitau import START_TIME

    path = tmp_path / "g.hdf"
    shutil.copy(sorted((real_data / "aps_8idi_llps_aging").glob("*.hdf"))[0], path)
    with h5py.File(path, "a") as h5:
        dtype = h5[START_TIME].dtype
        del h5[START_TIME]
        lay = h5py.VirtualLayout(shape=(1,), dtype=dtype)
        lay[...] = h5py.VirtualSource(".", START_TIME, shape=(1,))
        h5.create_virtual_dataset(START_TIME, lay)
    out = _error_in_a_child(f"read_multitau({str(path)!r})")
    assert "/entry/start_time is a virtual dataset that maps itself" in out


def test_integral_floats_are_whole_numbers_as_in_the_config(small):
    """Was: open_two_time(start_frame=3.0) -> "start_frame must be a whole number, got 3.0"
    (the config's start_frame: 3.0 is taken); ModelSpec(n_frames=10.0) the same."""
    from homodyne.model import ModelSpec

    got = open_two_time(small, start_frame=3.0, end_frame=np.float64(20))
    want = open_two_time(small, start_frame=3, end_frame=20)
    assert (got.first_frame, got.n_frames) == (want.first_frame, want.n_frames) == (3, 18)
    assert ModelSpec(n_frames=10.0).n_points == ModelSpec(n_frames=10).n_points == 45
    for bad in (2.5, float("nan"), True, "3"):
        with pytest.raises(ValueError, match=f"start_frame must be a whole number, got {bad!r}"):
            open_two_time(small, start_frame=bad)


def _absolute_source(h5, key, values, folder):
    (folder / "beamline").mkdir(exist_ok=True)
    with h5py.File(folder / "beamline" / "src.h5", "a") as src:
        src[key] = values
    full = h5py.VirtualSource(str(folder / "beamline" / "src.h5"), key, shape=values.shape)
    h5[C2].create_virtual_dataset(key, _layout(values, (slice(None), full)), fillvalue=np.nan)


def test_a_virtual_dataset_copied_with_its_sources_is_read_where_hdf5_finds_them(
        small, tmp_path):
    """A file naming its sources by absolute paths of the machine that wrote it, copied with
    them into one folder: HDF5 reads the copies next to it, the check said "source file
    /.../src.h5 is missing; copy it next to the file" (where it was). HDF5_VDS_PREFIX too."""
    path = _crafted(small, tmp_path, _absolute_source)
    plain = open_two_time(small).read_packed()
    shutil.move(tmp_path / "beamline" / "src.h5", tmp_path / "src.h5")
    np.testing.assert_array_equal(open_two_time(path).read_packed(), plain)
    (tmp_path / "elsewhere").mkdir()
    shutil.move(tmp_path / "src.h5", tmp_path / "elsewhere" / "src.h5")
    with pytest.raises(DataFileError, match="beamline/src.h5 is missing"):
        open_two_time(path)
    code = ("from homodyne.data import open_two_time\n"
            f"print(open_two_time({str(path)!r}).read_packed().tolist())\n")
    env = {**os.environ, "HDF5_VDS_PREFIX": "${ORIGIN}/elsewhere"}  # HDF5 reads it at start
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_array_equal(np.array(json.loads(done.stdout)), plain)


def test_a_virtual_source_that_is_a_fifo_is_refused_not_waited_on(small, tmp_path):
    """Was: the storage check opened the source to count its values: a FIFO of the source's
    name blocked the run for ever (as probe7's checkpoint FIFOs did)."""
    path = _crafted(small, tmp_path, _rows_in_another_file)
    (tmp_path / "rows.h5").unlink()
    os.mkfifo(tmp_path / "rows.h5")
    out = _error_in_a_child(f"open_two_time({str(path)!r})", timeout=60)
    assert "rows.h5 is not a regular file (a pipe or device)" in out
