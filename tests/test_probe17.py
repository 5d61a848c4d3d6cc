"""Issue 12, a fresh probing round (probe17) over every file the tool reads: each test fails
on main ec78732."""

import os
import subprocess
import sys

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
