"""Faults found by a third round of adversarial probing (issue 12, probe3): NPZ tables whose
members zipfile cannot read; JAX's persistent compilation cache after a write that never
finished, in a folder that cannot be written, or locked; a multi-start fit stopped by a signal."""

import io
import os
import struct
import subprocess
import sys
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


# two small kernels compiled in a fresh process with the cache in ``folder``: their exact values
_KERNELS = """
from homodyne.jaxconf import jax, jnp
f = jax.jit(lambda x: jnp.sum(jnp.sin(x) * jnp.exp(-x / 3.0)) + jnp.linalg.norm(x))
x = jnp.arange(1000.0)
print(float(f(x)).hex(), float(jnp.cumsum(x ** 2)[-1]).hex())
"""


def _compile_with_cache(folder) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["HOMODYNE_COMPILATION_CACHE"] = str(folder)
    done = subprocess.run([sys.executable, "-c", _KERNELS], env=env, capture_output=True,
                          text=True, timeout=300, check=True)
    return done.stdout.strip(), done.stderr


def test_cache_entries_of_unfinished_writes_are_removed_not_warned_about_forever(tmp_path):
    """A full disk or a kill while JAX writes an entry leaves it truncated and without its
    -atime file; JAX read it, warned (two lines per kernel) and never replaced it."""
    folder = tmp_path / "cache"
    values, _ = _compile_with_cache(folder)
    entries = sorted(folder.glob("*-cache"))
    assert entries
    for p in entries:  # as a write cut short leaves them
        os.truncate(p, p.stat().st_size // 2)
        p.with_name(p.name[: -len("-cache")] + "-atime").unlink()
    again, err = _compile_with_cache(folder)
    assert again == values
    assert "persistent compilation cache" not in err, err
    assert sorted(folder.glob("*-cache")) == entries  # written anew, complete this time:
    assert _compile_with_cache(folder) == (values, "")  # read without a warning


def _assert_compiled_without(folder, why):
    """The kernels compile with the cache in ``folder`` unused, after one warning saying why."""
    values, err = _compile_with_cache(folder)
    assert values == _compile_with_cache("off")[0]
    assert err.strip().splitlines() == [
        f"homodyne: the compilation cache {folder} cannot be used ({why}); kernels are "
        "compiled in every run: set HOMODYNE_COMPILATION_CACHE to a writable folder, or to "
        "'off'"]


def test_a_cache_folder_that_cannot_be_written_is_one_warning(tmp_path):
    """Was a UserWarning (two lines) from JAX for every kernel read and every kernel
    written (a read-only folder, a .lockfile that is a folder, a path below a file)."""
    (tmp_path / "file").write_text("x")
    below_file = tmp_path / "file" / "cache"
    _assert_compiled_without(below_file, "Not a directory")


def test_a_cache_whose_lock_another_process_keeps_is_not_waited_for(tmp_path):
    """Was a 10 s wait for JAX's .lockfile at every kernel read and write (4 kernels: 89 s)
    and two UserWarnings per kernel."""
    import filelock

    folder = tmp_path / "cache"
    folder.mkdir()
    with filelock.FileLock(folder / ".lockfile"):  # a process stopped inside a cache read
        _assert_compiled_without(folder, "its .lockfile is held by another process")


def _fake_fit(x, cost, interrupted_by=None):
    from homodyne.optimization.result import FitResult

    x = np.asarray(x, float)
    return FitResult(parameter_names=("a", "b"), parameters=x, uncertainties=np.full(2, 1e-6),
                     covariance=np.eye(2) * 1e-12, cost=cost, n_points=100,
                     reduced_chi_squared=1.0, converged=interrupted_by is None,
                     stop_reason="stopped" if interrupted_by else "converged",
                     strategy="STANDARD", iterations=3, passes=3,
                     interrupted_by=interrupted_by)


def test_a_signal_while_multi_start_finishes_a_minimum_stops_the_fit(monkeypatch):
    """Was: the stopped finish was dropped, the next minima were finished in full and a
    complete-looking result (status converged, exit 0) came back after Ctrl-C."""
    from types import SimpleNamespace

    from homodyne.optimization import restarts
    from homodyne.optimization.settings import EngineOptions, RestartSettings

    # every start screens to its own minimum, the cost growing with the first coordinate
    monkeypatch.setattr(restarts, "run_fit",
                        lambda problem, data, x, lb, ub, **kw: _fake_fit(x, 1.0 + x[0]))
    calls = []

    def finish(x):  # Ctrl-C arrives while the best minimum is finished on the full data
        calls.append(x)
        if len(calls) == 1:  # stopped early: its cost is above the others' optimum
            return _fake_fit(x, 0.9, interrupted_by="SIGINT")
        return _fake_fit(x, 0.4)

    result = restarts.fit_with_restarts(
        None, SimpleNamespace(n_points=100), [0.5, 0.5], [0.0, 0.0], [1.0, 1.0],
        settings=RestartSettings(restarts=6), options=EngineOptions(coarse=False),
        finish=finish)
    assert result.status == "interrupted" and result.interrupted_by == "SIGINT"
    assert len(calls) == 1  # the other minima are not finished after the stop


def test_a_csv_table_too_big_or_binary_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """Was: an HDF5 or NPZ file named .csv blamed on its 'header has 1 columns', and a CSV of
    any size read whole (np.loadtxt; a file without a newline by readline)."""
    import h5py

    from homodyne.onetime import data

    npz = _npz(tmp_path / "t.npz", n_tau=40)
    h5 = tmp_path / "t.h5"
    with h5py.File(h5, "w") as f:
        f["x"] = np.arange(3)
    for source, what in ((npz, r"a zip \(NPZ\) file named .csv; rename it to .npz"),
                         (h5, r"an HDF5 file named .csv; rename it to .h5")):
        named_csv = tmp_path / f"{source.stem}.csv"
        named_csv.write_bytes(source.read_bytes())
        with pytest.raises(DataFileError, match=what):
            read_one_time(named_csv)
    good = tmp_path / "g2.csv"
    good.write_text("tau,g2(q=0.005),sigma(q=0.005)\n" + "".join(
        f"{t},{1 + 0.3 * np.exp(-50 * t)},0.01\n" for t in np.logspace(-3, 1, 40)))
    assert read_one_time(good).g2.shape == (40, 1)
    monkeypatch.setattr(data, "MAX_CSV_BYTES", good.stat().st_size - 1)
    with pytest.raises(DataFileError, match=r"holds 1,\d{3} bytes, more than the 1,\d{3} a g2"):
        read_one_time(good)


@pytest.mark.parametrize("restarts, checkpoints, message", [
    (3, True, r"optimization.restarts: 3 starts cannot be combined with "
              r"optimization.streaming.enable_checkpoints .* set restarts to 0 or disable"),
    (10**9, False, r"optimization.restarts: must be between 0 and 10,000 \(starts in all"),
])
def test_restarts_checkpoints_or_a_billion_starts_are_one_config_error(
        tmp_path, capsys, restarts, checkpoints, message):
    """Was: restarts with checkpoints a ValueError traceback (exit 1) after the output folder
    was made; 1e9 restarts tens of GB of Sobol points, then 1e9 screening fits."""
    import re

    import yaml

    from homodyne.cli import main
    from homodyne.data.synthetic import generate_synthetic
    from homodyne.model import ModelSpec

    spec = ModelSpec(mode="static", n_frames=40, phi_deg=(0.0,))
    generate_synthetic(tmp_path / "d.h5", spec, spec.pack(0.3, 1.0, [1e4, -0.5, 100.0]))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "analysis_mode": "static",
        "experimental_data": {"file_path": str(tmp_path / "d.h5")},
        "initial_parameters": {"values": [1e4, -0.5, 100.0]},
        "optimization": {"restarts": restarts, "streaming": {
            "enable_checkpoints": checkpoints, "checkpoint_dir": str(tmp_path / "ck")}},
        "output": {"directory": str(tmp_path / "out")}}))
    assert main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_cache_switch_words_are_not_taken_for_folder_names():
    """Was: HOMODYNE_COMPILATION_CACHE=disabled made a folder 'disabled' in the current
    folder and filled it."""
    from homodyne.jaxconf import CACHE_ENV, compilation_cache_dir

    for off in ("disabled", "Disable", "n", "F"):
        assert compilation_cache_dir({CACHE_ENV: off}) is None
    for on in ("enabled", "Y"):
        assert compilation_cache_dir({CACHE_ENV: on, "XDG_CACHE_HOME": "/x"}) == \
            "/x/homodyne/jax"
    assert compilation_cache_dir({CACHE_ENV: "./my-cache"}) == "./my-cache"


