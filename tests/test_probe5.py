"""probe5 (issue 12): files that declare more than they hold, matrices never written, a
full disk at a folder's lock, standard output that cannot be written, checkpoints whose
fields are not what this version reads."""

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import make_spec, tiny_tmpfs, truth_for

from homodyne.data import DataFileError, generate_synthetic, open_two_time
from homodyne.data.multitau import read_multitau

C2 = "/xpcs/twotime/correlation_map"
REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real"
MULTITAU = REAL / "aps_8idi_llps_aging" / \
    "Average_B0147_S3_7_300C10p_att00_Rq0_00001_00200_results.hdf"


@pytest.fixture(scope="module")
def base_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("p5") / "base.h5"
    spec = make_spec(n_frames=40, n_phi=2)
    generate_synthetic(path, spec, truth_for(spec), noise_sigma=0.01, seed=5)
    return path


def _variant(base, tmp_path, edit) -> str:
    path = tmp_path / "v.h5"
    shutil.copy(base, path)
    with h5py.File(path, "a") as f:
        edit(f)
    return str(path)


def _replace(f, name, **kw):
    del f[name]
    f.create_dataset(name, **kw)


HUGE = dict(shape=(2**31,), chunks=(2**20,))  # 16 GiB declared, nothing written


@pytest.mark.parametrize("edit, message", [
    (lambda f: _replace(f, "/xpcs/qmap/dynamic_v_list_dim0", dtype="f8", fillvalue=0.0054,
                        **HUGE),
     "/xpcs/qmap/dynamic_v_list_dim0 declares 2,147,483,648 values, at most 1,000,000"),
    (lambda f: _replace(f, "/xpcs/qmap/dynamic_v_list_dim1", dtype="f8", **HUGE),
     "/xpcs/qmap/dynamic_v_list_dim1 declares 2,147,483,648 values"),
    (lambda f: _replace(f, "/xpcs/twotime/processed_bins", dtype="i8", fillvalue=1, **HUGE),
     "/xpcs/twotime/processed_bins declares 2,147,483,648 values"),
    (lambda f: _replace(f, "/entry/instrument/detector_1/frame_time", dtype="f8",
                        fillvalue=0.1, **HUGE),
     "/entry/instrument/detector_1/frame_time declares 2,147,483,648 values, at most 1,000,000"),
    (lambda f: (f.__delitem__("/entry/instrument/detector_1/frame_time"),
                f.create_group("/entry/instrument/detector_1/frame_time")),
     "/entry/instrument/detector_1/frame_time is a group, expected a dataset"),
    (lambda f: (f.__delitem__("/entry/instrument/detector_1/frame_time"),
                f.__setitem__("/entry/instrument/detector_1/frame_time",
                              h5py.ExternalLink("elsewhere.h5", "/t"))),
     "frame_time is an external link to elsewhere.h5"),
])
def test_small_maps_are_bounded_before_they_are_read(base_file, tmp_path, edit, message):
    """A 70 kB file declaring 2^31 q values (or bins, phi, frame times) was read whole:
    16 GiB allocated, an ArrayMemoryError traceback (or the OOM killer); a frame_time
    group was a TypeError traceback."""
    path = _variant(base_file, tmp_path, edit)
    with pytest.raises(DataFileError) as err:
        open_two_time(path, q=0.0054)
    assert message in str(err.value)


def _quad_float_matrices(f):
    t = h5py.h5t.IEEE_F64LE.copy()
    t.set_size(16)
    t.set_precision(128)
    t.set_fields(127, 112, 15, 0, 112)
    t.set_ebias(16383)
    for name in list(f[C2]):
        del f[C2][name]
        h5py.h5d.create(f[C2].id, name.encode(), t, h5py.h5s.create_simple((40, 40)))


