"""Faults found by a sixth round of adversarial probing (issue 12, probe7): re-sealed
checkpoints whose next batch, sums, dtypes, version or exclusions were edited, FIFOs named
like a checkpoint or a lock file, files whose truth attributes or storage crash or fool the
reader (see /work/notes/probe7_findings.md)."""

import io
import os
import shutil
import threading

import h5py
import numpy as np
import pytest
from helpers import bounds_for, make_spec, start_for, truth_for

from homodyne import __version__
from homodyne.data import open_two_time
from homodyne.data.synthetic import generate_synthetic
from homodyne.optimization import checkpoint_manager as cm
from homodyne.optimization.checkpoint_manager import CheckpointManager
from homodyne.optimization.checkpoint_session import CheckpointSession
from homodyne.optimization.nlsq_wrapper import NLSQWrapper
from homodyne.output import DirectoryLock, OutputDirError

BATCH = 1500  # 14,280 points: 10 batches a pass


def _synthetic(folder, name, n_frames):
    spec = make_spec("static", n_frames=n_frames, n_phi=2)
    generate_synthetic(folder / name, spec, truth_for(spec), noise_sigma=0.01, seed=3)
    return folder / name


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _synthetic(tmp_path_factory.mktemp("p7data"), "a.h5", 120).parent


