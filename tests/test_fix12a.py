"""Findings of the probe rounds that were recorded but left (issue 12): the compilation
cache's entries checked against their key and digest, a multi-start fit's report, and the
multi-q root folder."""

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from homodyne.jaxcache import unpack_entry
from homodyne.jaxconf import jax
from homodyne.optimization.restarts import spread_starts

# kernels compiled in a fresh process with the cache in ``folder``: their exact values
_KERNELS = """
from homodyne.jaxconf import jax, jnp
f = jax.jit(lambda x: jnp.sum(jnp.sin(x) * jnp.exp(-x / 3.0)) + jnp.linalg.norm(x))
x = jnp.arange(1000.0)
print(float(f(x)).hex(), float(jnp.cumsum(x ** 2)[-1]).hex(),
      jax.config.jax_compilation_cache_dir)
"""


def _compile_with_cache(folder) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["HOMODYNE_COMPILATION_CACHE"] = str(folder)
    done = subprocess.run([sys.executable, "-c", _KERNELS], env=env,
                          capture_output=True, text=True, timeout=300, check=True)
    return done.stdout.strip(), done.stderr


def _entries(folder) -> dict:
    """key -> (bytes, mtime_ns) of every entry."""
    return {p.name[: -len("-cache")]: (p.read_bytes(), p.stat().st_mtime_ns)
            for p in folder.glob("*-cache")}