def test_a_float_type_numpy_cannot_hold_is_named(base_file, tmp_path):
    """IEEE quad matrices: ValueError traceback from h5py's dtype before."""
    path = _variant(base_file, tmp_path, _quad_float_matrices)
    with pytest.raises(DataFileError, match="c2_00001 has an HDF5 data type NumPy cannot "
                                            "hold"):
        open_two_time(path, q=0.0054)


def _grown(f):  # a resizable matrix grown by 8 frames, the new rows never written
    for name in list(f[C2]):
        d = f[C2][name][()]
        del f[C2][name]
        ds = f[C2].create_dataset(name, data=d, chunks=(8, 8), maxshape=(None, None))
        ds.resize((48, 48))


def _declared_only(f):  # 10^6 frames declared, nothing written, fill value 1.3
    for name in list(f[C2]):
        del f[C2][name]
        f[C2].create_dataset(name, shape=(10**6, 10**6), dtype="f4", chunks=(256, 256),
                             fillvalue=1.3)


def _contiguous_unwritten(f):
    for name in list(f[C2]):
        del f[C2][name]
        f[C2].create_dataset(name, shape=(40, 40), dtype="f8", fillvalue=1.1)


@pytest.mark.parametrize("edit, message", [
    (_grown, "c2_00001 is incomplete: 6 of the 21 chunks of its upper part were never "
             "written"),
    (_declared_only, "c2_00001 is incomplete: 15,264,649 of the 15,264,649 chunks of its "
                     "full part were never written"),
    (_contiguous_unwritten, "c2_00001 is incomplete: none of it was ever written"),
])
def test_matrices_never_written_are_refused_not_read_as_fill_values(base_file, tmp_path, edit,
                                                                    message):
    """HDF5 returns the fill value where nothing was written: 8 rows of zeros were fitted
    (exit 4, offset and D_offset on their bounds), and a 47 kB file was accepted as
    999,999,000,000 points of 1.3 and the fit started reading them."""
    path = _variant(base_file, tmp_path, edit)
    with pytest.raises(DataFileError) as err:
        open_two_time(path, q=0.0054)
    assert message in str(err.value)
    assert "the writer stopped early" in str(err.value)


def test_upper_lower_and_partial_chunk_layouts_that_are_complete_are_read(base_file, tmp_path):
    """The check counts the chunks of the stored half only: a lower-stored matrix in
    non-square chunks with its empty upper chunks never written reads as the original."""
    want = open_two_time(base_file, q=0.0054).read_packed()

    def lower(f):
        for name in list(f[C2]):
            m = f[C2][name][()].T
            del f[C2][name]
            ds = f[C2].create_dataset(name, shape=m.shape, dtype=m.dtype, chunks=(16, 8))
            for i in range(0, 40, 16):
                for j in range(0, 40, 8):
                    if np.any(m[i:i + 16, j:j + 8]):
                        ds[i:i + 16, j:j + 8] = m[i:i + 16, j:j + 8]

    src = open_two_time(_variant(base_file, tmp_path, lower), q=0.0054)
    assert src.storage == "lower"
    assert np.array_equal(src.read_packed(), want)


@pytest.mark.skipif(not MULTITAU.exists(), reason="measured data not present")
def test_a_multitau_start_time_declaring_billions_of_values_is_not_read(tmp_path):
    """/entry/start_time of 2^31 values: MemoryError traceback (16 GiB) before."""
    path = tmp_path / "m.hdf"
    shutil.copy(MULTITAU, path)
    with h5py.File(path, "a") as f:
        _replace(f, "/entry/start_time", dtype="f8", **HUGE)
    with pytest.raises(DataFileError, match="start_time holds 2,147,483,648 values; expected "
                                            "one date/time"):
        read_multitau(path)


def test_a_full_disk_at_the_lock_is_one_clear_error(tmp_path):
    """The lock file is created, writing the pid into it fails: an OSError traceback
    (exit 1) for the output and the checkpoint folder before."""
    from homodyne.output import DirectoryLock, OutputDirError

    with tiny_tmpfs(tmp_path, "64k") as mnt:
        filler = mnt / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        lock = DirectoryLock(mnt / ".homodyne.lock")
        with pytest.raises(OutputDirError, match=r"cannot write the lock file .*\.homodyne\.lock "
                                                 r"\(No space left on device\); free space"):
            lock.acquire()
        filler.unlink()
        lock.acquire()  # with space again the same folder is taken
        lock.release()


