"""Which parameters a numerically null direction of JᵀJ leaves undetermined."""

import numpy as np

from homodyne.optimization.covariance import covariance_from_normal, pinv_normal


def _normal_with_null(v: np.ndarray, seed: int = 0, coupled: bool = False) -> np.ndarray:
    """JᵀJ of a 400 x p Jacobian whose columns are independent except along ``v`` (and, if
    ``coupled``, columns 0 and 1 nearly alike, as D0's and D_offset's are)."""
    rng = np.random.default_rng(seed)
    J = rng.normal(size=(400, v.size))
    if coupled:
        J[:, 1] = J[:, 0] + 0.05 * J[:, 1]
    v = v / np.linalg.norm(v)
    J = J - np.outer(J @ v, v)  # J v = 0: v is null
    return J.T @ J


def test_a_small_loading_on_a_null_direction_leaves_a_correlated_parameter_determined():
    """Was: any loading above 1e-6 on a null eigenvector made a variance infinite, so a
    laminar fit whose shear amplitude and offset were degenerate (beta ~ 0) reported D0,
    alpha and D_offset NOT DETERMINED (loadings 1.1e-6 .. 2.1e-6) although they were measured
    to 1%. The null pair stays undetermined; the parameters outside it get the variance of
    the determined directions."""
    v = np.array([1.5e-6, -1.5e-6, 0.0, 1.0, -1.0])
    H = _normal_with_null(v, coupled=True)
    cov = covariance_from_normal(H, 1.0)
    var = np.diag(cov)
    assert np.isinf(var[3]) and np.isinf(var[4])
    assert np.isfinite(var[:3]).all()
    # the determined parameters' variances are those of the pseudo-inverse
    np.testing.assert_allclose(var[:3], np.diag(pinv_normal(H))[:3], rtol=1e-6)


def test_an_order_one_loading_stays_undetermined():
    """A parameter that moves with the null direction (alpha when D0 = 0) keeps an infinite
    variance, and so does a parameter with a zero column."""
    H = _normal_with_null(np.array([0.0, 0.6, 0.8, 0.0]))
    var = np.diag(covariance_from_normal(H, 1.0))
    assert np.isinf(var[1]) and np.isinf(var[2]) and np.isfinite(var[[0, 3]]).all()
    H0 = _normal_with_null(np.array([1.0, 0.0, 0.0]))  # column 0 is zero
    assert np.isinf(np.diag(covariance_from_normal(H0, 1.0))[0])
