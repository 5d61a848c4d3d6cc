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
        good = w > max(w.max(), 0.0) * 1e-13
        sub = (V[:, good] / w[good]) @ V[:, good].T / np.outer(d, d) * scale
        null_load = np.abs(V[:, ~good]).max(axis=1) if (~good).any() else np.zeros(idx.size)
        undetermined = (null_load > 1e-6) | (np.diag(H)[idx] <= 0)
        sub[undetermined, undetermined] = np.inf
        cov[np.ix_(idx, idx)] = sub
    return cov


def pinv_normal(H: np.ndarray) -> np.ndarray:
    """Pseudo-inverse of JᵀJ (scaled, rcond 1e-12): finite on the determined subspace
    even when single parameters are not determined by the data."""
    d = column_scales(H)
    return np.linalg.pinv(H / np.outer(d, d), rcond=1e-12, hermitian=True) / np.outer(d, d)
