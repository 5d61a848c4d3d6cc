"""Faults found by adversarial probing of the integrated tree: crafted one-time files,
result sets of every mode; each test failed on the tree before its fix."""

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import yaml
from helpers import tiny_tmpfs

from homodyne.cli import main
from homodyne.data.errors import DataFileError
from homodyne.onetime.data import read_one_time

G2 = "/xpcs/multitau/normalized_g2"
ERR = "/xpcs/multitau/normalized_g2_err"
DELAYS = "/xpcs/multitau/delay_list"
FRAME_TIME = "/entry/instrument/detector_1/frame_time"
Q_LIST = "/xpcs/qmap/dynamic_v_list_dim0"


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "homodyne.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def _multitau(path, **replace):
    """A small valid multi-tau result (12 delays, 2 q bins); ``replace`` swaps datasets."""
    tau = np.arange(1, 13, dtype=float)
    g2 = 1 + 0.2 * np.exp(-2 * np.outer(tau * 1e-3, [5.0, 20.0]))
    sets = {G2: g2, ERR: np.full_like(g2, 1e-3), DELAYS: tau,
            FRAME_TIME: np.array([[1e-3]]), "/entry/start_time": "2024-01-01 00:00:00",
            Q_LIST: np.array([0.004, 0.008])}
    sets.update(replace)
    with h5py.File(path, "w") as h5:
        for name, value in sets.items():
            if value is GROUP:
                h5.create_group(name)
            elif value is not None:
                h5[name] = value
    return path


GROUP = object()
CRAFTED = {
    "nan delay": ({DELAYS: np.r_[1.0, np.nan, np.arange(3, 13.0)]}, "two finite delays > 0"),
    "negative delays": ({DELAYS: -np.arange(1, 13.0)}, "two finite delays > 0"),
    "zero delays": ({DELAYS: np.zeros(12)}, "two finite delays > 0"),
    "no delays": ({DELAYS: np.zeros(0), G2: np.zeros((0, 2)), ERR: np.zeros((0, 2))},
                  "two finite delays > 0"),
    "nan q": ({Q_LIST: np.array([np.nan, 0.008])}, "q values must be finite and > 0"),
    "empty frame time": ({FRAME_TIME: np.zeros(0)}, "frame_time must be one finite time > 0"),
    "text frame time": ({FRAME_TIME: "abc"}, "frame_time is of type object, not numbers"),
    "g2 a group": ({G2: GROUP}, "normalized_g2 has shape None"),
    "g2 text": ({G2: "hello"}, r"normalized_g2 has shape \(\)"),
    "g2 huge": ({G2: h5py.Empty("f8")}, "normalized_g2 has shape None"),
}


@pytest.mark.parametrize("craft", CRAFTED, ids=list(CRAFTED))
def test_crafted_multitau_file_gives_one_data_error(tmp_path, craft):
    replace, message = CRAFTED[craft]
    path = _multitau(tmp_path / "m.hdf", **replace)
    with pytest.raises(DataFileError, match=message):
        read_one_time(path)


def test_declared_huge_g2_is_refused_before_reading(tmp_path):
    path = _multitau(tmp_path / "m.hdf", **{G2: None})
    with h5py.File(path, "a") as h5:  # 80 GB declared, nothing stored
        h5.create_dataset(G2, shape=(100_000, 100_000), dtype="f8", chunks=(1000, 1000))
    with pytest.raises(DataFileError, match=r"has shape \(100000, 100000\); 12 delays"):
        read_one_time(path)


def test_every_flipped_byte_of_a_multitau_file_reads_or_gives_a_data_error(tmp_path):
    good = _multitau(tmp_path / "m.hdf").read_bytes()
    bad = tmp_path / "b.hdf"
    for offset in range(0, min(len(good), 6000), 3):
        flipped = bytearray(good)
        flipped[offset] ^= 0xFF
        bad.write_bytes(flipped)
        try:
            read_one_time(bad)
        except DataFileError:
            pass


def test_one_time_file_without_usable_points_is_refused_and_writes_nothing(tmp_path,
                                                                           monkeypatch, capsys):
    path = _multitau(tmp_path / "m.hdf", **{ERR: np.zeros((12, 2))})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(
        {"analysis_mode": "one_time", "experimental_data": {"file_path": str(path)},
         "output": {"plots": False}}))
    assert main(["--config", "c.yaml", "--output-dir", "out"]) == 2
    assert "no q bin has two usable points (finite g2, finite sigma > 0" in \
        capsys.readouterr().err
    assert not (tmp_path / "out/parameters.json").exists()


def _two_time_config(tmp_path, *, plots: bool):
    if not (tmp_path / "d.h5").exists():
        assert main(["generate", "--output", str(tmp_path / "d.h5"), "--frames", "40"]) == 0
    cfg = {"analysis_mode": "static", "experimental_data": {"file_path": "d.h5"},
           "initial_parameters": {"values": [8000.0, -0.4, 80.0]},
           "output": {"plots": plots}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))


