"""Issue 12, a fresh probing round (probe17) over every file the tool reads: each test fails
on main ec78732."""

import os
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest


def multi_tau_file(path, **fields):
    """A small multi-tau result (3 delays x 1 q) at ``path``; ``fields`` replace datasets by
    their G2 / START_TIME / ... names in homodyne.data.multitau (a value or an h5py link)."""
    from homodyne.data import multitau as mt

    values = {mt.G2: np.full((3, 1), 1.3), mt.G2_ERR: np.full((3, 1), 0.01),
              mt.DELAYS: [1.0, 2.0, 3.0], mt.FRAME_TIME: [1e-3], mt.Q_LIST: [0.005],
              mt.START_TIME: "2022-03-06 21:57:04"}
    values.update({getattr(mt, k): v for k, v in fields.items()})
    with h5py.File(path, "w") as h5:
        for name, value in values.items():
            h5[name] = value
    return path


# re-seal ``folder``/homodyne_state_batch_0002.h5 after its ``parameters`` are replaced by
# storage outside the file, then resume from the folder: the older batch 1 must be chosen
FORGED_RESUME = """
import os, sys, h5py, numpy as np
from homodyne.optimization import checkpoint_manager as cm
for folder in sys.argv[1:]:
    kind = os.path.basename(folder)
    p = os.path.join(folder, "homodyne_state_batch_0002.h5")
    raw = open(p, "rb").read()
    fp = raw[-cm.TRAILER_BYTES:][16:16 + cm.FINGERPRINT_BYTES].rstrip(b" ").decode()
    open(p, "wb").write(raw[:-cm.TRAILER_BYTES])
    with h5py.File(p, "r+") as h:
        del h["parameters"]
        if kind.startswith("virtual"):
            src = "." if kind == "virtual_self" else os.path.join(folder, "pipe")
            layout = h5py.VirtualLayout(shape=(3,), dtype="f8")
            layout[:] = h5py.VirtualSource(src, "parameters", shape=(3,))
            h.create_virtual_dataset("parameters", layout, fillvalue=0)
        else:
            target = os.path.join(folder, "pipe") if kind == "external_pipe" else "/etc/hostname"
            h.create_dataset("parameters", shape=(3,), dtype="f8", external=[(target, 0, 24)])
    cm._append_trailer(p, fp)
    chosen = cm.CheckpointManager(folder).find_latest_valid_checkpoint()
    print(kind, chosen.name, flush=True)
"""


