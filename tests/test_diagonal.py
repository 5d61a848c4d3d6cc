"""``experimental_data.exclude_diagonal_frames: k`` leaves out |t2 - t1| < k frames in
every tier, decided from each point's position (no index array)."""

import jax
import numpy as np
import pytest
from helpers import make_spec, truth_for
from scipy.optimize import least_squares

from homodyne.config import ConfigError, validate_config
from homodyne.data import generate_synthetic, open_two_time
from homodyne.jaxconf import jnp
from homodyne.model import c2_points
from homodyne.optimization.nlsq_wrapper import NLSQWrapper
from homodyne.pipeline import model_spec

N_FRAMES, K = 100, 30  # the band is half of each triangle; its last rows fill whole batches


@pytest.fixture(scope="module")
def band_case(tmp_path_factory):
    spec = make_spec("static", n_frames=N_FRAMES, n_phi=2)
    path = tmp_path_factory.mktemp("band") / "syn.h5"
    generate_synthetic(path, spec, truth_for(spec), noise_sigma=0.01, seed=5, block_rows=32,
                       dtype="float64")
    src = open_two_time(path)
    banded = src.model_spec(mode="static", exclude_diagonal_frames=K)
    y = src.read_packed()
    k = banded.n_scaling_sets
    p0 = banded.pack([0.25] * k, [1.0] * k, [8000.0, -0.4, 80.0])
    bounds = (banded.pack(0.0, 0.5, [1.0, -2.0, -1000.0]),
              banded.pack(1.0, 1.5, [1e5, 0.5, 1000.0]))
    # independent reference: scipy on the kept points only, listed explicitly
    iu = np.triu_indices(N_FRAMES, 1)
    kept = np.flatnonzero(iu[1] - iu[0] >= K)
    g = np.concatenate([a * banded.points_per_angle + kept for a in range(banded.n_phi)])
    plain = src.model_spec(mode="static")

    def resid(p):
        return c2_points(p, jnp.asarray(g), plain) - y[g]

    jac = jax.jit(jax.jacfwd(resid))
    ref = least_squares(lambda p: np.asarray(jax.jit(resid)(p)), p0, bounds=bounds,
                        jac=lambda p: np.asarray(jac(p)), xtol=1e-15, ftol=1e-15, gtol=1e-15)
    return src, banded, plain, y, p0, bounds, ref, g.size


def test_point_count_of_the_band_is_exact(band_case):
    _, banded, plain, *_, n_kept = band_case
    assert banded.n_kept_points == n_kept
    assert plain.n_kept_points == plain.n_points
    assert make_spec(n_frames=10, exclude_diagonal_frames=1).n_kept_points == 3 * 45
    assert make_spec(n_frames=10, exclude_diagonal_frames=2).n_kept_points == 3 * 36
    with pytest.raises(ValueError, match="exclude_diagonal_frames = 10 leaves no point"):
        make_spec(n_frames=10, exclude_diagonal_frames=10)


@pytest.mark.parametrize("tier", ["standard", "streaming"])
def test_band_left_out_gives_the_optimum_of_the_kept_points(band_case, tier):
    """In memory and streamed from disk: scipy's optimum on the kept points, the kept
    point count, and no batch reported failed (band-only batches hold data)."""
    src, banded, plain, y, p0, bounds, ref, n_kept = band_case
    w = NLSQWrapper(batch_size=128)
    r = w.fit_two_time(src, banded, p0, bounds, strategy=tier)
    assert r.strategy == tier.upper() and r.n_points == n_kept
    assert np.all(np.abs((r.parameters - ref.x) / r.uncertainties) < 1e-3)
    d = r.streaming_diagnostics
    assert d["failed_batch_indices"] == [] and d["batch_success_rate"] == 1.0
    # the band matters: fitting every point lands elsewhere
    if tier == "standard":
        full = NLSQWrapper().fit_two_time(None, plain, p0, bounds, y=y)
        assert full.n_points == plain.n_points
        assert np.max(np.abs((full.parameters - ref.x) / r.uncertainties)) > 0.05


def test_config_key_reaches_the_model(band_case, tmp_path):
    src = band_case[0]
    raw = {"experimental_data": {"file_path": str(src.path), "exclude_diagonal_frames": K},
           "initial_parameters": {"parameter_names": ["D0", "alpha", "D_offset"],
                                  "values": [8000.0, -0.4, 80.0]}}
    assert model_spec(validate_config(raw), src).exclude_diagonal_frames == K
    raw["experimental_data"]["exclude_diagonal_frames"] = N_FRAMES
    with pytest.raises(ConfigError, match="leaves no point of the 100 selected frames"):
        model_spec(validate_config(raw), src)
    raw["experimental_data"]["exclude_diagonal_frames"] = -1
    with pytest.raises(ConfigError, match="must be >= 0"):
        validate_config(raw)
