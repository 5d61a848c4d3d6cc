"""The last four findings of the fault probes (issue 12): a disk filling up during
``homodyne generate``, NPZ/NPY members that declare huge arrays, temporary files left by a
killed run, and interrupts while the console script is still importing. Each test failed
on the tree before its fix."""

import os
import re
import signal
import subprocess
import sys
import tomllib

import numpy as np
import pytest
import yaml
from helpers import HANGUP_DEFAULT, REPO, tiny_tmpfs

from homodyne.data.synthetic import generate_synthetic
from homodyne.model import ModelSpec
from homodyne.output import _host
from homodyne.stopsignals import signal_name

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
INTERRUPTED = "homodyne: interrupted ({}); results already in the output folder are untouched"


@pytest.fixture(scope="module")
def small_fit(tmp_path_factory):
    """A 40-frame static dataset and a config fitting it (no plots)."""
    d = tmp_path_factory.mktemp("small")
    spec = ModelSpec(mode="static", n_frames=40, phi_deg=(0.0, 90.0))
    generate_synthetic(d / "d.h5", spec, spec.pack([0.3, 0.3], [1.0, 1.0], [1e4, -0.5, 100.0]))
    (d / "c.yaml").write_text(yaml.safe_dump(
        {"analysis_mode": "static", "experimental_data": {"file_path": str(d / "d.h5")},
         "initial_parameters": {"values": [8000.0, -0.4, 80.0]}, "output": {"plots": False}}))
    return d


# --- 1. a disk that fills up while homodyne generate writes ---------------------------------

def run_cli(*args, prelude: str = ""):
    """``homodyne ARGS`` in a fresh interpreter (a crash is then an exit status, 139)."""
    code = f"import sys\n{prelude}\nfrom homodyne.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.skipif(not IS_ROOT, reason="mounting a tiny tmpfs needs root")
def test_generate_refuses_a_disk_too_small_for_the_files_real_size(tmp_path):
    """300 frames in 256-row chunks take 0.8 MiB: the check counted 0.4 MiB, let the write
    start on a 640 kB disk, and HDF5 crashed the interpreter (139) when the disk was full."""
    with tiny_tmpfs(tmp_path, "640k") as mnt:
        proc = run_cli("generate", "--output", str(mnt / "g.h5"), "--frames", "300")
        assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
        assert proc.stderr.splitlines()[-1] == (
            f"homodyne generate: error: argument --output: the file needs about 0.8 MiB, {mnt} "
            "has 0.6 MiB free; free space or choose another --output")
        assert list(mnt.iterdir()) == []


FILLED_SINCE_THE_CHECK = """
import errno, os, shutil
real = shutil.disk_usage
shutil.disk_usage = lambda p: real(p)._replace(free=1 << 40)  # the check saw room
if {no_fallocate}:  # a file system that cannot reserve room: only the write guard is left
    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")
    os.posix_fallocate = unsupported
"""


@pytest.mark.skipif(not IS_ROOT, reason="mounting a tiny tmpfs needs root")
@pytest.mark.parametrize("no_fallocate", [False, True], ids=["reserved", "guarded"])
def test_disk_filling_up_during_generate_is_one_clean_error_and_keeps_the_old_file(
        tmp_path, no_fallocate):
    """The free-space check passed, then the disk filled: HDF5 printed a traceback and
    the interpreter segfaulted. Now the room is reserved before HDF5 writes, and a write
    that fails anyway never reaches HDF5; the previous file stays as it was."""
    with tiny_tmpfs(tmp_path, "640k") as mnt:
        (mnt / "g.h5").write_bytes(b"the previous file")
        proc = run_cli("generate", "--output", str(mnt / "g.h5"), "--frames", "300",
                       "--overwrite", prelude=FILLED_SINCE_THE_CHECK.format(
                           no_fallocate=no_fallocate))
        assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
        assert proc.stderr.splitlines() == [
            f"homodyne: error: could not write {mnt / 'g.h5'} (No space left on device); "
            "nothing was written: free space or choose another --output"], proc.stderr[-2000:]
        assert [p.name for p in mnt.iterdir()] == ["g.h5"]
        assert (mnt / "g.h5").read_bytes() == b"the previous file"