def test_a_resealed_checkpoint_whose_field_lives_outside_the_file_is_skipped(tmp_path):
    """Was: a checkpoint re-sealed (the digest is not a key) with its parameters as a
    virtual dataset mapping itself -> segfault on resume; a virtual or external source that
    is a pipe -> the resume blocked for ever; another file as the source -> its bytes were
    resumed as the fit's parameters. Such a field is refused from its header."""
    from homodyne.optimization.checkpoint_manager import CheckpointManager

    kinds = ["virtual_self", "virtual_pipe", "external_pipe", "external_other_file"]
    for kind in kinds:
        folder = tmp_path / kind
        m = CheckpointManager(folder)
        for batch in (1, 2):
            m.save_checkpoint(batch, {"batch_idx": batch, "parameters": np.arange(3.0) + batch},
                              fingerprint="fit")
        os.mkfifo(folder / "pipe")
    proc = subprocess.run([sys.executable, "-c", FORGED_RESUME,
                           *(str(tmp_path / k) for k in kinds)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]  # -11 was the segfault
    assert proc.stdout.split() == [w for k in kinds
                                   for w in (k, "homodyne_state_batch_0001.h5")]
    assert proc.stderr.count("outside the file (virtual or external storage)") == 4


# read a file whose one small field declares 1.2 GB (one element of an HDF5 array type, never
# written: a 30 kB file) under a 2 GiB address-space limit: the fit's reader must refuse it
ARRAY_TYPE_READ = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from homodyne.data.errors import DataFileError
from homodyne.data.twotime import open_two_time
from homodyne.onetime.data import read_one_time
for path in sys.argv[1:]:
    try:
        (read_one_time if path.endswith(".hdf") else open_two_time)(path)
    except DataFileError as exc:
        print("REFUSED", exc, flush=True)
"""


def _array_type_field(h5, name: str, n_values: int) -> None:
    """Replace ``name`` by a scalar whose one element is an array of n float64 (unwritten)."""
    parent, leaf = name.rsplit("/", 1)
    del h5[name]
    h5py.h5d.create(h5[parent or "/"].id, leaf.encode(),
                    h5py.h5t.array_create(h5py.h5t.IEEE_F64LE, (n_values,)),
                    h5py.h5s.create(h5py.h5s.SCALAR))


def test_a_field_of_an_hdf5_array_type_declaring_gigabytes_is_refused_before_reading(tmp_path):
    """Was: a frame time, q map, bin list or multi-tau start time holding ONE element of an
    HDF5 array type of 150 M float64 (a 30 kB file): the two-time reader read 8.4 GB (29 s),
    the multi-tau reader 2.5 GB; above 2 GB the type made h5py raise 'ValueError: invalid
    shape in fixed-type tuple' out of open_two_time: a traceback from a data file."""
    from helpers import small_two_time_file

    from homodyne.data import multitau as mt
    from homodyne.data.twotime import APSU_BINS, APSU_Q, FRAME_TIME

    files = []
    for field, n in ((FRAME_TIME, 150_000_000), (APSU_Q, 400_000_000),
                     (APSU_BINS, 400_000_000)):
        path = small_two_time_file(tmp_path / f"{len(files)}.h5", n_frames=8)
        with h5py.File(path, "r+") as h5:
            _array_type_field(h5, field, n)
        files.append(path)
    one_time = multi_tau_file(tmp_path / "g2.hdf")
    with h5py.File(one_time, "r+") as h5:
        _array_type_field(h5, mt.START_TIME, 150_000_000)
    proc = subprocess.run([sys.executable, "-c", ARRAY_TYPE_READ, *map(str, files),
                           str(one_time)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 4 and all(line.startswith("REFUSED") for line in lines)
    assert "frame_time declares 1,200,000,000 bytes (1 value(s) of 1,200,000,000 bytes" \
           in lines[0]
    assert "start_time declares 1,200,000,000 bytes; expected one date/time" in lines[3]


@pytest.fixture
def no_hang():
    """SIGALRM after 20 s raises in the test (a read blocked on a FIFO would hang it)."""
    def timeout(*_):
        raise TimeoutError("blocked for 20 s")
    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("edit, message", [
    ("value", "an integer of 400 digits"), ("q", "an integer of 400 digits"),
    ("pipe", "not a regular file"), ("link_to_a_300_MB_file", "larger than the 268,435,456"),
])
def test_a_bins_result_file_that_is_no_result_is_one_error_naming_it(tmp_path, no_hang, edit,
                                                                      message):
    """Was (the --q refresh of summary.csv, the workflow's gather): a 400-digit integer as a
    parameter's value or q in a bin's parameters.json -> OverflowError traceback, exit 1;
    parameters.json a FIFO -> gather blocked for ever; a link to a big file -> read whole
    (2.3 GB of memory for a 1 GB file)."""
    from helpers import a_bin_folder

    from homodyne.production.multiq import ResultFileError, summary_row

    folder = a_bin_folder(tmp_path)
    params = folder / "parameters.json"
    text = params.read_text()
    if edit == "value":
        params.write_text(text.replace('"value": 10000.0', '"value": ' + "9" * 400))
    elif edit == "q":
        params.write_text(text.replace('"q": 0.005', '"q": ' + "9" * 400))
    else:
        params.unlink()
        if edit == "pipe":
            os.mkfifo(params)
        else:
            with open(tmp_path / "big", "wb") as fh:
                fh.truncate(300 << 20)  # (sparse: refused from its size, never read)
            params.symlink_to(tmp_path / "big")
    with pytest.raises(ResultFileError, match=message):
        summary_row(folder)


def test_a_production_result_that_is_a_pipe_is_named_not_waited_for(tmp_path, no_hang):
    """Was: write_fit_summary (results/fits/summary.md) blocked for ever on a FIFO
    parameters.json."""
    from homodyne.production.multiq import ResultFileError
    from homodyne.production.report import write_fit_summary

    for name in ("chx", "aging", "laminar"):
        (tmp_path / name).mkdir()
    os.mkfifo(tmp_path / "chx" / "parameters.json")
    with pytest.raises(ResultFileError, match="not a regular file"):
        write_fit_summary(tmp_path / "s.md", *(tmp_path / n for n in ("chx", "aging",
                                                                      "laminar")))


def test_the_older_layouts_matrices_numbered_without_zeros_pair_with_their_q(tmp_path):
    """Was: /exchange/C2T_all/c2_1 ... c2_12 paired with /xpcs/dqlist by sorted name (c2_1,
    c2_10, c2_11, c2_12, c2_2, ...): q = 0.002 (the 2nd bin) read matrix c2_10, without a
    word. Each matrix k here decays over k frames, so the one read names itself."""
    from homodyne.data.twotime import open_two_time

    t = np.arange(12.0)
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as h5:
        h5["/xpcs/dqlist"] = 0.001 * np.arange(1, 13)[None, :]
        h5["/xpcs/dphilist"] = np.zeros((1, 12))
        for k in range(1, 13):
            h5[f"/exchange/C2T_all/c2_{k}"] = 1 + 0.3 * np.exp(-abs(t[:, None] - t) / k)
    for k in (2, 10):
        src = open_two_time(path, q=0.001 * k)
        c2 = src.read_on_frames(0, np.arange(12))
        assert src.dataset_names == [f"/exchange/C2T_all/c2_{k}"]
        assert -1 / np.log((c2[0, 1] - 1) / 0.3) == pytest.approx(k)


def test_a_multi_tau_g2_linked_from_another_file_is_refused_as_two_time_data_are(tmp_path):
    """Was: /xpcs/multitau/normalized_g2 as an external link to another (readable) file: its
    g2 were read and fitted as this file's without a word (only a link whose file is missing
    was named); the two-time reader refuses such links."""
    from homodyne.data import multitau as mt
    from homodyne.data.errors import DataFileError

    multi_tau_file(tmp_path / "other.h5")
    linked = multi_tau_file(tmp_path / "linked.h5",
                            G2=h5py.ExternalLink(str(tmp_path / "other.h5"), mt.G2))
    with pytest.raises(DataFileError, match=f"normalized_g2 is an external link to "
                                            f"{tmp_path / 'other.h5'}; external links are not "
                                            "read: copy the data into the file"):
        mt.read_multitau(linked)


def test_a_soft_link_to_nothing_is_named_not_called_damage(tmp_path):
    """Was: a matrix (two-time) or the start time (multi-tau) as a soft link to a path that
    does not exist -> 'corrupt HDF5 metadata (KeyError: ... component not found); re-export
    or copy the file again' / 'damaged HDF5 file': the file is fine, a link points nowhere."""
    from helpers import small_two_time_file

    from homodyne.data import multitau as mt
    from homodyne.data.errors import DataFileError
    from homodyne.data.twotime import open_two_time

    two_time = small_two_time_file(tmp_path / "t.h5", n_frames=8)
    with h5py.File(two_time, "r+") as h5:
        del h5["/xpcs/twotime/correlation_map/c2_00001"]
        h5["/xpcs/twotime/correlation_map/c2_00001"] = h5py.SoftLink("/gone")
    with pytest.raises(DataFileError, match="correlation_map/c2_00001 is a soft link to /gone, "
                                            "which does not exist in the file"):
        open_two_time(two_time)
    one_time = multi_tau_file(tmp_path / "g2.hdf", START_TIME=h5py.SoftLink("/entry/when"))
    with pytest.raises(DataFileError, match="/entry/start_time is a soft link to /entry/when, "
                                            "which does not exist in the file"):
        mt.read_multitau(one_time)


def test_a_matrix_name_that_is_not_utf8_is_named_not_a_traceback(tmp_path):
    """Was: a member of /xpcs/twotime/correlation_map named b'c2_\\xff\\xfe' (h5py lists it as
    bytes) -> 'TypeError: startswith first arg must be bytes' out of open_two_time: a
    traceback, exit 1, from a data file."""
    from helpers import small_two_time_file

    from homodyne.data.errors import DataFileError
    from homodyne.data.twotime import APSU_C2, open_two_time

    path = small_two_time_file(tmp_path / "t.h5", n_frames=8)
    with h5py.File(path, "r+") as h5:
        h5py.h5o.link(h5[f"{APSU_C2}/c2_00002"].id, h5[APSU_C2].id, b"c2_\xff\xfe")
    with pytest.raises(DataFileError, match=r"correlation_map holds a member whose name is not "
                                            r"UTF-8 text \(b'c2_\\xff\\xfe'\); rename it"):
        open_two_time(path)


def test_an_aging_series_file_listed_twice_through_a_hard_link_or_copy_is_named(tmp_path):
    """Was: one_time.series naming a hard link (or a copy) of file_path passed the config's
    'list each file once' check (realpath only): both files start at one time, ages [0, 0],
    and the fit failed with 'the model overflows there; check p0, bounds and the model
    function', exit 3."""
    from homodyne.data.errors import DataFileError
    from homodyne.production.aging import load_series

    first = multi_tau_file(tmp_path / "a.hdf")
    os.link(first, tmp_path / "b.hdf")
    later = multi_tau_file(tmp_path / "c.hdf", START_TIME="2022-03-06 22:57:04")
    assert load_series([first, later])[1].tolist() == [1800.0, 5400.0]  # a real series
    with pytest.raises(DataFileError, match="b.hdf: starts at the same time as .*a.hdf "
                                            r"\(/entry/start_time = 2022-03-06 21:57:04\): "
                                            "one measurement twice"):
        load_series([first, tmp_path / "b.hdf", later])


def test_a_multi_tau_g2_compressed_with_a_filter_this_hdf5_lacks_is_named(tmp_path):
    """Was: 'damaged HDF5 file (metadata unreadable: Can't synchronously read data (can't
    open directory (/usr/local/lib/plugin)...)); re-export or re-copy it' for a good file
    whose g2 uses a compression filter (here 32001, blosc) not installed; the two-time
    reader names the filter and the fix."""
    from homodyne.data import multitau as mt
    from homodyne.data.errors import DataFileError

    path = multi_tau_file(tmp_path / "g2.hdf")
    with h5py.File(path, "r+") as h5:
        del h5[mt.G2]
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((3, 1))
        dcpl.set_filter(32001, h5py.h5z.FLAG_OPTIONAL, (0, 0, 0, 0, 5, 1, 1))
        parent, leaf = mt.G2.rsplit("/", 1)
        h5py.h5d.create(h5[parent].id, leaf.encode(), h5py.h5t.IEEE_F64LE,
                        h5py.h5s.create_simple((3, 1)), dcpl=dcpl
                        ).write_direct_chunk((0, 0), np.full(3, 1.3).tobytes())
    with pytest.raises(DataFileError, match="normalized_g2: it is compressed with HDF5 filter "
                                            "32001, which this installation lacks; install"):
        mt.read_multitau(path)
