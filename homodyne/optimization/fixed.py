"""Fixed parameters: the solver works on the free subset only (``min == max`` fixes one).

A fixed parameter is not a degenerate bound the solver must respect: it is removed
from the fit, so it never enters a step, the convergence test or the covariance, and
is reported with zero uncertainty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from homodyne.optimization.problems import NormalEquations


@dataclass(frozen=True)
class FreeSubspace:
    """The free coordinates of a full parameter vector; fixed entries keep ``template``."""

    template: np.ndarray  # full vector: fixed entries hold their fixed value
    free: np.ndarray  # bool mask over the full vector

    @classmethod
    def from_bounds(cls, x0, lb, ub) -> FreeSubspace:
        """Parameters with lb == ub are fixed at that value; the others are free."""
        free = np.asarray(lb) < np.asarray(ub)
        return cls(np.where(free, x0, lb).astype(np.float64), free)

    @property
    def n_free(self) -> int:
        return int(self.free.sum())

    def reduce(self, x) -> np.ndarray:
        return np.asarray(x, np.float64)[self.free].copy()

    def expand(self, x_free) -> np.ndarray:
        x = self.template.copy()
        x[self.free] = x_free
        return x

    def reduce_equations(self, ne: NormalEquations) -> NormalEquations:
        idx = np.flatnonzero(self.free)
        return NormalEquations(ne.cost, ne.H[np.ix_(idx, idx)], ne.g[idx], ne.n)

    def embed_matrix(self, m: np.ndarray) -> np.ndarray:
        """A free x free matrix as full p x p, zero in the rows/columns of fixed ones."""
        p = self.free.size
        out = np.zeros((p, p))
        idx = np.flatnonzero(self.free)
        out[np.ix_(idx, idx)] = m
        return out

    def evaluator(self, evaluate):
        """``evaluate`` (full vector -> normal equations) on the free coordinates."""
        return lambda x_free: self.reduce_equations(evaluate(self.expand(x_free)))


def _fixed_items(fixed, names) -> list:
    """``fixed`` as names and indices; booleans only as a full-length mask (True: held),
    since ``[True]`` would otherwise be read as index 1."""
    if isinstance(fixed, str):  # one name, not its letters
        fixed = [fixed]
    items = list(fixed if fixed is not None else ())
    flags = [isinstance(i, bool | np.bool_) for i in items]
    if not any(flags):
        return items
    if all(flags) and len(items) == len(names):
        return [i for i, held in enumerate(items) if held]
    raise ValueError(f"fixed: booleans are only accepted as a mask of one per parameter "
                     f"({len(names)}: {names}), got {items!r}; or name the parameters to "
                     f"hold (names or indices)")


def fix_parameters(p0, lb, ub, fixed, names) -> tuple[np.ndarray, np.ndarray]:
    """Bounds with each parameter in ``fixed`` (names, indices or a full boolean mask)
    pinned at its p0; "contrast" or "offset" names every per-angle entry (contrast[0],
    contrast[1], ...)."""
    lb, ub = np.array(lb, float), np.array(ub, float)
    names = list(names)
    for item in _fixed_items(fixed, names):
        if isinstance(item, int | np.integer):
            if not 0 <= item < len(names):
                raise ValueError(f"fixed: index {item} out of range for {len(names)} "
                                 "parameters")
            hits = [int(item)]
        else:
            hits = [i for i, n in enumerate(names) if n == item or n.startswith(f"{item}[")]
        if not hits:
            raise ValueError(f"fixed: unknown parameter {item!r}; the parameters are "
                             f"{names}")
        for i in hits:
            lb[i] = ub[i] = p0[i]
    return lb, ub