def test_cache_entries_damaged_foreign_or_without_atime_are_never_run_nor_swept(tmp_path):
    """probe3 L1: an entry damaged in place (that still looked complete) was warned about
    in every run and never replaced; L2: a valid entry of another kernel under the key
    was loaded and crashed inside JAX (a traceback); L8: entries without an -atime file
    were all removed at start-up."""
    folder = tmp_path / "cache"
    values, err = _compile_with_cache(folder)
    assert err == "" and values.endswith(str(folder))
    before = _entries(folder)
    assert len(before) >= 4
    assert all(unpack_entry(k, raw) is not None for k, (raw, _) in before.items())
    lam = next(k for k in before if k.startswith("jit__lambda"))
    cum = next(k for k in before if k.startswith("jit_cumsum"))
    damaged = bytearray(before[lam][0])
    damaged[len(damaged) // 2] ^= 0x01  # one bit, in place, its -atime kept
    (folder / f"{lam}-cache").write_bytes(bytes(damaged))
    foreign = next(k for k in sorted(before) if k not in (lam, cum))
    (folder / f"{cum}-cache").write_bytes(before[foreign][0])  # another kernel's entry
    kept = next(k for k in sorted(before) if k not in (lam, cum, foreign))
    (folder / f"{kept}-atime").unlink()  # as a JAX that writes no -atime leaves it
    a_dir = next(k for k in sorted(before) if k not in (lam, cum, foreign, kept))
    (folder / f"{a_dir}-cache").unlink()
    (folder / f"{a_dir}-cache").mkdir()  # an entry that is a folder
    (folder / f"{a_dir}-cache" / "x").write_text("x")
    legacy = next(k for k in sorted(before) if k not in (lam, cum, foreign, kept, a_dir))
    raw = before[legacy][0]  # JAX's own format, as homodyne wrote it before the header
    (folder / f"{legacy}-cache").write_bytes(raw[raw.index(legacy.encode()) + len(legacy):])

    again, err = _compile_with_cache(folder)
    assert again == values
    lines = err.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(  # one line for the five entries
        rf"homodyne: compilation cache entry \S+-cache in {folder} not used \((damaged, cut "
        r"short or another kernel's|Is a directory)\); the kernel is compiled and stored "
        r"anew", lines[0]), err
    after = _entries(folder)
    assert after.keys() == before.keys()
    for key in (lam, cum, a_dir, legacy):  # written anew
        assert unpack_entry(key, after[key][0])
    assert after[kept] == before[kept]  # read, not swept
    assert _compile_with_cache(folder) == (values, "")  # silent from now on
    assert _entries(folder) == after


def test_a_jax_without_the_cache_hook_runs_with_the_cache_off_after_one_warning(
        tmp_path, monkeypatch, caplog):
    """A JAX upgrade that drops the private hook must not crash nor write unchecked entries."""
    import jax._src.compilation_cache as cc

    from homodyne import jaxconf

    folder = tmp_path / "cache"
    monkeypatch.delattr(cc, "get_file_cache")
    before = jax.config.jax_compilation_cache_dir
    try:
        with caplog.at_level("WARNING", logger="homodyne.jaxconf"):
            jaxconf.set_compilation_cache(str(folder))
        assert jax.config.jax_compilation_cache_dir is None
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
    assert [r.getMessage() for r in caplog.records] == [
        f"homodyne: the compilation cache {folder} cannot be used (JAX {jax.__version__} has "
        "no hook for checked entries); kernels are compiled in every run: use the JAX version "
        "homodyne pins, or set HOMODYNE_COMPILATION_CACHE to 'off'"]


def _fake_fit(x, cost, *, n_points=100, passes=3, coarse_passes=0, interrupted_by=None,
              pause=0.0):
    import time

    from homodyne.optimization.result import FitResult

    time.sleep(pause)
    x = np.asarray(x, float)
    return FitResult(parameter_names=("a", "b"), parameters=x, uncertainties=np.full(2, 1e-6),
                     covariance=np.eye(2) * 1e-12, cost=cost, n_points=n_points,
                     reduced_chi_squared=1.0, converged=interrupted_by is None,
                     stop_reason=f"interrupted by {interrupted_by}: the best parameters so far "
                     "are kept" if interrupted_by else "converged", strategy="STANDARD",
                     iterations=2, passes=passes, coarse_passes=coarse_passes,
                     wall_time_s=0.0, interrupted_by=interrupted_by)


def _multi_start(monkeypatch, screen_fit, finish, n_starts=6, coarse=True):
    """fit_with_restarts over 1,000 points (a 100-point screening level when ``coarse``)
    with run_fit replaced by ``screen_fit(x, calls)``."""
    from homodyne.optimization import restarts
    from homodyne.optimization.settings import EngineOptions, RestartSettings

    calls = []

    def run_fit(problem, data, x, lb, ub, **kw):
        calls.append(x)
        return screen_fit(np.asarray(x, float), len(calls))

    monkeypatch.setattr(restarts, "run_fit", run_fit)
    data = SimpleNamespace(n_points=1000,
                           subsample=lambda m, batch, dtype: SimpleNamespace(n_points=m))
    return restarts.fit_with_restarts(
        None, data, [0.5, 0.5], [0.0, 0.0], [1.0, 1.0],
        settings=RestartSettings(restarts=n_starts),
        options=EngineOptions(coarse=coarse, coarse_points=100), finish=finish)


def test_multi_start_reports_the_whole_runs_time_passes_and_iterations(monkeypatch):
    """probe3 L4: the result carried the finishing fit's wall time and passes only (0.90 s
    and 3 passes for a 5.2 s run of 8 starts); the screening cost was only in the log."""
    finishes = []

    def finish(x):
        finishes.append(x)
        return _fake_fit(x, 0.1 * len(finishes), n_points=1000, passes=4, coarse_passes=2,
                         pause=0.02)

    best = _multi_start(monkeypatch, lambda x, k: _fake_fit(x, 1.0 + x[0], pause=0.03),
                        finish)
    r = best.restarts
    assert len(finishes) == 3 and r["finished"] == 3 and r["starts"] == 6
    assert (r["screening_passes"], r["finishing_passes"]) == (6 * 3, 3 * 4)
    # full passes are the finishes'; the screening passes ran on the 100-point level
    assert (best.passes, best.coarse_passes, best.coarse_points) == (12, 3 * 2 + 18, 100)
    assert best.iterations == 9 * 2
    assert r["screening_seconds"] >= 6 * 0.03 and r["finishing_seconds"] >= 3 * 0.02
    assert best.wall_time_s == pytest.approx(r["screening_seconds"] + r["finishing_seconds"])
    assert best.as_dict()["restarts"] == r
    assert re.fullmatch(r"screening 18 passes in \d+\.\d\d s, finishing 12 full passes in "
                        r"\d+\.\d\d s", best.summary().splitlines()[4])
    # no screening level (small data): the screening passes are full passes
    finishes.clear()
    small = _multi_start(monkeypatch, lambda x, k: _fake_fit(x, 1.0 + x[0]), finish,
                         coarse=False)
    assert (small.passes, small.coarse_passes) == (6 * 3 + 3 * 4, 3 * 2)


def test_multi_start_stopped_while_screening_keeps_the_best_start_screened(monkeypatch):
    """probe3 L3: a signal during the screening saved the screening fit of the start being
    fitted (a partial pass: 249,750 of 999,000 points, or 0), not the best screened so
    far, and 'the best parameters so far are kept' overstated it."""
    def screen(x, k):  # the 4th start is stopped in a partial pass of a seemingly low cost
        if k == 4:
            return _fake_fit(x, 0.01, n_points=25, interrupted_by="SIGINT")
        return _fake_fit(x, 1.0 + x[0])

    stopped = _multi_start(monkeypatch, screen, finish=lambda x: pytest.fail("finished"))
    starts = spread_starts([0.5, 0.5], [0.0, 0.0], [1.0, 1.0], 6)
    best = min(starts[:3], key=lambda s: s[0])
    assert stopped.status == "interrupted" and stopped.interrupted_by == "SIGINT"
    assert np.array_equal(stopped.parameters, best)
    assert (stopped.cost, stopped.n_points) == (1.0 + best[0], 100)  # honest: its own fit
    assert stopped.stop_reason == (
        "interrupted by SIGINT while screening start 4 of 6 (multi-start): the parameters "
        "are the best of the 3 starts screened so far, fitted on a 100-point subsample, not "
        "on the full data (chi2 and points are the subsample's)")
    r = stopped.restarts
    assert (r["interrupted_while"], r["screened"], r["starts"]) == ("screening", 3, 6)
    assert r["best_start"] == list(best) and r["screening_passes"] == 4 * 3
    assert stopped.summary().splitlines()[0].startswith("INTERRUPTED")
    # stopped in the very first start: that fit as it stood, said so
    first = _multi_start(monkeypatch, lambda x, k: _fake_fit(x, 0.5, n_points=0,
                                                             interrupted_by="SIGTERM"),
                         finish=lambda x: pytest.fail("finished"))
    assert first.status == "interrupted" and first.restarts["screened"] == 0
    assert "the fit of start 1 as it stood, on a 100-point subsample" in first.stop_reason


def test_multi_start_stopped_while_finishing_keeps_the_best_minimum_finished(monkeypatch):
    """After one minimum was finished on the full data, a signal in the next finish
    returned that stopped fit (partial pass); the finished one is the best known."""
    finishes = []

    def finish(x):
        finishes.append(x)
        if len(finishes) == 2:
            return _fake_fit(x, 0.01, n_points=10, interrupted_by="SIGINT")
        return _fake_fit(x, 0.4, n_points=1000)

    stopped = _multi_start(monkeypatch, lambda x, k: _fake_fit(x, 1.0 + x[0]), finish)
    assert len(finishes) == 2 and stopped.status == "interrupted"
    assert np.array_equal(stopped.parameters, finishes[0])
    assert (stopped.cost, stopped.n_points) == (0.4, 1000)
    assert stopped.stop_reason.endswith("while finishing minimum 2 of 3 on the full data "
                                        "(multi-start): the parameters are the one minimum "
                                        "finished so far")
    assert stopped.restarts["interrupted_while"] == "finishing"
    # stopped in the first finish before a full pass: the best screened minimum, said so
    first = _multi_start(monkeypatch, lambda x, k: _fake_fit(x, 1.0 + x[0]),
                         lambda x: _fake_fit(x, 0.0, n_points=0, interrupted_by="SIGTERM"))
    best = min(spread_starts([0.5, 0.5], [0.0, 0.0], [1.0, 1.0], 6), key=lambda s: s[0])
    assert np.array_equal(first.parameters, best) and first.n_points == 100
    assert first.status == "interrupted" and first.stop_reason.endswith(
        "the parameters are the best screened minimum, fitted on a 100-point subsample, not "
        "on the full data (chi2 and points are the subsample's)")


def test_the_multi_q_folder_is_locked_swept_and_never_given_a_single_fit(tmp_path, capsys):
    """probe2 W18 / probe3 L7: the multi-q folder (summary.csv, plots) took no lock and the
    temporary files a killed run left there stayed; temporary files were judged by pid only
    (a folder shared by two hosts). probe3 L5: `--q X` on a multi-q config wrote a single
    fit into the multi-q folder, beside summary.csv and the per-bin folders."""
    import json

    import pandas as pd
    import yaml

    from homodyne.cli import main
    from homodyne.data.synthetic import generate_synthetic
    from homodyne.model import ModelSpec
    from homodyne.output import _host
    from homodyne.pipeline import OutputLock

    spec = ModelSpec(mode="static", n_frames=30, phi_deg=(0.0,))
    generate_synthetic(tmp_path / "d.h5", spec, spec.pack(0.3, 1.0, [1e4, -0.5, 100.0]),
                       more_q=(0.007,))
    root = tmp_path / "out"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "analysis_mode": "static",
        "experimental_data": {"file_path": str(tmp_path / "d.h5"), "q": "all"},
        "initial_parameters": {"values": [1e4, -0.5, 100.0]},
        "performance": {"enable_progress": False},
        "output": {"directory": str(root), "plots": False}}))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    root.mkdir()
    left = {f".tmp-{dead}.{_host()}-0123abcd-summary.csv": False,  # this host's: removed
            f".tmp-{dead}-4567abcd-parameters_vs_q.png": False,  # a name before hosts were in
            f".tmp-{dead}.{_host()}x-89abcdef-summary.csv": True}  # another host's: kept
    for name in left:
        (root / name).write_text("partial")
    assert main(["--config", str(cfg)]) == 0
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [".homodyne.lock", "d", "summary.csv", "parameters_vs_q.png", "parameters_vs_file.png",
         *[n for n, kept in left.items() if kept]])
    with OutputLock(root):  # another run writes the multi-q folder
        assert main(["--config", str(cfg), "--overwrite"]) == 2
    assert f"{root} is in use by pid {os.getpid()}; wait for it to finish" in \
        capsys.readouterr().err

    q01 = root / "d" / "q01" / "parameters.json"
    before = json.loads(q01.read_text())
    q01.write_text(json.dumps({**before, "n_points": 1}))  # so that the refit shows
    assert main(["--config", str(cfg), "--q", "0.007", "--overwrite"]) == 0
    assert not (root / "parameters.json").exists()
    assert json.loads(q01.read_text())["n_points"] == before["n_points"]
    table = pd.read_csv(root / "summary.csv")  # refreshed from both bin folders
    assert list(table["q_index"]) == [0, 1] and list(table["n_points"]) == [before["n_points"]] * 2

    assert main(["--config", str(cfg), "--q", "0.007", "--output-dir", str(root)]) == 2
    assert f"{root} holds a multi-q run (summary.csv and a folder per file and q bin)" in \
        capsys.readouterr().err
    single = tmp_path / "single"
    single.mkdir()
    (single / "parameters.json").write_text("{}")
    assert main(["--config", str(cfg), "--output-dir", str(single)]) == 2
    assert f"{single} holds a single fit (parameters.json): a multi-q run there would mix" in \
        capsys.readouterr().err