def test_the_reserved_room_bounds_the_generated_file(tmp_path):
    """The bound reserved (and checked) before writing is never below the file's size,
    and HDF5 trims the reserve: the file is no bigger than before."""
    from homodyne.data.synthetic import synthetic_file_bytes
    from homodyne.data.twotime import open_two_time

    cases = [(2, 1, 1, "float32", ()), (37, 16, 3, "float64", (0.02,)),
             (300, 256, 2, "float32", ()), (300, 100, 1, "float32", (0.02, 0.03))]
    for n, rows, n_phi, dtype, decoys in cases:
        spec = ModelSpec(mode="static", n_frames=n, phi_deg=tuple(range(0, 30 * n_phi, 30)))
        path = tmp_path / f"{n}-{rows}.h5"
        params = spec.pack(0.3, 1.0, [1e4, -0.5, 100.0])
        generate_synthetic(path, spec, params, noise_sigma=0.0, block_rows=rows, dtype=dtype,
                           extra_q=decoys)
        bound = synthetic_file_bytes(n, n_phi, n_phi * len(decoys), block_rows=rows,
                                     dtype=dtype)
        size = path.stat().st_size
        assert size + 32 * 1024 <= bound < size + 160 * 1024, (n, rows, size, bound)
        with open_two_time(path, q=spec.q) as src:  # the fits of generated data recover
            stored = src.read_packed()  # the truth in many tests; here: all was written
        assert stored.size == spec.n_points and np.all(stored > 0.9), (n, rows)


# --- 2. NPZ/NPY headers that declare huge arrays ----------------------------------------------

def _npy_bytes(shape, payload: bytes, dtype="<f8") -> bytes:
    """A .npy header declaring ``shape`` followed by ``payload`` (whatever its length)."""
    import io

    from numpy.lib import format as npy_format

    b = io.BytesIO()
    npy_format.write_array_header_1_0(b, {"descr": dtype, "fortran_order": False,
                                          "shape": shape})
    return b.getvalue() + payload


def _npz_table(path, tau_member: bytes | None = None, *, tau_chunks=()):
    """A valid one-time NPZ table whose 'tau' member is replaced by ``tau_member`` or
    streamed (deflated) from ``tau_chunks``."""
    import io
    import zipfile

    tau = np.logspace(-4, 0, 12)
    arrays = {"q": np.array([0.005]), "g2": 1 + 0.2 * np.exp(-20 * tau)[:, None],
              "sigma": np.full((12, 1), 1e-3)}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, a in arrays.items():
            b = io.BytesIO()
            np.save(b, a)
            zf.writestr(f"{name}.npy", b.getvalue())
        if tau_member is not None:
            zf.writestr("tau.npy", tau_member)
        else:
            with zf.open("tau.npy", "w", force_zip64=True) as fh:
                for chunk in tau_chunks:
                    fh.write(chunk)
    return path


def test_npz_member_declaring_more_than_it_holds_is_refused_before_reading(tmp_path):
    """A 1 kB member declaring 160 GB: numpy allocated what the header said (MemoryError,
    a traceback) before finding the data missing."""
    from homodyne.data.errors import DataFileError
    from homodyne.onetime.data import read_one_time

    path = _npz_table(tmp_path / "t.npz", _npy_bytes((200_000, 100_000), b"\0" * 1000))
    with pytest.raises(DataFileError, match=re.escape(
            "array 'tau' declares shape (200000, 100000) of float64 (160,000,000,000 bytes) "
            "but holds 1,000 bytes after its header: the file is truncated or corrupt")):
        read_one_time(path)


