"""heap26 (issue 12, probe26's H1): one flipped byte in an HDF5 global heap collection, or
in a variable-length string's reference to it, made h5py's read spin for ever (in C, GIL
held). Each read of a damaged file runs in a child process with a timeout, so a hang fails
the test instead of blocking the run. Each test fails on main at ad4612c."""

import shutil
import struct
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from helpers import small_two_time_file, truth_for, with_variable_length_labels, write_multitau

from homodyne.data.errors import DataFileError
from homodyne.data.multitau import read_multitau
from homodyne.data.twotime import open_two_time

START_TIME = "/entry/start_time"
Q_MAP = "/xpcs/qmap/dynamic_v_list_dim0"
REAL = Path("/work/shared/data/real/aps_8idi_llps_aging")
CHILD_TIMEOUT_S = 60  # a clean read of all the flips takes a few seconds


def _multitau(path, **kw):
    """A multi-tau file of 2 q x 20 delays started 2022-03-06 21:00."""
    tau = np.unique(np.round(np.logspace(0, 4, 20))).astype(np.int64)
    g2 = 1 + 0.2 * np.exp(-tau[:, None] * 2e-5 * np.array([[50.0, 120.0]]))
    write_multitau(path, datetime(2022, 3, 6, 21), g2, np.full_like(g2, 0.003), tau,
                   np.array([0.005, 0.008]), 2e-5)
    if kw:  # the start time stored another way
        with h5py.File(path, "r+") as h5:
            del h5[START_TIME]
            h5.create_dataset(START_TIME, data=np.array(["2022-03-06 21:00:00"], dtype=object),
                              dtype=h5py.string_dtype(), **kw)
    return path


def _heap_flips(path, ref_at: int) -> dict[str, int]:
    """The offsets whose flip hung (or could hang) HDF5: the size of the heap object the
    reference at ``ref_at`` names, the size of its collection, and the high byte of the
    reference's collection address and its object index."""
    raw = path.read_bytes()
    gcol, index = struct.unpack_from("<QI", raw, ref_at + 4)
    assert raw[gcol:gcol + 4] == b"GCOL"
    at = gcol + 16
    while struct.unpack_from("<H", raw, at)[0] != index:  # objects: 16-byte head, data
        at += 16 + -(-struct.unpack_from("<Q", raw, at + 8)[0] // 8) * 8
    return {"object size": at + 8, "collection size": gcol + 9,
            "reference address": ref_at + 11, "reference index": ref_at + 12}


def _flipped_copies(path, flips: dict[str, int]) -> dict[str, Path]:
    out = {}
    for what, offset in flips.items():
        raw = bytearray(path.read_bytes())
        raw[offset] ^= 0xFF
        out[what] = path.with_name(f"{what.replace(' ', '_')}.h5")  # one file per flip
        out[what].write_bytes(raw)
    return out


def _in_a_child(call: str, paths: dict[str, Path]) -> dict[str, str]:
    """``call`` (an expression of ``p``) on each path in one child Python with a timeout:
    what it printed or raised, per flip. A hang fails the test (TimeoutExpired)."""
    code = ("import sys\nfrom homodyne.data.errors import DataFileError\n"
            "from homodyne.data.multitau import read_multitau\n"
            "from homodyne.data.twotime import open_two_time\n"
            "for what, p in zip(sys.argv[1::2], sys.argv[2::2]):\n"
            "    try:\n"
            f"        out = {call}\n"
            "    except DataFileError as exc:\n"
            "        out = f'DataFileError: {exc}'\n"
            "    print(what, '|', out, flush=True)\n")
    args = [str(a) for kv in paths.items() for a in kv]
    run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         timeout=CHILD_TIMEOUT_S)
    assert run.returncode == 0, run.stdout + run.stderr
    return dict(line.split(" | ", 1) for line in run.stdout.splitlines())


