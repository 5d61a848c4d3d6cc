"""JAX's persistent compilation cache (jaxconf.py): on by default in a per-user folder,
moved or switched off by HOMODYNE_COMPILATION_CACHE, and a kernel loaded from it gives
bit-identical sums to a freshly compiled one."""

import json
import os
import subprocess
import sys

from homodyne.jaxconf import CACHE_ENV, compilation_cache_dir

# one small fit pass in a fresh process: its cache folder and the exact sums it gave
_PASS = """
import json
from helpers import make_spec, truth_for
import numpy as np
from homodyne.jaxconf import jax
from homodyne.model import c2_points
from homodyne.optimization.passes import PassRunner
from homodyne.optimization.problems import TwoTimeProblem
from homodyne.optimization.sources import InMemoryData
spec = make_spec("static", n_frames=40, n_phi=2)
truth = truth_for(spec)
y = np.asarray(c2_points(truth, np.arange(spec.n_points), spec)) + 1e-3 * np.sin(
    np.arange(spec.n_points))
ne = PassRunner(TwoTimeProblem(spec), InMemoryData({"y": y}, spec.n_points, 256)).evaluate(
    truth * 1.01)
print(json.dumps({"dir": jax.config.jax_compilation_cache_dir,
                  "sums": [ne.cost.hex(), [v.hex() for v in ne.H.ravel()],
                           [v.hex() for v in ne.g]]}))
"""


def _run_pass(cache_setting: str, **env_extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update({CACHE_ENV: cache_setting, **env_extra})
    tests = os.path.dirname(__file__)
    out = subprocess.run([sys.executable, "-c", _PASS], env=env, cwd=tests, check=True,
                         capture_output=True, text=True,
                         timeout=300).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_cache_folder_from_environment():
    home = os.path.expanduser("~")
    assert compilation_cache_dir({}) == os.path.join(home, ".cache", "homodyne", "jax")
    assert compilation_cache_dir({"XDG_CACHE_HOME": "/x"}) == "/x/homodyne/jax"
    assert compilation_cache_dir({CACHE_ENV: "on", "XDG_CACHE_HOME": "/x"}) == \
        "/x/homodyne/jax"
    for off in ("off", "0", "false", "No", " none "):
        assert compilation_cache_dir({CACHE_ENV: off}) is None
    assert compilation_cache_dir({CACHE_ENV: "/tmp/hc"}) == "/tmp/hc"


def test_cache_off_writes_nothing_and_cached_kernels_are_bit_identical(tmp_path):
    folder = tmp_path / "cache"
    off = _run_pass("off", XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert off["dir"] is None
    assert not (tmp_path / "xdg").exists()
    cold = _run_pass(str(folder))  # compiles and fills the folder
    assert cold["dir"] == str(folder)
    entries = sorted(p.name for p in folder.iterdir() if p.name.endswith("-cache"))
    assert entries, "nothing was written to the compilation cache"
    warm = _run_pass(str(folder))  # loads the kernels compiled by the previous process
    assert sorted(p.name for p in folder.iterdir() if p.name.endswith("-cache")) == entries
    assert warm["sums"] == cold["sums"] == off["sums"]