@pytest.mark.parametrize("args, message", [
    (["--angles", "0,nan"], "argument --angles: must be finite numbers, got '0,nan'"),
    (["--physical", "1e4,inf,100"], "argument --physical: must be finite numbers"),
    (["--contrast", "nan"], "argument --contrast: must be finite numbers, got nan"),
    (["--offset", "inf"], "argument --offset: must be finite numbers, got inf"),
    (["--seed", "-1"], "argument --seed: must be >= 0 and < 2**63, got -1"),
    (["--seed", str(2**64)], "argument --seed: must be >= 0 and < 2**63"),
])
def test_generate_refuses_non_finite_values_and_unusable_seeds(tmp_path, capsys, args, message):
    """Was: NaN/Inf angles, contrast, offset or parameters wrote a file of NaN (exit 0); a
    negative seed a ValueError traceback, one beyond int64 a TypeError traceback."""
    from homodyne.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["generate", "--output", str(tmp_path / "d.h5"), "--frames", "20", *args])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_generate_removes_what_a_killed_generate_of_the_same_file_left(tmp_path):
    """Was: the temporary file of a generate killed by SIGKILL (reserved to the full size of
    the dataset by fallocate) stayed forever unless the folder became an output folder."""
    from homodyne.data.synthetic import generate_synthetic
    from homodyne.model import ModelSpec

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    left = tmp_path / f".tmp-{dead}-0123abcd-d.h5"
    other = tmp_path / f".tmp-{dead}-0123abcd-other.h5"  # another file's: not ours to judge
    for f in (left, other):
        f.write_bytes(b"\0" * 4096)
    spec = ModelSpec(mode="static", n_frames=20, phi_deg=(0.0,))
    generate_synthetic(tmp_path / "d.h5", spec, spec.pack(0.3, 1.0, [1e4, -0.5, 100.0]))
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "d.h5"]