def test_overwrite_without_plots_leaves_no_figure_of_the_previous_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _two_time_config(tmp_path, plots=True)
    assert main(["--config", "c.yaml", "--output-dir", "out"]) == 0
    assert (tmp_path / "out/scaling_per_angle.png").exists()
    _two_time_config(tmp_path, plots=False)
    assert main(["--config", "c.yaml", "--output-dir", "out", "--overwrite"]) == 0
    left = sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith("."))
    assert left == ["fit.h5", "fit.log", "parameters.json"], left


def _npz(path, **replace):
    tau = np.logspace(-4, 0, 12)
    arrays = {"tau": tau, "q": np.array([0.005]), "g2": 1 + 0.2 * np.exp(-20 * tau)[:, None],
              "sigma": np.full((12, 1), 1e-3)}
    np.savez(path, **{**arrays, **replace})
    return path


@pytest.mark.parametrize("craft, message", [
    ("objects", "array 'tau' is unreadable: Object arrays cannot be loaded"),
    ("text", "array 'tau' holds <U1 values, not real numbers"),
    ("complex", "array 'tau' holds complex128 values, not real numbers"),
    ("not a zip", "not a readable NPZ file"),
    ("truncated", "not a readable NPZ file"),
])
def test_crafted_npz_table_gives_one_data_error(tmp_path, craft, message):
    path = tmp_path / "t.npz"
    tau = np.logspace(-4, 0, 12)
    if craft == "objects":
        _npz(path, tau=np.array([None] * 12, dtype=object))
    elif craft == "text":
        _npz(path, tau=np.array(["a"] * 12))
    elif craft == "complex":
        _npz(path, tau=tau + 1j)
    elif craft == "not a zip":
        path.write_bytes(b"PK\x03\x04garbage" * 10)
    else:
        path.write_bytes(_npz(path).read_bytes()[:300])
    with pytest.raises(DataFileError, match=message):
        read_one_time(path)


def test_exclude_diagonal_frames_leaving_too_few_points_is_refused_before_the_fit(
        tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _two_time_config(tmp_path, plots=False)
    cfg = yaml.safe_load((tmp_path / "c.yaml").read_text())
    cfg["experimental_data"]["exclude_diagonal_frames"] = 39  # 40 frames: 1 point kept
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["validate", "--config", "c.yaml"]) == 2
    assert "exclude_diagonal_frames: 39 keeps 1 of the 780 selected points; a fit of 5 " \
        "parameters needs at least 100: use a smaller value" in capsys.readouterr().err


def test_streaming_cli_fit_with_checkpoints_runs_and_resumes(tmp_path, monkeypatch):
    """The data fingerprint of a checkpointed fit read rows through a renamed method: every
    such run ended in an AttributeError traceback."""
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--output", "d.h5", "--frames", "60", "--angles", "0,90"]) == 0
    cfg = {"analysis_mode": "static", "experimental_data": {"file_path": "d.h5"},
           "initial_parameters": {"values": [8000.0, -0.4, 80.0]}, "output": {"plots": False},
           "optimization": {"streaming": {
               "enable_checkpoints": True, "checkpoint_dir": "ck", "checkpoint_frequency": 2,
               "checkpoint_min_interval_s": 0}},
           "performance": {"strategy_override": "streaming", "max_batch_size": 1000}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["--config", "c.yaml", "--output-dir", "a"]) == 0
    assert sorted((tmp_path / "ck").glob("homodyne_state_batch_*.h5"))
    first = (tmp_path / "a/parameters.json").read_text()
    assert main(["--config", "c.yaml", "--output-dir", "a", "--overwrite"]) == 0
    log = (tmp_path / "a/fit.log").read_text()
    assert "resum" in log.lower(), log[-2000:]
    again = (tmp_path / "a/parameters.json").read_text()
    assert json.loads(again)["parameters"] == json.loads(first)["parameters"]


def test_a_fit_never_overwrites_another_fits_checkpoint_of_the_same_batch(tmp_path):
    from homodyne.optimization.checkpoint_manager import CheckpointManager

    state = {"parameters": np.arange(3.0), "batch_idx": 10}
    first = CheckpointManager(tmp_path / "ck")
    path = first.save_checkpoint(10, state, fingerprint="A" * 64)
    kept = path.read_bytes()
    other = CheckpointManager(tmp_path / "ck")
    with pytest.raises(FileExistsError, match="belongs to another fit .* give each fit its own "
                                              "optimization.streaming.checkpoint_dir"):
        other.save_checkpoint(10, {**state, "parameters": -np.arange(3.0)},
                              fingerprint="B" * 64)
    assert path.read_bytes() == kept and first.validate_checkpoint(path)
    assert first.save_checkpoint(10, state, fingerprint="A" * 64) == path  # its own: replaced