def test_a_damaged_heap_under_the_multitau_start_time_is_a_data_error_not_a_hang(tmp_path):
    """The size of the heap object holding /entry/start_time flipped: read_multitau spun
    for ever at h5[START_TIME][()]. Now the references and the collection are checked in
    the raw bytes first: every flip is a DataFileError naming the dataset, within seconds."""
    path = _multitau(tmp_path / "m.hdf")
    with h5py.File(path, "r") as h5:
        ref_at = h5[START_TIME].id.get_offset()
    assert struct.unpack_from("<I", path.read_bytes(), ref_at)[0] == 19  # its length
    out = _in_a_child("read_multitau(p).start_time",
                      _flipped_copies(path, _heap_flips(path, ref_at)))
    assert len(out) == 4
    for what, line in out.items():
        assert line.startswith("DataFileError") and "corrupt HDF5 metadata" in line, what
        assert f"{START_TIME}:" in line, line


def test_an_intact_start_time_reads_as_before_contiguous_or_chunked(tmp_path):
    """A good file's start time is read as before (contiguous, as h5py and APS write it,
    or chunked); a chunked one with a damaged heap is refused like a contiguous one;
    stored compact, its references cannot be reached, and it is refused by name."""
    assert read_multitau(_multitau(tmp_path / "a.hdf")).start_time == datetime(2022, 3, 6, 21)
    chunked = _multitau(tmp_path / "c.hdf", chunks=(1,))
    assert read_multitau(chunked).start_time == datetime(2022, 3, 6, 21)
    with h5py.File(chunked, "r") as h5:
        ref_at = h5[START_TIME].id.get_chunk_info(0).byte_offset
    flips = _flipped_copies(chunked, {"object size": _heap_flips(chunked, ref_at)["object size"]})
    assert "corrupt HDF5 metadata" in _in_a_child("read_multitau(p)", flips)["object size"]
    with h5py.File(compact := tmp_path / "k.hdf", "w") as h5:
        h5.create_dataset(START_TIME, shape=(1,), dtype=h5py.string_dtype(),
                          data=["2022-03-06 21:00:00"],
                          dcpl=_compact_plist())
    shutil.copyfile(_multitau(tmp_path / "base.hdf"), tmp_path / "k2.hdf")
    with h5py.File(tmp_path / "k2.hdf", "r+") as h5, h5py.File(compact, "r") as src:
        del h5[START_TIME]
        src.copy(src[START_TIME], h5["/entry"], "start_time")
        assert h5[START_TIME].id.get_create_plist().get_layout() == h5py.h5d.COMPACT
    with pytest.raises(DataFileError, match="stored compact"):
        read_multitau(tmp_path / "k2.hdf")


def _compact_plist():
    plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    plist.set_layout(h5py.h5d.COMPACT)
    return plist


@pytest.mark.skipif(not REAL.is_dir(), reason="the measured APS data are not here")
def test_the_measured_aps_multitau_files_still_read_their_start_time(tmp_path):
    """The APS files store /entry/start_time as a contiguous variable-length string: it is
    checked and read as before (a working copy; the mirror is never opened for writing)."""
    files = sorted(REAL.glob("*_results.hdf"))[:2]
    assert files
    for src in files:
        copy = Path(shutil.copyfile(src, tmp_path / src.name))
        assert read_multitau(copy).start_time.year == 2022


def _old_generate_file(tmp_path) -> tuple[Path, int]:
    """A synthetic file whose labels are variable-length strings (homodyne generate before
    heap26), and the offset of the reference of its `mode` attribute ("static", 6 bytes;
    the attribute was rewritten: its heap object is the later of two)."""
    path = with_variable_length_labels(small_two_time_file(tmp_path / "old.h5", n_frames=20))
    raw = path.read_bytes()
    gcol = raw.index(b"GCOL")
    index = struct.unpack_from("<H", raw, raw.rindex(b"static", gcol) - 16)[0]
    return path, raw.index(struct.pack("<IQI", 6, gcol, index))


