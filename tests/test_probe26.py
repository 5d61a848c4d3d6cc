"""probe26's findings (issue 12, a fresh round over everything the tool reads): each test
fails on main at 5108c16."""

import struct

import h5py
import numpy as np
import pytest
from helpers import small_two_time_file, with_variable_length_labels, write_multitau

from homodyne.data.errors import DataFileError
from homodyne.data.multitau import read_multitau
from homodyne.data.twotime import open_two_time
from homodyne.onetime.data import read_one_time

Q_MAP = "/xpcs/qmap/dynamic_v_list_dim0"
PHI_MAP = "/xpcs/qmap/dynamic_v_list_dim1"


def _object_header(path, name: str) -> int:
    """The file offset of the object header of ``name`` in the HDF5 file ``path``."""
    with h5py.File(path, "r") as h5:
        return h5py.h5o.get_info(h5[name].id).addr


def _flips_give_data_errors(good: bytes, offsets, folder) -> list[tuple[int, str]]:
    """Open a copy of ``good`` with each byte of ``offsets`` flipped (each copy a file of
    its own: HDF5 keeps a file it saw open by inode); what is neither a selection nor a
    DataFileError, as (offset, exception)."""
    other = []
    for offset in offsets:
        bad = folder / f"flip{offset}.h5"
        flipped = bytearray(good)
        flipped[offset] ^= 0xFF
        bad.write_bytes(flipped)
        try:
            open_two_time(bad, q=0.0054).close()
        except DataFileError:
            pass
        except Exception as exc:  # noqa: BLE001 - what escapes is the finding
            other.append((offset, f"{type(exc).__name__}: {exc}"))
        bad.unlink()
    return other


def test_every_flipped_byte_of_a_map_or_group_header_reads_or_gives_a_data_error(tmp_path):
    """A byte flipped in the q map's datatype (h5py: "Insufficient precision in available
    types") was a ValueError traceback; one in the /xpcs group's header made the soft-link
    check's walk fail with a SystemError (h5py's report of an error inside HDF5's walk),
    also a traceback, instead of "corrupt HDF5 metadata". Found by a sweep of one-byte
    flips over a 29 kB `homodyne generate` file: 43 of its offsets were tracebacks."""
    path = small_two_time_file(tmp_path / "d.h5", n_frames=20)
    good = path.read_bytes()
    offsets = [a + k for name in (Q_MAP, PHI_MAP, "/xpcs")
               for a in [_object_header(path, name)] for k in range(40, 100)]
    assert _flips_give_data_errors(good, offsets, tmp_path) == []


def _quad_float(h5, name: str, n: int) -> None:
    """Replace dataset ``name`` by one of n IEEE quad floats, a type NumPy cannot hold."""
    t = h5py.h5t.IEEE_F64LE.copy()
    t.set_size(16)
    t.set_precision(128)
    t.set_fields(127, 112, 15, 0, 112)
    t.set_ebias(16383)
    del h5[name]
    parent, leaf = name.rsplit("/", 1)
    h5py.h5d.create(h5[parent].id, leaf.encode(), t, h5py.h5s.create_simple((n,)))


@pytest.mark.parametrize("name", [Q_MAP, PHI_MAP])
def test_a_map_of_a_float_type_numpy_cannot_hold_is_named(tmp_path, name):
    """Was a ValueError traceback from h5py's dtype (probe5 fixed it for the matrices)."""
    path = small_two_time_file(tmp_path / "d.h5", n_frames=20)
    with h5py.File(path, "r+") as h5:
        _quad_float(h5, name, h5[name].size)
    with pytest.raises(DataFileError, match=f"{name} has an HDF5 data type NumPy cannot hold"):
        open_two_time(path, q=0.0054)