def test_npz_zip_bomb_is_refused_from_its_header(tmp_path):
    """320 MB of zeros deflate to 0.3 MB: the header and the zip directory agree, so only a
    bound on what a table may declare stops it before it is decompressed into memory."""
    import resource

    from homodyne.data.errors import DataFileError
    from homodyne.onetime.data import read_one_time

    n = 40_000_000
    zeros = b"\0" * (1 << 22)
    whole, rest = divmod(8 * n, len(zeros))
    chunks = [_npy_bytes((n,), b""), *[zeros] * whole, zeros[:rest]]
    path = _npz_table(tmp_path / "bomb.npz", tau_chunks=chunks)
    assert path.stat().st_size < 1 << 20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DataFileError, match=re.escape(
            f"array 'tau' declares shape ({n},) of float64 ({8 * n:,} bytes), more than the "
            "268,435,456 bytes such an array may have")):
        read_one_time(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 100_000  # kB


def test_npy_matrix_declaring_more_than_the_file_holds_is_refused_before_reading(tmp_path):
    from homodyne.data import open_two_time
    from homodyne.data.errors import DataFileError

    path = tmp_path / "c2.npy"
    path.write_bytes(_npy_bytes((20_000, 20_000), b"\0" * 4096, dtype="<f4"))
    with pytest.raises(DataFileError, match=re.escape(
            "the array declares shape (20000, 20000) of float32 (1,600,000,000 bytes) but "
            "holds 4,096 bytes after its header")):
        open_two_time(path)
    path.write_bytes(_npy_bytes((3, 4), b"\0" * 96))
    with pytest.raises(DataFileError, match=re.escape(
            "expected a square two-time matrix, got shape (3, 4)")):
        open_two_time(path)


# --- 3. temporary files of killed runs ----------------------------------------------------------

def _killed_mid_write(folder) -> int:
    """SIGKILL a ``homodyne generate`` into ``folder`` while it writes; its pid."""
    import time

    proc = subprocess.Popen([sys.executable, "-m", "homodyne.cli", "generate", "--output",
                             str(folder / "big.h5"), "--frames", "3000", "--angles", "0,9"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while proc.poll() is None and not list(folder.glob(".tmp-*")):
        time.sleep(0.002)
    proc.kill()
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    return proc.pid


def test_temporary_files_of_killed_runs_are_removed_by_the_next_run(small_fit, tmp_path,
                                                                     caplog):
    """A SIGKILL leaves .tmp-<pid>-* files (generate's file, a result set's staged files,
    a checkpoint being written); the next run that locks the folder removes them, and only
    them: files of processes still running and other names stay."""
    import json
    import logging

    from homodyne.cli import main

    out, ck = tmp_path / "out", tmp_path / "ck"
    out.mkdir()
    ck.mkdir()
    dead = _killed_mid_write(out)
    [left] = [p.name for p in out.glob(".tmp-*")]
    assert re.match(rf"\.tmp-{dead}(s\d+)?\.{_host()}-", left) and left.endswith("-big.h5")
    planted = {out / f".tmp-{dead}-0123abcd-parameters.json": "gone",
               ck / f".tmp-{dead}-89abcdef-homodyne_state_batch_0002.h5": "gone",
               out / f".tmp-{os.getpid()}-00c0ffee-fit.log": "kept",  # a running writer's
               out / ".tmp-notours": "kept", ck / "notes.tmp": "kept"}
    for path in planted:
        path.write_text("partial")
    cfg = yaml.safe_load((small_fit / "c.yaml").read_text())
    cfg["optimization"] = {"streaming": {"enable_checkpoints": True, "checkpoint_dir": str(ck),
                                         "checkpoint_frequency": 2,
                                         "checkpoint_min_interval_s": 0}}
    cfg["performance"] = {"strategy_override": "streaming", "max_batch_size": 500}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with caplog.at_level(logging.INFO, logger="homodyne.output"):
        assert main(["--config", str(tmp_path / "c.yaml"), "--output-dir", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".homodyne.lock", ".tmp-notours", f".tmp-{os.getpid()}-00c0ffee-fit.log", "fit.h5",
         "fit.log", "parameters.json"])
    assert sorted(p.name for p in ck.glob("*tmp*")) == ["notes.tmp"]
    gone = ", ".join(sorted([left, f".tmp-{dead}-0123abcd-parameters.json"]))
    assert f"removed 2 temporary file(s) left in {out} by a run that was killed: {gone}" \
        in caplog.text
    assert f"removed 1 temporary file(s) left in {ck} by a run that was killed: " \
           f".tmp-{dead}-89abcdef-homodyne_state_batch_0002.h5" in caplog.text
    result = json.loads((out / "parameters.json").read_text())
    assert result["status"] == "converged"
    for name, value, se in zip(result["parameter_names"], result["parameters"],
                               result["uncertainties"], strict=True):
        assert abs(value - result["truth"][name]) < 3 * se, (name, value, se)


# --- 4. interrupts while the console script starts ------------------------------------------

def _console_script(prelude: str = HANGUP_DEFAULT) -> list[str]:
    """The command pip's console-script template runs for ``homodyne`` (read from
    pyproject, so the test does not depend on a re-installed script), after ``prelude``."""
    target = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = target["homodyne"].split(":")
    return [sys.executable, "-c",
            f"{prelude}import re\nimport sys\nfrom {module} import {func}\nsys.exit({func}())"]


@pytest.mark.parametrize("after, signum", [
    ("argparse", signal.SIGINT),  # importing the CLI module itself
    ("argparse", signal.SIGTERM),
    ("yaml", signal.SIGTERM),  # the config module, before the fit's own handlers
    ("jax", signal.SIGINT),  # the engine's imports, inside the CLI
    ("argparse", signal.SIGHUP),  # a closed terminal: 129, one line (was no message)
    ("yaml", signal.SIGHUP),
])
def test_interrupt_while_the_console_script_imports_is_one_clean_line(
        small_fit, tmp_path, after, signum):
    """The signal is sent as soon as the child reports (``-X importtime``) that it has
    imported ``after``: deterministic moments in the first ~0.1-2 s of the program."""
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    proc = subprocess.Popen([*_console_script(), "--config", str(small_fit / "c.yaml"),
                             "--output-dir", str(tmp_path / "out"), "--quiet"],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("import time:") and line.rsplit("|", 1)[-1].strip() == after:
            proc.send_signal(signum)
            break
    else:
        pytest.fail(f"{after} was never imported: {''.join(lines)[-2000:]}")
    _, rest = proc.communicate(timeout=120)
    err = "".join(lines) + rest
    said = [ln for ln in err.splitlines() if not ln.startswith("import time:")]
    assert proc.returncode == 128 + signum, (proc.returncode, said[-20:])
    assert "Traceback" not in err and "Exception ignored" not in err, said[-20:]
    # before the fit: the one line; an interrupt that lands in the fit (it waits for an
    # import to end) ends it as the fit's handler does, with its own one line
    what = signal_name(signum)
    assert said == [INTERRUPTED.format(what)] or said[-1].startswith(
        f"homodyne: interrupted by {signal.Signals(signum).name}: "), said[-20:]
    assert not (tmp_path / "out" / "parameters.json").exists()


def test_the_cli_takes_the_signals_over_from_the_console_script(small_fit, tmp_path,
                                                                monkeypatch, capsys):
    """The console script's stop-at-once handlers would exit without removing staged
    files: the CLI replaces them (a caller's own handlers it leaves alone) and puts them
    back afterwards."""
    import homodyne.pipeline as pipeline
    from homodyne.cli import main

    calls = []

    def early(signum, frame):
        calls.append(signum)

    early.homodyne_replaceable = True
    write = pipeline.write_two_time_outputs

    def terminated(*a, **kw):
        os.kill(os.getpid(), signal.SIGTERM)  # a batch system stops the job here
        return write(*a, **kw)

    monkeypatch.setattr(pipeline, "write_two_time_outputs", terminated)
    saved = {s: signal.signal(s, early) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert main(["validate", "--config", str(small_fit / "c.yaml")]) == 0
        assert signal.getsignal(signal.SIGTERM) is early  # given back
        rc = main(["--config", str(small_fit / "c.yaml"), "--output-dir", str(tmp_path)])
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    assert rc == 143 and calls == []
    assert capsys.readouterr().err.strip().endswith(INTERRUPTED.format("SIGTERM"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".homodyne.lock",
                                                          "fit.incomplete.log"]


def test_an_interrupt_during_an_import_is_raised_once_the_import_is_over(tmp_path,
                                                                          monkeypatch):
    """Raised inside a native module's initialisation (jaxlib's, while the CLI imports JAX)
    a KeyboardInterrupt aborted the interpreter (exit -6 and a traceback); it is re-sent
    until the import is over."""
    import time

    from homodyne.cli import _CtrlC

    (tmp_path / "interrupted_module.py").write_text(
        "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\n"
        "for _ in range(20):\n    time.sleep(0.005)\nDONE = True\n")
    monkeypatch.syspath_prepend(tmp_path)
    ctrl_c = _CtrlC((signal.SIGINT,))
    old = signal.getsignal(signal.SIGINT)
    ctrl_c.install()
    try:
        with pytest.raises(KeyboardInterrupt):
            import interrupted_module  # noqa: F401
            time.sleep(5)  # the re-sent signal lands here
        assert sys.modules["interrupted_module"].DONE
    finally:
        ctrl_c.done()
        signal.signal(signal.SIGINT, old)
        sys.modules.pop("interrupted_module", None)


def test_an_interrupt_swallowed_in_a_weakref_callback_is_sent_again(capsys):
    """Raised inside a weakref callback (JAX's caches free objects at any moment) the
    KeyboardInterrupt was printed as 'Exception ignored' and lost: the run went on and
    ended with exit 0."""
    import time
    import weakref

    from homodyne.cli import _CtrlC

    class Cached:
        pass

    def freed(ref):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs here, inside the callback

    obj = Cached()
    ref = weakref.ref(obj, freed)
    ctrl_c = _CtrlC((signal.SIGINT,))
    old = signal.getsignal(signal.SIGINT)
    ctrl_c.install()
    try:
        with pytest.raises(KeyboardInterrupt):
            del obj
            time.sleep(5)  # the re-sent signal lands here
    finally:
        ctrl_c.done()
        signal.signal(signal.SIGINT, old)
    assert ref() is None and "Exception ignored" not in capsys.readouterr().err


def test_a_run_started_with_nohup_is_not_stopped_by_a_hangup(small_fit, tmp_path):
    """SIGHUP ignored at the start (nohup) stays ignored through the imports and the fit:
    closing the terminal must not stop a run meant to outlive it (exit 0, results)."""
    import signal as sig
    import threading
    import time

    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    nohup = "import signal\nsignal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
    proc = subprocess.Popen([*_console_script(nohup), "--config", str(small_fit / "c.yaml"),
                             "--output-dir", str(tmp_path / "out"), "--quiet"],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def hang_up_until_done():
        while proc.poll() is None:
            proc.send_signal(sig.SIGHUP)
            time.sleep(0.02)

    hangups = threading.Thread(target=hang_up_until_done)
    hangups.start()
    _, err = proc.communicate(timeout=300)
    hangups.join()
    said = [ln for ln in err.splitlines() if not ln.startswith("import time:")]
    assert proc.returncode == 0, said[-20:]
    assert (tmp_path / "out" / "parameters.json").exists()