SNAKEMAKE = Path(sys.executable).with_name("snakemake")


@pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake not installed")
@pytest.mark.parametrize("key, value, message", [
    ("multiq.runs.multiq_chx.config", "config/fits/nope.yaml",
     "multiq.runs.multiq_chx.config: 'config/fits/nope.yaml' is not a file; name the fit "
     "config of this run (e.g. config/fits/synthetic_aging.yaml)"),
    ("fits.chx.alpha_window", [1.15, 0.85],
     "fits.chx.alpha_window: [1.15, 0.85] is not [low, high] with low < high; give e.g. "
     "[0.85, 1.15]"),
])
def test_the_workflow_plan_refuses_a_missing_run_config_and_a_reversed_window(
        tmp_path, key, value, message):
    """probe4 L7: both passed the dry run (`snakemake -n`) and failed, or selected nothing,
    only when the jobs ran."""
    import yaml
    from helpers import REPO

    cfg = yaml.safe_load((REPO / "config/test.yaml").read_text())
    *parents, last = key.split(".")
    node = cfg
    for k in parents:
        node = node[k]
    node[last] = value
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([str(SNAKEMAKE), "-n", "--nolock", "fit", "--configfile",
                           str(tmp_path / "c.yaml")], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


def test_a_multi_q_run_name_must_be_a_folder_name():
    """probe4 L7: a run named 'a/b' passed the schema (its outputs nested one folder deeper);
    and the package refuses a reversed CHX alpha window too."""
    import yaml
    from helpers import REPO
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    from homodyne.production.chx import check_alpha_window

    schema = str(REPO / "workflow/schemas/config.schema.yaml")
    cfg = yaml.safe_load((REPO / "config/test.yaml").read_text())
    validate(cfg, schema)
    cfg["multiq"]["runs"]["a/b"] = cfg["multiq"]["runs"].pop("multiq_chx")
    with pytest.raises(WorkflowError, match=r"'a/b' does not match"):
        validate(cfg, schema)
    assert check_alpha_window([0.85, 1.15]) == (0.85, 1.15)
    with pytest.raises(ValueError, match=r"fits.chx.alpha_window: \[1.15, 0.85\] is not"):
        check_alpha_window([1.15, 0.85])