def _vlen_string_made_a_sequence(path, after: bytes) -> None:
    """Turn the first variable-length string type stored after the bytes ``after`` into a
    variable-length sequence of a damaged type: its type byte 0x01 flipped to 0xFE."""
    raw = bytearray(path.read_bytes())
    at = raw.index(b"\x19\x01", raw.index(after))  # version 1, class 9 (VLEN); type string
    raw[at + 1] ^= 0xFF
    path.write_bytes(raw)


def _read_in_a_child(code: str) -> tuple[int, str]:
    """Exit status and output of ``code`` run by another Python (a segfault must not take
    the test run with it)."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    return run.returncode, run.stdout + run.stderr


def test_a_multitau_start_time_whose_string_type_became_a_sequence_is_no_segfault(tmp_path):
    """One flipped byte in the type of /entry/start_time (a variable-length string) made it
    a variable-length sequence, and reading it segfaulted HDF5 (exit -11): 224 of the 255
    values of that byte did. The existing sweep over multi-tau files flips every third byte
    and missed it."""
    path = _multitau_file(tmp_path / "m.hdf")
    with h5py.File(path, "r") as h5:
        header = h5py.h5o.get_info(h5["/entry/start_time"].id).addr
    raw = path.read_bytes()
    _vlen_string_made_a_sequence(path, raw[header : header + 8])
    status, out = _read_in_a_child(
        "from homodyne.data.errors import DataFileError\n"
        "from homodyne.data.multitau import read_multitau\n"
        f"try:\n    read_multitau({str(path)!r})\n"
        "except DataFileError as exc:\n    print(exc)\n")
    assert status == 0, out
    assert "/entry/start_time holds variable-length sequences" in out


def test_a_synthetic_attribute_whose_string_type_became_a_sequence_is_left_out(tmp_path):
    """The same flip in the `mode` attribute of /homodyne/synthetic (labels only, read by
    open_two_time with every other attribute) segfaulted a fit of that file (found by the
    one-byte sweep over a `homodyne generate` file, offset 20649): now it is left out."""
    path = with_variable_length_labels(small_two_time_file(tmp_path / "d.h5", n_frames=20))
    _vlen_string_made_a_sequence(path, b"mode\x00")
    status, out = _read_in_a_child(
        "from homodyne.data.twotime import open_two_time\n"
        f"print(sorted(open_two_time({str(path)!r}, q=0.0054).attrs))\n")
    assert status == 0, out
    assert "'true_parameters'" in out and "'mode'" not in out



def _multitau_file(path, g2_at=None, err_at=None):
    """A one-time multi-tau file of 2 q x 20 delays; one value of g2 or sigma replaced."""
    from datetime import datetime

    tau_frames = np.unique(np.round(np.logspace(0, 4, 20))).astype(np.int64)
    q = np.array([0.005, 0.008])
    g2 = 1 + 0.2 * np.exp(-tau_frames[:, None] * 2e-5 * np.array([[50.0, 120.0]]))
    err = np.full_like(g2, 0.003)
    if g2_at is not None:
        g2[5, 0] = g2_at
    if err_at is not None:
        err[3, 1] = err_at
    write_multitau(path, datetime(2022, 3, 6, 21), g2, err, tau_frames, q, 2e-5)
    return path


@pytest.mark.parametrize("phi", [1e20, 1e300])
def test_an_angle_beyond_a_million_degrees_is_named_as_such(tmp_path, phi):
    """phi = 1e300 deg was refused as "one angle modulo 360" with 0 deg (naming a bin
    listed twice); phi = 1e20 deg was fitted as an angle (1e20 modulo 360 is rounding
    noise: the ulp of 1e20 is 16384 deg)."""
    path = small_two_time_file(tmp_path / "d.h5", n_frames=20, n_phi=2)
    with h5py.File(path, "r+") as h5:
        h5[PHI_MAP][1] = phi
    with pytest.raises(DataFileError, match=rf"{PHI_MAP} holds angles beyond \+/-1e\+06 deg"):
        open_two_time(path, q=0.0054)


def _npy_header(shape, descr="<f8") -> bytes:
    """A version 1.0 .npy header declaring ``shape`` (any Python literal) of ``descr``."""
    d = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    pad = (64 - (10 + len(d) + 1) % 64) % 64
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(d) + pad + 1) + d + b" " * pad + b"\n"


def test_an_npy_header_whose_shape_is_booleans_or_negative_is_a_data_error(tmp_path):
    """shape (True, True) with 8 bytes of data passed the header check and np.load raised
    TypeError ("an integer is required"): a traceback, exit 1. (-1, 30) was said to
    declare -240 bytes."""
    bools = tmp_path / "b.npy"
    bools.write_bytes(_npy_header((True, True)) + b"\0" * 8)
    with pytest.raises(DataFileError, match=r"shape \(True, True\) is not a list of sizes"):
        open_two_time(bools)
    negative = tmp_path / "n.npy"
    negative.write_bytes(_npy_header((-1, 30)) + b"\0" * 240)
    with pytest.raises(DataFileError, match=r"shape \(-1, 30\) is not a list of sizes"):
        open_two_time(negative)


def test_an_empty_npy_matrix_is_named_as_too_small_not_as_nan(tmp_path):
    """A 0x0 .npy matrix was "matrix holds no finite values (all NaN/Inf)"."""
    path = tmp_path / "e.npy"
    np.save(path, np.zeros((0, 0)))
    with pytest.raises(DataFileError, match="the matrix is 0x0; a two-time matrix needs at "
                                            "least 2 frames"):
        open_two_time(path)


def test_an_absurd_value_in_an_npy_matrix_is_a_data_error_naming_it(tmp_path):
    """HDF5 matrices refuse a finite value beyond 1e100 (probe9); a bare .npy matrix did
    not: 1e250 ended "fit failed: ... the model overflows there; check p0, bounds and the
    model function" (exit 3), 1e150 a fit "not converged"."""
    m = 1.0 + 0.2 * np.exp(-np.abs(np.subtract.outer(np.arange(20.0), np.arange(20.0))) / 5)
    m[2, 5] = 1e250
    path = tmp_path / "m.npy"
    np.save(path, m)
    with open_two_time(path) as source, pytest.raises(
            DataFileError, match=r"matrix holds 1e\+250 at frames \(3, 6\)"):
        source.read_packed()


