"""Covariances from the normal equations JᵀJ, computed in Marquardt-scaled variables.

Pure NumPy on p x p arrays: the solver (convergence test), the driver (the result's
covariance) and ``FitResult.function_covariance`` (derived quantities) share them.
"""

from __future__ import annotations

import numpy as np


def column_scales(H: np.ndarray) -> np.ndarray:
    """Norms of the Jacobian's columns, sqrt(diag(JᵀJ)); 1 where a column is zero."""
    d = np.sqrt(np.clip(np.diag(H), 0.0, None))
    d[~(d > 0)] = 1.0
    return d


# An eigenvalue of the scaled JᵀJ below this fraction of the largest is numerically zero: a
# direction the data do not determine.
NULL_EIGENVALUE = 1e-13


def _null_bound(null_vectors: np.ndarray, floor: float, determined_var: np.ndarray) -> np.ndarray:
    """Parameters a null direction leaves undetermined: those whose variance along it, taken
    at the largest eigenvalue still counted as zero (``floor``), would at least equal their
    variance from the determined directions. A loading of 1e-6 on a parameter outside the
    degeneracy (D0 beside a shear amplitude and offset degenerate at beta ~ 0) leaves it
    determined; a loading of order one (alpha when D0 = 0) does not."""
    if not null_vectors.size:
        return np.zeros(null_vectors.shape[0], bool)
    along_null = (null_vectors ** 2).sum(axis=1) / max(floor, np.finfo(float).tiny)
    return along_null >= determined_var


def covariance_from_normal(H: np.ndarray, scale: float, free=None) -> np.ndarray:
    """scale * H⁻¹ in scaled variables; frozen parameters get NaN and parameters in the
    null space of H (not determined by the data) get an infinite variance."""
    n = H.shape[0]
    free = np.ones(n, bool) if free is None else free
    cov = np.full((n, n), np.nan)
    idx = np.flatnonzero(free)
    if idx.size:
        d = column_scales(H)[idx]
        Hs = H[np.ix_(idx, idx)] / np.outer(d, d)
        w, V = np.linalg.eigh(Hs)
        floor = max(w.max(), 0.0) * NULL_EIGENVALUE
        good = w > floor
        determined_var = (V[:, good] ** 2 / w[good]).sum(axis=1)
        sub = (V[:, good] / w[good]) @ V[:, good].T / np.outer(d, d) * scale
        undetermined = _null_bound(V[:, ~good], floor, determined_var) | (np.diag(H)[idx] <= 0)
        sub[undetermined, undetermined] = np.inf
        cov[np.ix_(idx, idx)] = sub
    return cov


def pinv_normal(H: np.ndarray) -> np.ndarray:
    """Pseudo-inverse of JᵀJ (scaled, rcond 1e-12): finite on the determined subspace
    even when single parameters are not determined by the data."""
    d = column_scales(H)
    return np.linalg.pinv(H / np.outer(d, d), rcond=1e-12, hermitian=True) / np.outer(d, d)