def test_standard_output_that_cannot_be_written_keeps_the_exit_status(tmp_path):
    """`homodyne generate ... > /dev/full` (or a reader that went away): the file was
    written, then the summary line raised OSError: traceback, exit 1."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    exe = Path(sys.executable).with_name("homodyne")
    out = tmp_path / "g.h5"
    with open("/dev/full", "w") as full:
        proc = subprocess.run([str(exe), "generate", "--output", str(out), "--frames", "20"],
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "homodyne: warning: standard output cannot be written (No space left on device); "
        "the rest of it is dropped"]
    assert open_two_time(out).n_frames == 20


def _fit_state(x, **edits):
    from homodyne.optimization.checkpoint_session import PassRecord, checkpoint_state
    from homodyne.optimization.problems import NormalEquations

    ne = NormalEquations(1.5, np.eye(x.size), np.ones(x.size), 100)
    state = checkpoint_state([PassRecord("full", x, ne, 0.1, 4, failed=1)], solver=None,
                             n_failed=1,
                             recovery_actions=[], excluded={"coarse": set(), "full": {3}},
                             stage="full", x=x, next_batch=2,
                             partial={"cost": np.float64(0.5), "n": np.int64(10)})
    for key, value in edits.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    return state


@pytest.mark.parametrize("edit, reason", [
    ({"pass_x": None}, "fields ['pass_x'] are missing (written by another version?)"),
    ({"current_stage": None}, "fields ['current_stage'] are missing"),
    ({"pass_failed": np.zeros(0, np.int64)}, "pass_failed has shape (0,), expected 1 passes"),
    ({"current_stage": np.arange(3)}, "current_stage = array([0, 1, 2]) is not a stage"),
    ({"excluded_full": np.array([0.5])}, "excluded_full is not a list of batch numbers"),
])
def test_a_sealed_checkpoint_this_version_cannot_resume_is_skipped_for_the_previous(
        tmp_path, edit, reason, caplog):
    """A checkpoint whose digest and fingerprint are right but whose fields are not what
    this version reads (another version's layout, an edit re-sealed) was resumed: a
    KeyError/IndexError traceback, or batches skipped and a wrong fit."""
    from homodyne.optimization.checkpoint_manager import CheckpointManager
    from homodyne.optimization.checkpoint_session import CheckpointSession

    x = np.array([1.0, 2.0, 3.0])
    session = CheckpointSession(CheckpointManager(tmp_path, keep_last_n=5), fingerprint="fp")
    session.manager.save_checkpoint(2, _fit_state(x), fingerprint="fp")
    session.manager.save_checkpoint(4, _fit_state(x, **edit), fingerprint="fp")
    with caplog.at_level("WARNING", logger="homodyne.checkpoint"):
        point = session.load_resume()
    assert point.batch == 2
    assert reason in caplog.text and "falling back to the previous one" in caplog.text


def test_a_signal_while_the_coarse_subsample_is_read_stops_the_read(tmp_path):
    """The coarse subsample of streamed data is one full read of the file, and it did not
    look at the signal flag: Ctrl-C/SIGTERM waited for the whole read (minutes on a
    1B-point file; > 60 s seen on a file declaring 10^12 points)."""
    import signal

    from homodyne.optimization.nlsq_wrapper import NLSQWrapper
    from homodyne.optimization.settings import EngineOptions

    spec = make_spec("static", n_frames=400, n_phi=3)
    generate_synthetic(tmp_path / "d.h5", spec, truth_for(spec), noise_sigma=0.01, seed=5)
    src = open_two_time(tmp_path / "d.h5")
    runs_after_signal = []
    read = src.iter_points_into

    def counting(*args, **kwargs):
        for item in read(*args, **kwargs):
            if not runs_after_signal:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C at the first run read
            runs_after_signal.append(item[0])
            yield item

    src.iter_points_into = counting
    opts = EngineOptions(coarse_points=2000, coarse_level_factor=4, batch_size=1000)
    k = spec.n_scaling_sets
    p0 = spec.pack([0.25] * k, [1.0] * k, [8000.0, -0.4, 80.0])
    bounds = (spec.pack(0.0, 0.5, [1, -2, -1000]), spec.pack(1.0, 1.5, [1e5, 0.5, 1000]))
    result = NLSQWrapper(strategy_override="streaming", batch_size=1000, options=opts,
                         enable_progress=False).fit_two_time(src, spec, p0, bounds)
    assert result.interrupted_by == "SIGINT"
    # one run of the subsample, then the first chunk of the full pass (and the one read
    # ahead) - not the 60 runs of 4,000 points the whole file is
    assert len(runs_after_signal) <= 4, len(runs_after_signal)


@pytest.mark.parametrize("change, how", [
    ("in_place", "was written to while being read"),
    ("replaced", "was replaced while being read"),
])
def test_a_data_file_changed_while_it_is_read_stops_the_fit(base_file, tmp_path, change, how):
    """Same size, new content (a block rewritten in place) or a new file renamed over it
    (`homodyne generate --overwrite`): a streaming fit went on - passes over two versions
    of the data (exit 4, "damping overflow"), or the old data fitted and written as the
    results of the new file (exit 0)."""
    path = tmp_path / "d.h5"
    shutil.copy(base_file, path)
    src = open_two_time(path, q=0.0054)
    first = src.read_rows(0, 0, 4)
    if change == "in_place":
        with open(path, "r+b") as fh:
            fh.seek(os.path.getsize(path) // 2)
            fh.write(b"\0" * 64)
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # coarse clocks
    else:
        shutil.copy(base_file, tmp_path / "new.h5")
        os.replace(tmp_path / "new.h5", path)
    with pytest.raises(DataFileError, match=how + r" \(by another program\?\); the fit would "
                                            "mix two versions of the data"):
        src.read_rows(0, 0, 4)
    src.close()
    assert first.shape == (4, 40)


@pytest.mark.skipif(not MULTITAU.exists(), reason="measured data not present")
def test_a_multitau_g2_never_written_is_refused_not_read_as_fill_values(tmp_path):
    """normalized_g2 chunked and never written (fill value 1.2) was read as 1,647 g2
    values of 1.2 and fitted (probe5 N8)."""
    path = tmp_path / "m.hdf"
    shutil.copy(MULTITAU, path)
    name = "/xpcs/multitau/normalized_g2"
    with h5py.File(path, "a") as f:
        shape = f[name].shape
        del f[name]
        f.create_dataset(name, shape=shape, dtype="f8", chunks=(1, shape[1]), fillvalue=1.2)
    with pytest.raises(DataFileError, match="normalized_g2 is incomplete: part of it was "
                                            "never written"):
        read_multitau(path)
    with h5py.File(path, "a") as f:  # written in full: read as the data
        f[name][...] = 1.5
    assert np.all(read_multitau(path).g2 == 1.5)


@pytest.mark.parametrize("bad", [np.nan, 1e30, -np.inf])
def test_bins_that_are_not_whole_numbers_are_named_without_numpy_warnings(base_file, tmp_path,
                                                                          bad):
    """NaN or 1e30 in processed_bins gave the right error after two numpy RuntimeWarning
    lines (probe5 W2); now the one error only."""
    def edit(f):
        bins = f["/xpcs/twotime/processed_bins"][()].astype(float)
        bins[0] = bad
        _replace(f, "/xpcs/twotime/processed_bins", data=bins)

    path = _variant(base_file, tmp_path, edit)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataFileError, match="processed_bins must hold whole bin numbers"):
            open_two_time(path, q=0.0054)