def test_multi_q_strict_and_summary_see_a_fit_that_determines_nothing(tmp_path, capsys):
    """Was: with every physical parameter fixed each bin's parameters.json said status
    'undetermined' but summary.csv said 'ok', and --strict exited 0 (ignored for multi-q)."""
    import pandas as pd
    import yaml

    from homodyne.cli import main
    from homodyne.data.synthetic import generate_synthetic
    from homodyne.model import ModelSpec

    spec = ModelSpec(mode="static", n_frames=30, phi_deg=(0.0,))
    generate_synthetic(tmp_path / "d.h5", spec, spec.pack(0.3, 1.0, [1e4, -0.5, 100.0]),
                       more_q=(0.007,))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "analysis_mode": "static",
        "experimental_data": {"file_path": str(tmp_path / "d.h5"), "q": "all"},
        "initial_parameters": {"values": [1e4, -0.5, 100.0]},
        "parameter_space": {"fixed": ["D0", "alpha", "D_offset"]},
        "performance": {"enable_progress": False},
        "output": {"directory": str(tmp_path / "out"), "plots": False}}))
    assert main(["--config", str(cfg)]) == 0
    table = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert list(table["status"]) == ["undetermined: no physical parameter determined "
                                     "(fixed: D0, alpha, D_offset)"] * 2
    assert main(["--config", str(cfg), "--overwrite", "--strict"]) == 5


def test_frame_times_of_a_nanosecond_fit_without_an_overflow_traceback(tmp_path, capsys):
    """Was: OverflowError (Python float t_r ** alpha) from the internal coordinates' move
    into the box, a traceback, exit 1, with experimental_data.dt: 1e-9."""
    import json

    import yaml

    from homodyne.cli import main
    from homodyne.data.synthetic import generate_synthetic
    from homodyne.model import ModelSpec

    spec = ModelSpec(mode="static", n_frames=80, phi_deg=(0.0, 45.0))
    generate_synthetic(tmp_path / "d.h5", spec, spec.pack(0.3, 1.0, [1e4, -0.5, 100.0]),
                       seed=3)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "analysis_mode": "static",
        "experimental_data": {"file_path": str(tmp_path / "d.h5"), "dt": 1e-9},
        "initial_parameters": {"values": [8000.0, -0.4, 80.0]},
        "performance": {"enable_progress": False},
        "output": {"directory": str(tmp_path / "out"), "plots": False}}))
    code = main(["--config", str(cfg)])
    result = json.loads((tmp_path / "out" / "parameters.json").read_text())
    assert code == {"converged": 0, "not_converged": 4, "undetermined": 0}[result["status"]]
    assert "Traceback" not in capsys.readouterr().err


def test_a_signal_while_the_console_script_exits_keeps_the_exit_status(tmp_path):
    """Was exit 130 (no message, or the 'interrupted' line) for a run whose results were all
    written: Ctrl-C landing while Python and JAX shut down (found 1.7-1.85 s into a 1.2 s
    fit); here the signal is sent from an atexit handler, deterministically."""
    script = ("import atexit, os, signal, sys\n"
              "from homodyne import entry\n"
              f"sys.argv = ['homodyne', 'generate', '--output', {str(tmp_path / 'd.h5')!r}, "
              "'--frames', '20']\n"
              "atexit.register(lambda: os.kill(os.getpid(), signal.SIGINT))\n"
              "sys.exit(entry.main())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert (done.returncode, done.stderr) == (0, "")
    assert (tmp_path / "d.h5").is_file()