def test_sigterm_while_results_are_written_leaves_the_previous_set_and_no_litter(
        tmp_path, monkeypatch, capsys):
    import os
    import signal

    import homodyne.pipeline as pipeline

    monkeypatch.chdir(tmp_path)
    _two_time_config(tmp_path, plots=False)
    assert main(["--config", "c.yaml", "--output-dir", "out"]) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    write = pipeline.write_two_time_outputs

    def terminated(*a, **kw):
        os.kill(os.getpid(), signal.SIGTERM)  # a batch system stops the job here
        return write(*a, **kw)

    monkeypatch.setattr(pipeline, "write_two_time_outputs", terminated)
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert main(["--config", "c.yaml", "--output-dir", "out", "--overwrite"]) == 143
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    assert "homodyne: interrupted (SIGTERM); results already in the output folder are " \
        "untouched" in capsys.readouterr().err
    after = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()
             if p.name != "fit.incomplete.log"}
    assert after == before


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tiny tmpfs needs root")
def test_disk_full_in_the_middle_of_fit_h5_is_a_clean_error_not_a_segfault(tmp_path):
    """HDF5 failing to flush fit.h5 on a full disk left a broken file object that crashed
    the interpreter (exit 139) after the error message."""
    assert main(["generate", "--output", str(tmp_path / "d.h5"), "--frames", "200"]) == 0
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(
        {"analysis_mode": "static", "experimental_data": {"file_path": str(tmp_path / "d.h5")},
         "initial_parameters": {"values": [8000.0, -0.4, 80.0]}, "output": {"plots": False}}))
    with tiny_tmpfs(tmp_path, "96k") as mnt:
        proc = run_cli("--config", str(tmp_path / "c.yaml"), "--output-dir",
                       str(mnt / "out"), "--quiet")
        assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
        assert proc.stderr.strip().splitlines()[-1].startswith(
            f"homodyne: error: could not write the results to {mnt / 'out'} (No space left "
            "on device)"), proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr and "Logging error" not in proc.stderr
        assert not (mnt / "out/parameters.json").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tiny tmpfs needs root")
def test_checkpoint_dir_filling_up_only_warns_and_the_fit_exits_cleanly(tmp_path):
    """A checkpoint save failing mid-flush left a broken HDF5 object: the fit wrote its
    results, then the interpreter crashed on exit (139)."""
    assert main(["generate", "--output", str(tmp_path / "d.h5"), "--frames", "60",
                 "--angles", "0,90"]) == 0
    with tiny_tmpfs(tmp_path, "64k") as mnt:
        (mnt / "filler").write_bytes(b"\0" * (64 - 12) * 1024)
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(
            {"analysis_mode": "static", "experimental_data": {"file_path": "d.h5"},
             "initial_parameters": {"values": [8000.0, -0.4, 80.0]},
             "output": {"plots": False},
             "optimization": {"streaming": {
                 "enable_checkpoints": True, "checkpoint_dir": str(mnt / "ck"),
                 "checkpoint_frequency": 2, "checkpoint_min_interval_s": 0}},
             "performance": {"strategy_override": "streaming", "max_batch_size": 1000}}))
        proc = run_cli("--config", "c.yaml", "--output-dir", "out", "--quiet", cwd=tmp_path)
        assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
        assert "not written: [Errno 28] No space left on device" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert json.loads((tmp_path / "out/parameters.json").read_text())["converged"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tiny tmpfs needs root")
def test_generate_refuses_a_disk_without_room_before_hdf5_writes(tmp_path, capsys):
    """HDF5 running out of disk mid-write printed a traceback and then segfaulted."""
    with tiny_tmpfs(tmp_path, "128k") as mnt:
        with pytest.raises(SystemExit) as stop:
            main(["generate", "--output", str(mnt / "g.h5"), "--frames", "300"])
        assert stop.value.code == 2
        assert f"argument --output: the file needs about 0.8 MiB, {mnt} has 0.1 MiB free; " \
            "free space or choose another --output" in capsys.readouterr().err
        assert list(mnt.iterdir()) == []


def test_a_pipe_as_data_file_is_refused_instead_of_blocking(tmp_path):
    from homodyne.config import ConfigError, load_config

    os.mkfifo(tmp_path / "d.h5")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(
        {"analysis_mode": "static", "experimental_data": {"file_path": "d.h5"},
         "initial_parameters": {"values": [8000.0, -0.4, 80.0]}}))
    with pytest.raises(ConfigError, match=r"d.h5 is not a regular file \(a pipe or device\); "
                                          "point it at a data file"):
        load_config(tmp_path / "c.yaml")
