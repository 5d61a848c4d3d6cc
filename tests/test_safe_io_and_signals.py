"""The last four findings of the fault probes (issue 12): a disk filling up during
``homodyne generate``, NPZ/NPY members that declare huge arrays, temporary files left by a
killed run, and interrupts while the console script is still importing. Each test failed
on the tree before its fix."""

import os
import signal
import subprocess
import sys
import tomllib

import pytest
import yaml
from helpers import REPO

from homodyne.data.synthetic import generate_synthetic
from homodyne.model import ModelSpec

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


# --- 4. interrupts while the console script starts ------------------------------------------

def _console_script() -> list[str]:
    """The command pip's console-script template runs for ``homodyne`` (read from
    pyproject, so the test does not depend on a re-installed script)."""
    target = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = target["homodyne"].split(":")
    return [sys.executable, "-c",
            f"import re\nimport sys\nfrom {module} import {func}\nsys.exit({func}())"]


@pytest.mark.parametrize("after, signum", [
    ("argparse", signal.SIGINT),  # importing the CLI module itself
    ("argparse", signal.SIGTERM),
    ("yaml", signal.SIGTERM),  # the config module, before the fit's own handlers
    ("jax", signal.SIGINT),  # the engine's imports, inside the CLI
])
def test_interrupt_while_the_console_script_imports_is_one_clean_line(
        small_fit, tmp_path, after, signum):
    """The signal is sent as soon as the child reports (``-X importtime``) that it has
    imported ``after``: deterministic moments in the first ~0.1-2 s of the program."""
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    proc = subprocess.Popen([*_console_script(), "--config", str(small_fit / "c.yaml"),
                             "--output-dir", str(tmp_path / "out")],
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
    what = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
    assert proc.returncode == 128 + signum, (proc.returncode, said[-20:])
    assert said == [INTERRUPTED.format(what)], said[-20:]
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
