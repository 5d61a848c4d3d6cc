"""Bad input, interrupted runs and full disks: nothing is lost, everything is explained."""

import copy
import errno
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from helpers import HANGUP_DEFAULT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homodyne.cli import main
from homodyne.config import ConfigError, validate_config
from homodyne.data import DataFileError, open_two_time
from homodyne.output import write_json
from homodyne.pipeline import OutputLock

PKG = Path(__file__).resolve().parents[1] / "homodyne"
EXAMPLES = PKG / "examples"


@pytest.fixture(scope="module")
def datafile(tmp_path_factory):
    d = tmp_path_factory.mktemp("h")
    assert main(["generate", "--output", str(d / "static_example.h5"), "--frames", "120",
                 "--angles", "0,45"]) == 0
    return d / "static_example.h5"


# --- configs: mutations always give one clear ConfigError --------------------------

def _example(datafile):
    raw = yaml.safe_load((EXAMPLES / "static.yaml").read_text())
    raw["experimental_data"]["file_path"] = str(datafile)
    return raw


def _paths(d, prefix=()):
    for k, v in d.items():
        yield (*prefix, k)
        if isinstance(v, dict):
            yield from _paths(v, (*prefix, k))


BAD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
    st.text(max_size=12), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.sampled_from(["/nonexistent/file.h5", "/tmp", "", "2.0e6", "nan", "-1"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_configs_give_one_clear_error(datafile, data):
    raw = _example(datafile)
    paths = list(_paths(raw))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        node = raw
        for k in path[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                break
        if not isinstance(node, dict):
            continue
        action = data.draw(st.sampled_from(["drop", "set", "unknown", "swap_bounds"]))
        if action == "drop":
            node.pop(path[-1], None)
        elif action == "set":
            node[path[-1]] = data.draw(BAD_VALUES)
        elif action == "unknown":
            node[data.draw(st.text(min_size=1, max_size=8))] = 1
        elif isinstance(raw.get("parameter_space"), dict) and \
                isinstance(raw["parameter_space"].get("bounds"), list) and \
                raw["parameter_space"]["bounds"] and \
                isinstance(raw["parameter_space"]["bounds"][0], dict):
            b = raw["parameter_space"]["bounds"][0]
            b["min"], b["max"] = b.get("max"), b.get("min")
    try:
        cfg = validate_config(copy.deepcopy(raw), "mutated.yaml")
    except ConfigError as exc:
        msg = str(exc)
        assert msg.startswith("mutated.yaml: ") and exc.key and exc.problem
        assert "Traceback" not in msg and len(msg) < 600
        return
    # accepted: then it really is usable
    assert cfg.analysis_mode in ("static", "laminar_flow")
    for name, (lo, hi) in cfg.bounds.items():
        assert lo < hi, name


def test_cli_never_prints_a_traceback_for_bad_configs(tmp_path, capsys, datafile):
    cases = {
        "not_yaml.yaml": "experimental_data: [unclosed",
        "list.yaml": "- 1\n- 2\n",
        "nan.yaml": yaml.safe_dump({**_example(datafile), "performance": {"memory_limit_gb":
                                                                           float("nan")}}),
        "dir.yaml": yaml.safe_dump({**_example(datafile),
                                    "experimental_data": {"file_path": str(tmp_path)}}),
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        assert main(["--config", str(tmp_path / name), "--output-dir", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("homodyne: error: ") and "Traceback" not in err, name
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


# --- data files ----------------------------------------------------------------------

def test_bad_data_files_are_named_before_any_fit(tmp_path):
    def apsu(name, matrix):
        p = tmp_path / name
        with h5py.File(p, "w") as h5:
            h5["/xpcs/qmap/dynamic_v_list_dim0"] = [0.005]
            h5["/xpcs/qmap/dynamic_v_list_dim1"] = [0.0]
            h5["/xpcs/twotime/processed_bins"] = [1]
            h5["/xpcs/twotime/correlation_map/c2_00001"] = matrix
        return p

    with pytest.raises(DataFileError, match=r"nan\.h5: .*no finite values"):
        open_two_time(apsu("nan.h5", np.full((20, 20), np.nan)))
    with pytest.raises(DataFileError, match=r"int\.h5: .*dtype int64, expected floating"):
        open_two_time(apsu("int.h5", np.ones((20, 20), np.int64)))
    with pytest.raises(DataFileError, match=r"rect\.h5: .*shape \(20, 30\)"):
        open_two_time(apsu("rect.h5", np.ones((20, 30))))
    p = apsu("bins.h5", np.ones((20, 20)))
    with h5py.File(p, "r+") as h5:
        del h5["/xpcs/twotime/processed_bins"]
        h5["/xpcs/twotime/processed_bins"] = [1, 2]
    with pytest.raises(DataFileError, match="lists 2 bins but"):
        open_two_time(p)


# --- interruptions --------------------------------------------------------------------

def _cli(args, **kw):
    code = HANGUP_DEFAULT + "import runpy\nrunpy.run_module('homodyne.cli', " \
        "run_name='__main__', alter_sys=True)"
    return subprocess.Popen([sys.executable, "-c", code, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.fixture(scope="module")
def slow_setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("sig")
    assert main(["generate", "--output", str(d / "big.h5"), "--frames", "900", "--angles",
                 "0,30,60,90", "--seed", "5"]) == 0
    raw = _example(d / "big.h5")
    raw["optimization"] = {"coarse": False, "streaming": {
        "enable_checkpoints": True, "checkpoint_dir": str(d / "ck"), "checkpoint_frequency": 2,
        "checkpoint_min_interval_s": 0.0}}
    raw["performance"] = {"strategy_override": "streaming", "batch_size": 5000,
                          "enable_progress": False}
    (d / "cfg.yaml").write_text(yaml.safe_dump(raw))
    return d


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_saves_checkpoint_and_best_result_then_resume_finishes(slow_setup, sig):
    d = slow_setup
    out = d / f"out_{sig.name}"
    args = ["--config", str(d / "cfg.yaml"), "--output-dir", str(out)]
    for stale in (d / "ck").glob("*"):
        stale.unlink()
    proc = _cli(args)
    deadline = time.time() + 120
    while not list((d / "ck").glob("homodyne_state_batch_*.h5")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + int(sig), stderr[-2000:]
    assert f"interrupted by {sig.name}: checkpoint saved at batch" in stderr
    assert "run the same command again to resume" in stderr
    best = json.loads((out / "parameters.interrupted.json").read_text())
    assert best["interrupted_by"] == sig.name and all(map(math.isfinite, best["parameters"]))
    assert not (out / "parameters.json").exists()
    again = _cli(args)
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr[-3000:]
    assert "resumes from batch" in stderr
    done = json.loads((out / "parameters.json").read_text())
    assert done["converged"] and done["streaming_diagnostics"]["resumed_from_batch"] > 0


def test_second_run_on_the_same_output_dir_is_refused(tmp_path, capsys, datafile):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_example(datafile)))
    with OutputLock(tmp_path / "out"):
        assert main(["--config", str(cfg), "--output-dir", str(tmp_path / "out")]) == 2
    assert "is in use by pid" in capsys.readouterr().err


def test_second_run_on_the_same_checkpoint_dir_is_refused(tmp_path, datafile):
    from homodyne.optimization.checkpoint_manager import CheckpointManager
    from homodyne.optimization.exceptions import NLSQCheckpointError
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    src = open_two_time(datafile)
    spec = src.model_spec()
    k = spec.n_scaling_sets
    p0 = spec.pack([0.25] * k, [1.0] * k, [8000.0, -0.4, 80.0])
    bounds = (spec.pack(0.0, 0.5, [1, -2, -1000]), spec.pack(1.0, 1.5, [1e5, 0.5, 1000]))
    holder = CheckpointManager(tmp_path / "ck")
    holder.acquire_lock()
    w = NLSQWrapper(checkpoint_config={"enable_checkpoints": True,
                                       "checkpoint_dir": str(tmp_path / "ck")})
    with pytest.raises(NLSQCheckpointError, match="in use by pid"):
        w.fit_two_time(src, spec, p0, bounds)
    holder.release_lock()


# --- full disks ------------------------------------------------------------------------

def test_full_disk_while_writing_results_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "parameters.json"
    write_json(target, {"old": 1})
    real_fsync = os.fsync

    def enospc(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", enospc)
    with pytest.raises(OSError, match="No space left"):
        write_json(target, {"new": 2})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert json.loads(target.read_text()) == {"old": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parameters.json"]


def test_full_disk_during_checkpoints_keeps_fitting_and_reports(tmp_path, datafile,
                                                                monkeypatch):
    from homodyne.optimization.checkpoint_manager import CheckpointManager
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    original = CheckpointManager.save_checkpoint
    calls = {"n": 0}

    def flaky(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *a, **kw)

    monkeypatch.setattr(CheckpointManager, "save_checkpoint", flaky)
    src = open_two_time(datafile)
    spec = src.model_spec()
    k = spec.n_scaling_sets
    p0 = spec.pack([0.25] * k, [1.0] * k, [8000.0, -0.4, 80.0])
    bounds = (spec.pack(0.0, 0.5, [1, -2, -1000]), spec.pack(1.0, 1.5, [1e5, 0.5, 1000]))
    ck = tmp_path / "ck"
    w = NLSQWrapper(strategy_override="streaming", batch_size=2000,
                    checkpoint_config={"enable_checkpoints": True, "checkpoint_dir": str(ck),
                                       "checkpoint_frequency": 1,
                                       "checkpoint_min_interval_s": 0.0})
    r = w.fit_two_time(src, spec, p0, bounds)
    assert r.converged
    errors = r.streaming_diagnostics["checkpoint_errors"]
    assert len(errors) == 1 and "No space left" in errors[0]
    m = CheckpointManager(ck)
    assert all(m.validate_checkpoint(p) for p in m.list_checkpoints())
    assert not list(ck.glob(".tmp-*")) and not list(ck.glob("*.tmp"))


# --- memory limit ---------------------------------------------------------------------

MEMFIT = """
import sys
from homodyne.data import open_two_time
from homodyne.optimization.nlsq_wrapper import NLSQWrapper
src = open_two_time(sys.argv[1]); spec = src.model_spec()
k = spec.n_scaling_sets
p0 = spec.pack([0.25] * k, [1.0] * k, [8000.0, -0.4, 80.0])
b = (spec.pack(0.0, 0.5, [1, -2, -1000]), spec.pack(1.0, 1.5, [1e5, 0.5, 1000]))
r = NLSQWrapper(memory_limit_gb=float(sys.argv[2]), strategy_override="streaming"
                ).fit_two_time(src, spec, p0, b)
# VmHWM is this process's own peak; ru_maxrss would include pytest's (kept across exec)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print("PEAK_MB", int(hwm) / 1024, r.converged)
"""


def test_memory_limit_is_honoured_and_too_small_is_explained(slow_setup):
    data = slow_setup / "big.h5"
    ok = subprocess.run([sys.executable, "-c", MEMFIT, str(data), "1.0"], capture_output=True,
                        text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr[-2000:]
    peak = float(re.search(r"PEAK_MB (\S+)", ok.stdout).group(1))
    assert peak < 1024 and "True" in ok.stdout
    small = subprocess.run([sys.executable, "-c", MEMFIT, str(data), "0.05"],
                           capture_output=True, text=True, timeout=600)
    assert small.returncode != 0
    assert re.search(r"memory_limit_gb = 0.05 is too small .* smallest workable value is "
                     r"\d+\.\d+ GB", small.stderr)


# --- no pickle ------------------------------------------------------------------------

def test_no_pickle_anywhere():
    for path in PKG.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(c?pickle|dill|joblib)\b", text, re.M), path
        assert "allow_pickle=True" not in text, path
        for call in re.findall(r"np\.load\(([^)]*)\)", text):
            assert "allow_pickle=False" in call, (path, call)