def test_a_one_time_point_whose_weight_overflows_is_a_data_error_not_a_traceback(tmp_path):
    """A g2 of 1e200 (sigma 0.003) or a sigma of 1e-300 in a multi-tau file reached the
    engine's check: "ValueError: sigma is too small for float64 weights ... rescale ydata
    and sigma together", a traceback with exit 1 from `homodyne`, naming no file."""
    with pytest.raises(DataFileError, match=r"g2 = 1e\+200 with sigma = 0.003 at tau = "
                                            r"0.00022 s, q = 0.005: max\(1, \|g2\|\)/sigma"):
        read_multitau(_multitau_file(tmp_path / "g.hdf", g2_at=1e200))
    with pytest.raises(DataFileError, match=r"sigma = 1e-300 .* q = 0.008"):
        read_multitau(_multitau_file(tmp_path / "s.hdf", err_at=1e-300))
    table = tmp_path / "t.csv"
    table.write_text("tau,g2(q=0.005),sigma(q=0.005)\n1e-3,1.2,0.01\n2e-3,1.1,1e-300\n"
                     "3e-3,1.05,0.01\n")
    with pytest.raises(DataFileError, match=r"sigma = 1e-300 at tau = 0.002 s"):
        read_one_time(table)


def test_the_cli_refuses_a_one_time_file_whose_weight_overflows_in_one_line(tmp_path,
                                                                          monkeypatch, capsys):
    """The same file through `homodyne`: exit 2 and one line naming the file, not exit 1."""
    import yaml

    from homodyne.cli import main

    data = _multitau_file(tmp_path / "g.hdf", g2_at=1e200)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(
        {"analysis_mode": "one_time", "experimental_data": {"file_path": str(data)},
         "output": {"plots": False}}))
    assert main(["--config", "c.yaml", "--output-dir", "out"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{data}: g2 = 1e+200 with sigma = 0.003" in err
    assert not (tmp_path / "out/parameters.json").exists()


def test_a_string_type_of_an_unknown_encoding_is_named_or_left_out(tmp_path):
    """A flipped byte in the character set of a string type: h5py raises TypeError
    ("Unknown string encoding"), which escaped open_two_time as a traceback, from a q map
    stored as text or from the `mode` attribute of the synthetic truth (offset 20650 of
    the sweep). The map is named; the attribute, a label, is left out."""
    text_q = small_two_time_file(tmp_path / "q.h5", n_frames=20)
    with h5py.File(text_q, "r+") as h5:
        del h5[Q_MAP]
        h5[Q_MAP] = np.array([b"0.0054"])  # read as the number it spells
    raw = bytearray(text_q.read_bytes())
    at = raw.index(b"\x13", _object_header(text_q, Q_MAP))  # version 1, class 3 (string)
    raw[at + 1] ^= 0xF0  # the character set: 15, which HDF5 does not define
    text_q.write_bytes(raw)
    with pytest.raises(DataFileError, match=f"{Q_MAP} has an HDF5 data type NumPy cannot "
                                            r"hold \(Unknown string encoding"):
        open_two_time(text_q, q=0.0054)
    labelled = with_variable_length_labels(small_two_time_file(tmp_path / "a.h5", n_frames=20))
    raw = bytearray(labelled.read_bytes())
    at = raw.index(b"\x19\x01", raw.index(b"mode\x00"))  # its variable-length string type
    raw[at + 2] ^= 0xFF  # the character set byte
    labelled.write_bytes(raw)
    attrs = open_two_time(labelled, q=0.0054).attrs
    assert "mode" not in attrs and attrs["n_frames"] == 20


def test_an_angle_beyond_a_million_degrees_is_refused_wherever_angles_are_given(tmp_path,
                                                                                capsys):
    """`homodyne generate --angles 0,2e6` wrote a file the reader now refuses, and
    `--angles 0,1e300` was refused as "one angle (equal modulo 360 degrees)" with 0; so were
    the workflow's multiq.synthetic.angles; ModelSpec took phi_deg=(1e300,), and the
    laminar production fit generated data at such an angle. The workflow schema bounds the
    synthetic angles to +/-1e6 deg."""
    import yaml
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    from homodyne.cli import main
    from homodyne.config import ConfigError
    from homodyne.model import ModelSpec
    from homodyne.production.laminar import fit_laminar_synthetic

    for angles, far in (("0,2e6", "2e+06"), ("0,1e300", "1e+300")):
        out = tmp_path / f"g{far}.h5"
        with pytest.raises(SystemExit) as stop:
            main(["generate", "--output", str(out), "--frames", "20", "--angles", angles])
        assert stop.value.code == 2 and not out.exists()
        assert f"argument --angles: angle {far} deg is beyond +/-1e+06 deg" in \
            capsys.readouterr().err
    with pytest.raises(ValueError, match=r"phi_deg: angle 1e\+300 deg is beyond"):
        ModelSpec(mode="static", q=0.005, dt=0.1, n_frames=10, phi_deg=(0.0, 1e300))
    with pytest.raises(ConfigError, match="fits.laminar_synthetic.angles: angle 2e"):
        fit_laminar_synthetic(tmp_path / "lam", frames=20, angles=(0, 2e6))
    assert not (tmp_path / "lam").exists()
    repo = __import__("pathlib").Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((repo / "config/test.yaml").read_text())
    cfg["multiq"]["synthetic"]["angles"] = [0, 1e300]
    with pytest.raises(WorkflowError, match="1e\\+300 is greater than the maximum of"):
        validate(cfg, str(repo / "workflow/schemas/config.schema.yaml"))