def _fit(path, ck):
    src = open_two_time(path)
    spec = src.model_spec()
    p0 = start_for(spec, truth_for(spec))
    w = NLSQWrapper(strategy_override="streaming", batch_size=BATCH,
                    checkpoint_config={"enable_checkpoints": True, "checkpoint_dir": str(ck),
                                       "checkpoint_frequency": 1,
                                       "checkpoint_min_interval_s": 0.0,
                                       "keep_last_checkpoints": 10**6})
    with src:
        return w.fit_two_time(src, spec, p0, bounds_for(spec))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted fit and every checkpoint it wrote: one after every batch (a save
    is skipped while the previous one is still being written, so under load the batches
    saved varied from run to run; here each waits for the one before)."""
    ck = tmp_path_factory.mktemp("p7ck")
    due = CheckpointSession.due

    def due_after_the_previous_save(session, batches_done, clock):
        if session._pending is not None:
            session._pending.result()
        return due(session, batches_done, clock)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CheckpointSession, "due", due_after_the_previous_save)
        return _fit(data / "a.h5", ck), ck


def _reseal(path, edit) -> None:
    """Edit a checkpoint's fields and seal it again (a valid digest, this fit's fingerprint):
    what another writer, another version or a hand edit leaves."""
    raw = path.read_bytes()
    size = len(raw) - cm.TRAILER_BYTES
    fp = raw[size + len(cm.TRAILER_MAGIC): len(raw) - 32].rstrip(b" ").decode()
    body = io.BytesIO(raw[:size])
    with h5py.File(body, "a") as h5:
        edit(h5)
    path.write_bytes(body.getvalue())
    cm._append_trailer(path, fp)


def _mid_pass(ck):
    """A checkpoint written inside a pass after the first: (path, next batch)."""
    for path in CheckpointManager(ck).list_checkpoints():
        with h5py.File(path, "r") as h5:
            nb, n = int(h5.attrs["next_batch"]), int(h5.attrs["n_passes"])
            if n >= 1 and "partial" in h5 and 2 <= nb <= 7:
                return path, nb
    raise AssertionError("no mid-pass checkpoint written")


@pytest.mark.parametrize("next_batch", [9, 1], ids=["skips_batches", "sums_batches_twice"])
def test_a_next_batch_edited_to_another_valid_batch_is_not_resumed(
        data, reference, tmp_path, next_batch, caplog):
    """A re-sealed checkpoint whose next_batch was edited to another batch of the pass (9 of
    10: eight batches skipped; 1: batches summed twice) was resumed: wrong parameters, "only
    36% of the points are finite", exit 0. Its partial sums must prove which batches they hold:
    the pass is recomputed and the fit ends bit for bit as the uninterrupted one."""
    ref, ck_ref = reference
    src, nb = _mid_pass(ck_ref)
    ck = tmp_path / "ck"
    ck.mkdir()
    shutil.copy(src, ck / src.name)
    assert nb != next_batch
    _reseal(ck / src.name, lambda h5: h5.attrs.__setitem__("next_batch", next_batch))
    with caplog.at_level("WARNING", logger="homodyne.engine"):
        again = _fit(data / "a.h5", ck)
    assert again.streaming_diagnostics["resumed_from_batch"] is not None
    assert f"record {nb} batches summed, not the {next_batch} before the next batch" in \
        caplog.text
    np.testing.assert_array_equal(again.parameters, ref.parameters)
    assert again.n_points == ref.n_points


def _nan_h(h5):
    h5["pass_H"][0, 0, 0] = np.nan


def _f32_h(h5):
    h = h5["pass_H"][()]
    del h5["pass_H"]
    h5["pass_H"] = h.astype(np.float32)


def _exclude_all(h5):
    del h5["excluded_full"]
    h5["excluded_full"] = np.arange(10)


@pytest.mark.parametrize("edit, reason", [
    (_nan_h, "pass_H is not finite"),
    (lambda h5: h5["pass_cost"].__setitem__(0, np.nan), "pass_cost holds NaN"),
    (_f32_h, "pass_H is stored as float32, not as written"),
    (lambda h5: h5.attrs.__setitem__("homodyne_version", "9.9.9"),
     f"written by homodyne 9.9.9, this is {__version__}"),
    (_exclude_all, "excluded_full lists 10 batches that its passes do not count as failed"),
])
def test_a_resealed_checkpoint_with_sums_or_exclusions_it_cannot_hold_is_skipped(
        data, reference, tmp_path, edit, reason, caplog):
    """NaN in a stored H: LinAlgError traceback; NaN cost: "fit failed ... check p0"; H of
    float32 or another version's file: resumed to other parameters; every batch excluded:
    "only 0 of the points are finite". Each is now refused for the previous checkpoint."""
    ref, ck_ref = reference
    src, _ = _mid_pass(ck_ref)
    files = CheckpointManager(ck_ref).list_checkpoints()
    ck = tmp_path / "ck"
    ck.mkdir()
    for path in files[: files.index(src) + 1]:
        shutil.copy(path, ck / path.name)
    _reseal(ck / src.name, edit)
    with caplog.at_level("WARNING", logger="homodyne.checkpoint"):
        again = _fit(data / "a.h5", ck)
    assert reason in caplog.text and "falling back to the previous one" in caplog.text
    np.testing.assert_array_equal(again.parameters, ref.parameters)


def test_a_folder_named_like_an_old_temporary_checkpoint_does_not_fail_every_save(data,
                                                                                 tmp_path):
    """A folder ``.homodyne_state_batch_x.tmp`` in checkpoint_dir: pruning raised
    IsADirectoryError after each save, so every checkpoint was reported "not written" (and a
    stop said checkpoints were off) although the files were there."""
    ck = tmp_path / "ck"
    (ck / ".homodyne_state_batch_x.tmp").mkdir(parents=True)
    diag = _fit(data / "a.h5", ck).streaming_diagnostics
    assert diag["checkpoint_errors"] == [] and diag["checkpoint_saves"] > 0
    assert (ck / ".homodyne_state_batch_x.tmp").is_dir()


def _finishes(fn, seconds=20.0):
    """Run ``fn`` on a thread; whether it returned (a FIFO open blocks it for ever)."""
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("value", fn()), daemon=True)
    t.start()
    t.join(seconds)
    return not t.is_alive(), out.get("value")


def test_a_fifo_named_like_a_checkpoint_does_not_hang_the_search(reference, tmp_path):
    """``mkfifo ck/homodyne_state_batch_9999.h5`` (or a link to a FIFO): the run hung for ever
    in open() looking for checkpoints, and SIGTERM/Ctrl-C could not stop it."""
    _, ck_ref = reference
    ck = tmp_path / "ck"
    shutil.copytree(ck_ref, ck)
    newest = CheckpointManager(ck).list_checkpoints()[-1]
    os.mkfifo(ck / "homodyne_state_batch_99999.h5")
    os.symlink(ck / "homodyne_state_batch_99999.h5", ck / "homodyne_state_batch_99998.h5")
    done, found = _finishes(CheckpointManager(ck).find_latest_valid_checkpoint)
    assert done and found == newest
    done, owner = _finishes(lambda: cm._owner(ck / "homodyne_state_batch_99999.h5"))
    assert done and owner is None


def test_a_fifo_as_the_lock_file_is_one_clear_error(tmp_path):
    """A FIFO named .homodyne.lock / .lock: io.UnsupportedOperation traceback, exit 1."""
    os.mkfifo(tmp_path / ".lock")
    done, _ = _finishes(lambda: pytest.raises(OutputDirError, DirectoryLock(tmp_path / ".lock")
                                              .acquire))
    assert done
    with pytest.raises(OutputDirError, match=r"\.lock is not a regular file \(a pipe or "
                                             r"device\); remove it"):
        DirectoryLock(tmp_path / ".lock").acquire()


# --- data files ---------------------------------------------------------------------------

C2 = "/xpcs/twotime/correlation_map"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return _synthetic(tmp_path_factory.mktemp("p7small"), "b.h5", 40)


def _crafted(small, tmp_path, edit, name="x.h5"):
    path = tmp_path / name
    shutil.copy(small, path)
    with h5py.File(path, "a") as h5:
        for key in sorted(h5[C2]):
            edit(h5, key, h5[C2][key][()])
    return path


@pytest.mark.parametrize("attrs, why", [
    ({"true_parameters": np.array([1.0, 2.0])}, "zip() argument 2 is shorter"),
    ({"parameter_names": np.array([b"contrast[x]"] + [b"D0"] * 6)},  # fixed-length text:
     "invalid literal for int()"),  # variable-length labels are not read (heap26)
    ({"phi_deg": np.bytes_(b"north")}, "could not convert string to float"),
    ({"true_parameters": np.ones(7) * (1 + 1j)}, "type complex128"),
])
def test_synthetic_truth_attributes_of_another_shape_cost_a_warning_not_the_fit(
        small, tmp_path, attrs, why, caplog):
    """/homodyne/synthetic attributes of odd shape or type (another writer's, an edit) raised
    a traceback after the whole fit, and its results were never written."""
    from homodyne.pipeline import _truth

    def edit(h5, key, _):
        h5["/homodyne/synthetic"].attrs.update(attrs)

    src = open_two_time(_crafted(small, tmp_path, edit))
    with caplog.at_level("WARNING", logger="homodyne"):
        assert _truth(src, src.model_spec()) is None
    assert why in caplog.text and "it is not listed in parameters.json" in caplog.text
    assert _truth(open_two_time(small), None)["D0"] == truth_for(src.model_spec())[-3]


OPEN_HUGE = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from homodyne.data import open_two_time
from homodyne.data.errors import DataFileError
try:
    open_two_time(sys.argv[1])
except DataFileError as exc:
    print(exc)
"""


def test_a_matrix_declaring_a_billion_frames_is_refused_before_a_row_is_read(small, tmp_path):
    """An 80 kB file declaring 2^30 x 2^30 matrices (never written): the value probe read a
    whole row first - 8 GiB, a MemoryError traceback (or the OOM killer)."""
    import subprocess
    import sys

    def edit(h5, key, _):
        del h5[C2][key]
        h5[C2].create_dataset(key, shape=(2**30, 2**30), dtype="f8", chunks=(1, 1 << 16),
                              fillvalue=1.0)

    path = _crafted(small, tmp_path, edit)
    proc = subprocess.run([sys.executable, "-c", OPEN_HUGE, str(path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-800:]
    assert "c2_00001 declares 1,073,741,824 x 1,073,741,824 values, more frames than any " \
        "two-time result holds (at most 1,048,576)" in proc.stdout


def _external_half(h5, key, values):
    raw = os.path.join(os.path.dirname(h5.filename), f"{key}.bin")
    values = values.astype("<f8")
    with open(raw, "wb") as fh:
        fh.write(values.tobytes()[: values.nbytes // 2])
    del h5[C2][key]
    h5[C2].create_dataset(key, shape=values.shape, dtype="<f8",
                          external=[(raw, 0, values.nbytes)])


def _virtual_half(h5, key, values):
    h5[f"/raw_{key}"] = values[:, : values.shape[1] // 2]
    del h5[C2][key]
    layout = h5py.VirtualLayout(shape=values.shape, dtype="f8")
    layout[:, : values.shape[1] // 2] = h5py.VirtualSource(".", f"/raw_{key}",
                                                           shape=(values.shape[0],
                                                                  values.shape[1] // 2))
    h5[C2].create_virtual_dataset(key, layout, fillvalue=1.0)


def _virtual_source_short(h5, key, values):
    src = os.path.join(os.path.dirname(h5.filename), f"src_{key}.h5")
    with h5py.File(src, "w") as other:
        other["m"] = values[: values.shape[0] // 2]
    del h5[C2][key]
    layout = h5py.VirtualLayout(shape=values.shape, dtype="f8")
    layout[:] = h5py.VirtualSource(src, "m", shape=values.shape)
    h5[C2].create_virtual_dataset(key, layout, fillvalue=np.nan)


def _filter_missing(h5, key, values):
    del h5[C2][key]
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_chunk(values.shape)
    dcpl.set_filter(32001, h5py.h5z.FLAG_OPTIONAL, (0, 0, 0, 0, 5, 1, 1))
    dsid = h5py.h5d.create(h5[C2].id, key.encode(), h5py.h5t.IEEE_F64LE,
                           h5py.h5s.create_simple(values.shape), dcpl=dcpl)
    dsid.write_direct_chunk((0, 0), values.astype("<f8").tobytes())


@pytest.mark.parametrize("edit, message", [
    (_external_half, r"c2_00001 keeps its values in the external raw file .*c2_00001\.bin; "
                     r"external storage is not read"),
    (_virtual_half, r"c2_00001 is a virtual dataset that maps 800 of its 1,600 values \(the "
                    r"rest would read as its fill value\)"),
    (_virtual_source_short, r"c2_00001 is a virtual dataset whose source .*src_c2_00001\.h5:m "
                            r"holds 800 of the 1,600 values mapped"),
    (_filter_missing, r"c2_00001: it is compressed with HDF5 filter 32001, which this "
                      r"installation lacks; install the filter's plugin"),
], ids=["external_raw_half", "virtual_half_mapped", "virtual_source_short", "filter_missing"])
def test_storage_that_would_read_fill_values_or_blame_truncation_is_named(
        small, tmp_path, edit, message):
    """External raw storage half as long as declared, a virtual dataset mapping half the
    matrix or a source holding half of it: the rest was read as zeros / the fill value and
    fitted (exit 0); a filter this HDF5 lacks was called a truncated file."""
    from homodyne.data.errors import DataFileError

    with pytest.raises(DataFileError, match=message):
        open_two_time(_crafted(small, tmp_path, edit))


def test_a_lower_triangular_npy_matrix_is_read_as_its_upper_mirror(small, tmp_path):
    """A .npy matrix stored below the diagonal (zeros above, as the HDF5 reader accepts):
    its empty upper triangle was fitted - contrast and offset on their bounds, exit 0."""
    with h5py.File(small) as h5:
        m = h5[f"{C2}/c2_00001"][()]
    full = np.triu(m) + np.triu(m, 1).T
    np.save(tmp_path / "upper.npy", np.triu(full))
    np.save(tmp_path / "lower.npy", np.tril(full))
    upper = open_two_time(tmp_path / "upper.npy").read_packed()
    lower = open_two_time(tmp_path / "lower.npy").read_packed()
    assert np.all(upper != 0)
    np.testing.assert_array_equal(lower, upper)


G2 = "/xpcs/multitau/normalized_g2"


@pytest.mark.parametrize("kind", ["external_raw_half", "virtual_half_mapped"])
def test_multitau_g2_in_storage_that_reads_fill_values_is_refused(real_data, tmp_path, kind):
    """A multi-tau g2 kept in an external raw file half as long as declared (zeros) or a
    virtual dataset mapping half of it (fill value 1.2): fitted silently, exit 0, "27 with a
    resolved rate"."""
    from homodyne.data.errors import DataFileError
    from homodyne.data.multitau import read_multitau

    src = sorted((real_data / "aps_8idi_llps_aging").glob("*.hdf"))[0]
    path = tmp_path / "g.hdf"
    shutil.copy(src, path)
    with h5py.File(path, "a") as h5:
        g2 = h5[G2][()].astype("<f8")
        del h5[G2]
        if kind == "external_raw_half":
            (tmp_path / "g2.bin").write_bytes(g2.tobytes()[: g2.nbytes // 2])
            h5.create_dataset(G2, shape=g2.shape, dtype="<f8",
                              external=[(str(tmp_path / "g2.bin"), 0, g2.nbytes)])
            message = "normalized_g2 keeps its values in the external raw file"
        else:
            half = g2.shape[1] // 2
            h5["/raw_g2"] = g2[:, :half]
            layout = h5py.VirtualLayout(shape=g2.shape, dtype="f8")
            layout[:, :half] = h5py.VirtualSource(".", "/raw_g2", shape=(g2.shape[0], half))
            h5.create_virtual_dataset(G2, layout, fillvalue=1.2)
            message = f"normalized_g2 is a virtual dataset that maps {g2.shape[0] * half:,} of"
    with pytest.raises(DataFileError, match=message):
        read_multitau(path)


def test_a_data_file_named_like_a_result_file_in_the_output_folder_is_not_overwritten(
        small, tmp_path):
    """The data copied into the output folder as fit.h5 and fitted there with --overwrite:
    the results replaced the data file (measured data lost, the rerun then failed)."""
    from homodyne.config import load_config
    from homodyne.pipeline import run_from_config

    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(small, out / "fit.h5")
    before = (out / "fit.h5").read_bytes()
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("analysis_mode: static\nexperimental_data:\n  file_path: out/fit.h5\n"
                        "initial_parameters:\n  values: [8000.0, -0.4, 80.0]\n"
                        "output:\n  plots: false\n")
    with pytest.raises(OutputDirError, match=r"out/fit\.h5, a result file this run writes: the "
                                             r"results would replace it"):
        run_from_config(load_config(cfg_path), output_dir=out, overwrite=True)
    assert (out / "fit.h5").read_bytes() == before
