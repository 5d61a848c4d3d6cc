"""Faults found by a third round of adversarial probing (issue 12, probe3): NPZ tables whose
members cannot be read, ..."""

import io
import struct
import zipfile

import numpy as np
import pytest

from homodyne.data import DataFileError
from homodyne.onetime.data import read_one_time


def _npz(path, method=zipfile.ZIP_DEFLATED, n_tau=4000):
    """A valid one-time NPZ table (two q), each array a member compressed with ``method``."""
    tau = np.logspace(-3, 1, n_tau)
    g2 = 1 + 0.3 * np.exp(-np.outer(tau, [50.0, 90.0]))
    arrays = {"tau": tau, "q": np.array([0.005, 0.007]), "g2": g2, "sigma": g2 * 0 + 0.01}
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        for name, a in arrays.items():
            buf = io.BytesIO()
            np.save(buf, a)
            zf.writestr(f"{name}.npy", buf.getvalue())
    return path


def _patch_headers(path, local_offset, central_offset, value):
    """Set one 16-bit field in every local and central zip header (e.g. flags, method)."""
    raw = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", local_offset), (b"PK\x01\x02", central_offset)):
        at = raw.find(signature)
        while at >= 0:
            raw[at + offset: at + offset + 2] = struct.pack("<H", value)
            at = raw.find(signature, at + 4)
    path.write_bytes(bytes(raw))


def _damage_g2_body(path):
    """Flip bytes well inside the compressed g2 member: its .npy header still decompresses."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("g2.npy")
    raw = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
    for k in range(start, start + 64):
        raw[k] ^= 0x5A
    path.write_bytes(bytes(raw))


NPZ_DAMAGE = {
    "unsupported_method": (zipfile.ZIP_DEFLATED, lambda p: _patch_headers(p, 8, 10, 99),
                           r"not a readable NPZ file: That compression method is not supported"),
    "encrypted_member": (zipfile.ZIP_DEFLATED, lambda p: _patch_headers(p, 6, 8, 1),
                         r"not a readable NPZ file: .*encrypted"),
    "broken_lzma_stream": (zipfile.ZIP_LZMA, _damage_g2_body, r"array 'g2' is unreadable"),
}


@pytest.mark.parametrize("case", sorted(NPZ_DAMAGE))
def test_npz_members_zipfile_cannot_read_are_one_data_error(tmp_path, case):
    """Was NotImplementedError / RuntimeError / LZMAError: a traceback, exit 1."""
    method, damage, message = NPZ_DAMAGE[case]
    path = _npz(tmp_path / "g2.npz", method)
    assert read_one_time(path).g2.shape == (4000, 2)  # the undamaged table is read
    damage(path)
    with pytest.raises(DataFileError, match=message):
        read_one_time(path)
