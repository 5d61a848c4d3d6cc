"""Micro-benchmarks (pytest-benchmark) of the pass kernel and the checkpoint save.

CI runs each once as a plain test (``--benchmark-disable`` in pyproject); time them with
``pytest tests/test_microbench.py --benchmark-enable``. Each also checks its result."""

import itertools

import numpy as np
import pytest
from helpers import make_spec, truth_for

from homodyne.jaxconf import jax, jnp
from homodyne.model import c2_points
from homodyne.optimization.checkpoint_manager import CheckpointManager
from homodyne.optimization.checkpoint_session import PassRecord, checkpoint_state
from homodyne.optimization.passes import PassRunner
from homodyne.optimization.problems import NormalEquations, TwoTimeProblem
from homodyne.optimization.sources import InMemoryData


def test_pass_kernel(benchmark):
    """One full pass (cost, JᵀJ, Jᵀr over 8 batches) equals the dense computation."""
    spec = make_spec("static", n_frames=100, n_phi=3)  # 14,850 points
    truth = truth_for(spec)
    g = jnp.arange(spec.n_points)
    model = jax.jit(lambda p: c2_points(p, g, spec))
    y = np.asarray(model(truth)) + np.random.default_rng(0).normal(0, 0.01, spec.n_points)
    runner = PassRunner(TwoTimeProblem(spec), InMemoryData({"y": y}, spec.n_points, 2000))
    runner.evaluate(truth)  # compile outside the timing
    ne = benchmark(runner.evaluate, truth)
    J = np.asarray(jax.jit(jax.jacfwd(model))(jnp.asarray(truth)))
    r = y - np.asarray(model(truth))
    assert ne.n == spec.n_points
    assert ne.cost == pytest.approx(0.5 * r @ r, rel=1e-10)
    np.testing.assert_allclose(ne.H, J.T @ J, rtol=1e-9, atol=1e-9 * np.abs(J.T @ J).max())
    np.testing.assert_allclose(ne.g, J.T @ r, rtol=1e-7, atol=1e-9 * np.abs(J.T @ r).max())


def test_checkpoint_save(benchmark, tmp_path):
    """A mid-pass checkpoint of a 15-parameter fit after 40 passes: written, valid, and
    read back unchanged."""
    p, rng = 15, np.random.default_rng(1)
    passes = [PassRecord("full", rng.normal(size=p),
                         NormalEquations(float(k), rng.normal(size=(p, p)), rng.normal(size=p),
                                         1000), 0.1, 8) for k in range(40)]
    state = checkpoint_state(passes, solver=None, n_failed=1, recovery_actions=[],
                             excluded={"coarse": set(), "full": {3}}, stage="full",
                             x=rng.normal(size=p), next_batch=7,
                             partial={"H": rng.normal(size=(p, p)), "n": np.int64(5)})
    manager = CheckpointManager(tmp_path, keep_last_n=2)
    batch = itertools.count(1)
    path = benchmark(lambda: manager.save_checkpoint(next(batch), state, fingerprint="fp"))
    assert manager.validate_checkpoint(path)
    back = manager.load_checkpoint(path)
    assert back["fingerprint"] == "fp" and back["n_passes"] == 40
    np.testing.assert_array_equal(back["pass_H"], state["pass_H"])
    np.testing.assert_array_equal(back["excluded_full"], [3])
    np.testing.assert_array_equal(back["partial"]["H"], state["partial"]["H"])