def test_a_damaged_heap_under_the_synthetic_labels_no_longer_hangs_the_open(tmp_path):
    """The same flips under the `mode`/`scaling` labels of an older generated file (sweep
    offsets 20720, 20744 and 25067 of probe26) hung open_two_time in h5py's attribute read.
    An attribute's references cannot be checked without an object-header parser, so
    variable-length labels are left unread: the file opens, its truth values intact."""
    path, ref_at = _old_generate_file(tmp_path)
    out = _in_a_child("sorted(open_two_time(p, q=0.0054).attrs)",
                      _flipped_copies(path, _heap_flips(path, ref_at)))
    assert len(out) == 4
    for what, line in out.items():
        assert "'true_parameters'" in line and "'mode'" not in line, (what, line)


def test_a_text_map_whose_heap_is_damaged_is_a_data_error_not_a_hang(tmp_path):
    """A q map stored as variable-length text (read as the numbers it spells) with its
    heap object's size flipped hung open_two_time; now it names the map as damaged."""
    path = small_two_time_file(tmp_path / "t.h5", n_frames=20)
    with h5py.File(path, "r+") as h5:
        del h5[Q_MAP]
        h5.create_dataset(Q_MAP, data=np.array(["0.0054"], dtype=object),
                          dtype=h5py.string_dtype())
        ref_at = h5[Q_MAP].id.get_offset()
    assert open_two_time(path, q=0.0054).q == pytest.approx(0.0054)
    flips = _flipped_copies(path, _heap_flips(path, ref_at))
    out = _in_a_child("open_two_time(p, q=0.0054).q", flips)
    for what, line in out.items():
        assert "corrupt HDF5 metadata" in line and f"{Q_MAP}:" in line, (what, line)


def test_generate_writes_fixed_length_labels_that_read_as_text_and_truth(tmp_path):
    """homodyne generate's labels are fixed-length strings now (no global heap in the file
    at all); they read as str, and the truth table of parameters.json is still built."""
    from homodyne.pipeline import _truth

    path = small_two_time_file(tmp_path / "new.h5", n_frames=20)
    assert b"GCOL" not in path.read_bytes()
    src = open_two_time(path, q=0.0054)
    assert src.attrs["mode"] == "static" and isinstance(src.attrs["scaling"], str)
    spec = src.model_spec()
    assert list(src.attrs["parameter_names"]) == list(spec.parameter_names)
    table = _truth(src, spec)
    assert table["D0"] == pytest.approx(truth_for(spec)[spec.parameter_names.index("D0")])


def test_an_older_generated_file_names_why_its_truth_is_not_listed(tmp_path, caplog):
    """An older file's parameter names (variable-length) are not read: the fit goes on,
    the warning says why the truth is missing instead of calling it malformed."""
    from homodyne.pipeline import _truth

    path, _ = _old_generate_file(tmp_path)
    src = open_two_time(path, q=0.0054)
    assert "true_parameters" in src.attrs and "parameter_names" not in src.attrs
    fake = SimpleNamespace(attrs=src.attrs, path=src.path, phi_deg=src.phi_deg)
    assert _truth(fake, src.model_spec()) is None
    assert "older homodyne generate" in caplog.text and "generate the file again" in caplog.text


def test_a_file_with_a_userblock_is_checked_at_the_right_offsets(tmp_path):
    """Heap addresses in a reference are relative to the base address (after a userblock);
    the dataset's own offset is absolute: an intact file with a 512-byte userblock passes,
    the same flip of its heap object's size is found."""
    from homodyne.data.vlenheap import vlen_string_problem

    path = tmp_path / "ub.h5"
    with h5py.File(path, "w", userblock_size=512) as h5:
        h5[START_TIME] = "2022-03-06 21:00:00"
    with h5py.File(path, "r") as h5:
        assert vlen_string_problem(h5, h5[START_TIME], START_TIME) is None
        ref_at = h5[START_TIME].id.get_offset()
    raw = bytearray(path.read_bytes())
    gcol = struct.unpack_from("<Q", raw, ref_at + 4)[0] + 512
    assert raw[gcol:gcol + 4] == b"GCOL"
    raw[gcol + 24] ^= 0xFF
    (bad := tmp_path / "bad.h5").write_bytes(raw)
    with h5py.File(bad, "r") as h5:
        assert "corrupt HDF5 metadata" in vlen_string_problem(h5, h5[START_TIME], START_TIME)
