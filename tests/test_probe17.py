"""Issue 12, a fresh probing round (probe17) over every file the tool reads: each test fails
on main ec78732."""

import os
import subprocess
import sys

import h5py
import numpy as np

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
    one_time = tmp_path / "g2.hdf"
    with h5py.File(one_time, "w") as h5:
        h5[mt.G2] = h5[mt.G2_ERR] = np.ones((3, 1))
        h5[mt.DELAYS], h5[mt.FRAME_TIME], h5[mt.Q_LIST] = [1.0, 2.0, 3.0], [1e-3], [0.005]
        h5[mt.START_TIME] = "2022-03-06 21:57:04"
        _array_type_field(h5, mt.START_TIME, 150_000_000)
    proc = subprocess.run([sys.executable, "-c", ARRAY_TYPE_READ, *map(str, files),
                           str(one_time)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 4 and all(line.startswith("REFUSED") for line in lines)
    assert "frame_time declares 1,200,000,000 bytes (1 value(s) of 1,200,000,000 bytes" \
           in lines[0]
    assert "start_time declares 1,200,000,000 bytes; expected one date/time" in lines[3]
