"""Trust under faults (issue 12): one clean error for every bad input, result sets that are
all-or-nothing, files that never follow symlinks, and data that cannot change under a fit."""

import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from homodyne.cli import main
from homodyne.config import ConfigError, load_config
from homodyne.data import DataFileError, open_two_time

EXAMPLES = Path(__file__).resolve().parents[1] / "homodyne" / "examples"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _apsu(path, matrix, *, q=(0.005,), frame_time=None):
    with h5py.File(path, "w") as h5:
        h5["/xpcs/qmap/dynamic_v_list_dim0"] = list(q)
        h5["/xpcs/qmap/dynamic_v_list_dim1"] = [0.0]
        h5["/xpcs/twotime/processed_bins"] = [1]
        h5["/xpcs/twotime/correlation_map/c2_00001"] = matrix
        if frame_time is not None:
            h5["/entry/instrument/detector_1/frame_time"] = frame_time
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A small dataset, its config and one complete result set (the 'previous' results)."""
    d = tmp_path_factory.mktemp("faults")
    assert main(["generate", "--output", str(d / "data.h5"), "--frames", "120",
                 "--angles", "0,45", "--seed", "3"]) == 0
    raw = yaml.safe_load((EXAMPLES / "static.yaml").read_text())
    raw["experimental_data"]["file_path"] = str(d / "data.h5")
    raw["output"] = {"plots": False}
    raw["performance"] = {"enable_progress": False}
    (d / "cfg.yaml").write_text(yaml.safe_dump(raw))
    assert main(["--config", str(d / "cfg.yaml"), "--output-dir", str(d / "old")]) == 0
    return d


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())
            if p.is_file() and p.name != ".homodyne.lock"}  # the lock holds the pid


def _copy_old(fitted, tmp_path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(fitted / "old", out)
    return out


# --- configs -----------------------------------------------------------------------------

def test_config_not_utf8_and_duplicate_keys_are_refused(tmp_path, capsys, fitted):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("analysis_mode: static  # \xe9t\xe9\n".encode("latin-1"))
    assert main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8 text" in err and "save the config as UTF-8" in err
    assert "Traceback" not in err
    dup = tmp_path / "dup.yaml"
    dup.write_text((fitted / "cfg.yaml").read_text() + "analysis_mode: laminar_flow\n"
                   "analysis_mode: static\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'analysis_mode' \(line \d+\); keep "
                                          "only one"):
        load_config(dup)
    nested = tmp_path / "nested.yaml"
    nested.write_text("output:\n  plots: true\n  plots: false\n")
    with pytest.raises(ConfigError, match="duplicate key 'plots'"):
        load_config(nested, require_data=False)


# --- data files ----------------------------------------------------------------------------

def test_bad_data_files_give_one_clear_error(tmp_path):
    ok = np.random.default_rng(0).random((20, 20)) + 1.0
    with pytest.raises(DataFileError, match=r"c2_00001 is 1x1; a two-time matrix needs at "
                                            "least 2 frames"):
        open_two_time(_apsu(tmp_path / "one.h5", np.ones((1, 1))))
    for name, ft in (("zero", 0.0), ("neg", -0.1), ("nan", np.nan), ("empty", np.zeros(0))):
        src = open_two_time(_apsu(tmp_path / f"{name}.h5", ok, frame_time=ft))
        with pytest.raises(DataFileError, match=r"frame_time = .* is not a positive frame "
                                                "time; fix the file or set 'dt'"):
            src.model_spec()
        assert src.model_spec(dt=0.5).dt == 0.5  # the config's dt still works
    with pytest.raises(DataFileError, match=r"dynamic_v_list_dim0 holds non-finite q"):
        open_two_time(_apsu(tmp_path / "nanq.h5", ok, q=(np.nan,)))
    disguised = tmp_path / "matrix.npy"
    shutil.copy(tmp_path / "zero.h5", disguised)
    with pytest.raises(DataFileError, match=r"is an HDF5 file named \.npy; rename it to \.h5"):
        open_two_time(disguised)
    corrupt = bytearray((tmp_path / "zero.h5").read_bytes())
    corrupt[corrupt.find(b"TREE")] ^= 0xFF  # B-tree signature: HDF5 raises RuntimeError
    (tmp_path / "corrupt.h5").write_bytes(bytes(corrupt))
    with pytest.raises(DataFileError, match=r"corrupt.h5: corrupt HDF5 metadata"):
        open_two_time(tmp_path / "corrupt.h5")


def test_data_truncated_during_a_streaming_fit_stops_with_a_data_error(tmp_path, fitted):
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    path = shutil.copy(fitted / "data.h5", tmp_path / "data.h5")
    src = open_two_time(path)
    spec = src.model_spec()
    k = spec.n_scaling_sets
    p0 = spec.pack([0.25] * k, [1.0] * k, [8000.0, -0.4, 80.0])
    bounds = (spec.pack(0.0, 0.5, [1, -2, -1000]), spec.pack(1.0, 1.5, [1e5, 0.5, 1000]))
    reads = {"n": 0}
    real = type(src).read_rows

    def truncating(self, *a, **kw):
        reads["n"] += 1
        if reads["n"] == 3:  # another program cuts the file while the fit runs
            os.truncate(path, os.path.getsize(path) // 2)
        return real(self, *a, **kw)

    src.read_rows = truncating.__get__(src)
    w = NLSQWrapper(strategy_override="streaming", batch_size=2000, enable_progress=False)
    with pytest.raises(DataFileError, match=r"was truncated while being read \(\d[\d,]* bytes "
                                            r"at open, \d[\d,]* now\)"):
        w.fit_two_time(src, spec, p0, bounds)


def _nan_file(fitted, tmp_path, keep):
    path = shutil.copy(fitted / "data.h5", tmp_path / "sparse.h5")
    with h5py.File(path, "r+") as h5:
        for name in h5["/xpcs/twotime/correlation_map"]:
            ds = h5[f"/xpcs/twotime/correlation_map/{name}"]
            m = ds[()]
            i, j = np.indices(m.shape)
            m[~keep(i, j)] = np.nan
            ds[...] = m
    return path


def test_mostly_nan_selection_warns_with_the_fraction_and_tiny_one_is_refused(
        tmp_path, fitted, capsys, caplog):
    sparse = _nan_file(fitted, tmp_path, lambda i, j: (i + j) % 50 == 0)
    args = ["--config", str(fitted / "cfg.yaml"), "--data-file", str(sparse)]
    assert main([*args, "--output-dir", str(tmp_path / "a")]) == 0
    i, j = np.triu_indices(120, 1)
    kept = 2 * int(np.sum((i + j) % 50 == 0))  # two angles
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert f"only {100 * kept / 14280:.2f}% of the selected points are finite ({kept} of " \
           "14,280); the rest (NaN/Inf) were skipped" in warned, warned
    tiny = _nan_file(fitted, tmp_path, lambda i, j: (i == 0) & (j < 40))
    args[-1] = str(tiny)
    assert main([*args, "--output-dir", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "only 78 of the 14,280 selected points are finite (0.55%); a fit of 7 parameters " \
           "needs at least 140" in err, err[-800:]
    assert not (tmp_path / "b" / "parameters.json").exists()


# --- output and checkpoint folders ----------------------------------------------------------

def test_unusable_output_and_checkpoint_folders_are_one_clear_error(tmp_path, fitted, capsys):
    plain = tmp_path / "plain"
    plain.write_text("x")
    cfg = ["--config", str(fitted / "cfg.yaml")]
    assert main([*cfg, "--output-dir", str(plain)]) == 2
    assert f"output folder {plain} is a file; choose another --output-dir" in \
        capsys.readouterr().err
    assert main([*cfg, "--output-dir", str(plain / "sub" / "out")]) == 2
    assert f"lies below the regular file {plain}; choose another --output-dir" in \
        capsys.readouterr().err
    raw = yaml.safe_load((fitted / "cfg.yaml").read_text())
    raw["optimization"] = {"streaming": {"enable_checkpoints": True,
                                         "checkpoint_dir": str(plain / "ck")}}
    (tmp_path / "ck.yaml").write_text(yaml.safe_dump(raw))
    assert main(["--config", str(tmp_path / "ck.yaml"), "--output-dir",
                 str(tmp_path / "o")]) == 2
    assert "checkpoint folder" in capsys.readouterr().err


@pytest.fixture()
def read_only_dir(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    if IS_ROOT:  # root ignores permission bits: a read-only file system it is
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=16k", "tmpfs", str(d)],
                          capture_output=True).returncode:
            pytest.skip("cannot mount a read-only tmpfs")
        yield d
        subprocess.run(["umount", str(d)], check=True)
    else:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)


def test_read_only_output_folder_is_one_clear_error(read_only_dir, fitted, capsys):
    assert main(["--config", str(fitted / "cfg.yaml"), "--output-dir",
                 str(read_only_dir / "out")]) == 2
    err = capsys.readouterr().err
    assert f"output folder {read_only_dir / 'out'} is not writable" in err
    assert "Traceback" not in err
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--output", str(read_only_dir / "x.h5")])
    assert exc.value.code == 2
    assert "cannot write into" in capsys.readouterr().err


# --- homodyne generate ------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--frames", "1"], "argument --frames: need at least 2 frames, got 1"),
    (["--angles", "x,y"], "argument --angles: expected comma-separated numbers, got 'x,y'"),
    (["--dt", "-1"], "argument --dt: must be > 0, got -1.0"),
    (["--physical", "1,2"], "argument --physical: static mode needs 3 values (D0, alpha, "
                            "D_offset), got 2"),
    (["--noise", "nan"], "argument --noise: must be >= 0, got nan"),
])
def test_generate_rejects_bad_arguments_like_argparse(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--output", str(tmp_path / "g.h5"), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: homodyne generate") and f"error: {message}" in err, err
    assert not (tmp_path / "g.h5").exists()


def test_generate_names_overwrite_for_an_existing_output(tmp_path, capsys):
    target = tmp_path / "g.h5"
    target.write_text("precious")
    with pytest.raises(SystemExit):
        main(["generate", "--output", str(target), "--frames", "20"])
    assert f"argument --output: {target} exists; pass --overwrite to replace it" in \
        capsys.readouterr().err
    assert target.read_text() == "precious"
    assert main(["generate", "--output", str(target), "--frames", "20", "--overwrite"]) == 0


# --- Ctrl-C ------------------------------------------------------------------------------------

def test_ctrl_c_while_results_are_written_keeps_the_old_set(tmp_path, fitted, capsys,
                                                             monkeypatch):
    import homodyne.pipeline as pipeline

    out = _copy_old(fitted, tmp_path)
    before = _snapshot(out)

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "write_fit_h5", interrupted)
    try:
        rc = main(["--config", str(fitted / "cfg.yaml"), "--output-dir", str(out),
                   "--overwrite"])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main()")
    assert rc == 130
    err = capsys.readouterr().err
    assert "homodyne: interrupted (Ctrl-C); results already in the output folder are " \
           "untouched" in err and "Traceback" not in err
    after = _snapshot(out)
    assert (out / "fit.incomplete.log").exists()
    after.pop("fit.incomplete.log")
    assert after == before  # parameters, fit.h5 and fit.log all as they were, no temp files


def _wait_until_loaded(proc, library: str, timeout: float = 60.0) -> None:
    """Until the child has mapped ``library`` (so the CLI's own code runs): a fixed sleep
    would land in Python's start-up on a loaded machine."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end and proc.poll() is None:
        try:
            if library in Path(f"/proc/{proc.pid}/maps").read_text():
                return
        except OSError:
            pass
        time.sleep(0.005)


# in main(): the config module loads (yaml), then JAX (jaxlib's native libraries), then the
# fit. The moments are events, not sleeps: with a warm compilation cache the whole fit now
# ends within 0.25 s of start-up, so a fixed delay can land after it.
@pytest.mark.parametrize("library", ["_yaml.cpython", "jaxlib"])
def test_ctrl_c_in_the_first_second_is_a_clean_message(fitted, tmp_path, library):
    proc = subprocess.Popen([sys.executable, "-m", "homodyne.cli", "--config",
                             str(fitted / "cfg.yaml"), "--output-dir", str(tmp_path / "o")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_until_loaded(proc, library)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    # before the fit: the start-up message; an interrupt that lands while a module is
    # imported is raised once the import is over, which may already be inside the fit
    # (a warning of a kernel compilation cut short may follow the line)
    lines = [ln for ln in err.splitlines() if ln.startswith("homodyne: ")]
    assert "Traceback" not in err, err[-2000:]
    assert lines and (lines[-1] == ("homodyne: interrupted (Ctrl-C); results already in the "
                                    "output folder are untouched")
                      or lines[-1].startswith("homodyne: interrupted by SIGINT: ")), err[-2000:]


# --- result sets -------------------------------------------------------------------------------

def test_full_disk_while_writing_results_keeps_the_old_set_and_log(tmp_path, fitted, capsys,
                                                                  monkeypatch):
    import homodyne.output as output

    out = _copy_old(fitted, tmp_path)
    (out / "parameters.interrupted.json").write_text("{}")
    before = _snapshot(out)
    real = output.write_json

    def full(path, payload):
        if Path(path).name.endswith("parameters.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, payload)

    monkeypatch.setattr("homodyne.pipeline.write_json", full)
    assert main(["--config", str(fitted / "cfg.yaml"), "--output-dir", str(out),
                 "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert f"could not write the results to {out} (No space left on device); free space or " \
           "choose another --output-dir; the previous results are untouched" in err
    after = _snapshot(out)
    log = after.pop("fit.incomplete.log").decode()
    assert "INFO" in log and after == before
    monkeypatch.setattr("homodyne.pipeline.write_json", real)
    assert main(["--config", str(fitted / "cfg.yaml"), "--output-dir", str(out),
                 "--overwrite"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [".homodyne.lock", "fit.h5", "fit.log", "parameters.json"], names


@pytest.mark.skipif(not IS_ROOT, reason="mounting a tiny tmpfs needs root")
def test_really_full_disk_is_a_clean_error_not_a_crash(tmp_path, fitted):
    mnt = tmp_path / "small"
    mnt.mkdir()
    old = _snapshot(fitted / "old")
    size = sum(map(len, old.values())) + 96 * 1024
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs")
    try:
        out = mnt / "out"
        shutil.copytree(fitted / "old", out)
        free = shutil.disk_usage(mnt).free
        (mnt / "filler").write_bytes(b"\0" * max(0, free - 12 * 1024))
        before = _snapshot(out)
        proc = subprocess.run([sys.executable, "-m", "homodyne.cli", "--config",
                               str(fitted / "cfg.yaml"), "--output-dir", str(out),
                               "--overwrite"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
        assert "No space left on device" in proc.stderr and "Traceback" not in proc.stderr
        after = _snapshot(out)
        after.pop("fit.incomplete.log", None)
        assert after == before
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_success_clears_interrupted_parameters_and_honours_umask(tmp_path, fitted):
    out = _copy_old(fitted, tmp_path)
    (out / "parameters.interrupted.json").write_text("{}")
    old_mask = os.umask(0o022)
    try:
        assert main(["--config", str(fitted / "cfg.yaml"), "--output-dir", str(out),
                     "--overwrite"]) == 0
    finally:
        os.umask(old_mask)
    assert not (out / "parameters.interrupted.json").exists()
    for name in ("parameters.json", "fit.h5", "fit.log"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name


def test_lock_file_and_log_never_follow_symlinks(tmp_path, fitted, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / "fit.log").symlink_to(victim)
    assert main(["--config", str(fitted / "cfg.yaml"), "--output-dir", str(out)]) == 0
    assert victim.read_text() == "keep me"
    assert not (out / "fit.log").is_symlink() and "INFO" in (out / "fit.log").read_text()
    out2 = tmp_path / "out2"
    out2.mkdir()
    (out2 / ".homodyne.lock").symlink_to(victim)
    assert main(["--config", str(fitted / "cfg.yaml"), "--output-dir", str(out2)]) == 2
    assert "remove it: a symbolic link is never followed" in capsys.readouterr().err
    assert victim.read_text() == "keep me"


# --- keys that do nothing ---------------------------------------------------------------------

def test_max_batch_size_reaches_the_engine(fitted):
    from homodyne.pipeline import make_wrapper, model_spec, open_data, start_and_bounds

    raw = yaml.safe_load((fitted / "cfg.yaml").read_text())
    raw["performance"]["max_batch_size"] = 3000
    from homodyne.config import validate_config

    cfg = validate_config(raw)
    with open_data(cfg) as src:
        spec = model_spec(cfg, src)
        p0, lb, ub = start_and_bounds(cfg, spec, src)
        result = make_wrapper(cfg).fit_two_time(src, spec, p0, (lb, ub))
    assert result.batch_size == 3000
