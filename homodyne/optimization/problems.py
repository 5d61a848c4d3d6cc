"""Least-squares problems the engine can stream: what one batch contributes to JᵀJ.

A problem turns (parameters, a run of consecutive batches of data) into a small
pytree of float64 sums (cost, counts, pieces of JᵀJ and Jᵀr) and assembles those
sums into the full normal equations. The engine never sees a Jacobian.
Points of the near-diagonal band (``ModelSpec.exclude_diagonal_frames``) are
recognised from their position and weighted zero; the per-batch counts reported to
the pass layer include them (points read), the sums do not.

* ``TwoTimeProblem``: the XPCS model; points addressed by global flat index, the
  Jacobian's angle sparsity kept (a point touches only its angle's scaling columns).
* ``CurveProblem``: a user ``model_func(xdata, *params)`` as in the guide, by JAX
  autodiff, or by NumPy with finite differences when it cannot be traced.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np

from homodyne.jaxconf import jax, jnp
from homodyne.model import (
    ModelSpec,
    c2_points_with_jacobian,
    frame_table_host,
    point_coordinates,
)

lax = jax.lax


@dataclass(frozen=True)
class ChunkLayout:
    """How one call walks its data: ``n_batches`` batches of ``batch_size`` points.

    Batch b of a call covers buffer positions [(first + b) B, (first + b + 1) B) and
    global point indices origin + stride * position; positions >= n_valid are padding.
    ``finite``: the data are known to hold no NaN/inf (checked once when loaded), so
    validation need not check each point in every pass.
    """

    batch_size: int
    n_batches: int
    stride: int = 1
    finite: bool = False


@dataclass
class NormalEquations:
    """Assembled sums of one pass: cost = ½ Σ r², H = JᵀJ, g = Jᵀr, n = points used."""

    cost: float
    H: np.ndarray
    g: np.ndarray
    n: int


def _tree_add(a, b):
    return jax.tree_util.tree_map(lambda x, y: x + y, a, b)


def _batch_slices(columns, start, size):
    return {k: lax.dynamic_slice_in_dim(v, start, size, axis=-1) for k, v in columns.items()}


def _validity(columns, size, n_left, validate):
    """Points in range and (when validating) with finite data. ``validate`` is False
    where the data are known to be finite (``ChunkLayout.finite``): the same points."""
    valid = jnp.arange(size) < n_left
    if validate:
        valid &= jnp.isfinite(columns["y"])
        if "w" in columns:
            valid &= jnp.isfinite(columns["w"])
    return valid


def _all_finite(stats) -> jnp.ndarray:
    leaves = [v for v in jax.tree_util.tree_leaves(stats) if jnp.issubdtype(v.dtype, jnp.floating)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in leaves]))


def _count_and_cost(stats):
    """A batch's points read (a left-out band's points count: they hold data) and cost."""
    return stats["n"] + stats.get("n_band", 0), stats["cost"]


def _scan_batches(batch_stats, zero, layout: ChunkLayout, validate: bool,
                  finite=_all_finite, count_and_cost=_count_and_cost):
    """Build a jitted function summing ``batch_stats`` over a call's batches in order.

    Returns (sums, per_batch) where per_batch holds each batch's point count, cost and
    whether its sums were finite (``finite(stats)``; ``count_and_cost(stats)`` gives the
    other two). Only finite batches with ``batch_mask`` set enter the
    sums, so one failed batch never poisons a pass (validation on); with validation
    off (fast mode) nothing is checked and non-finite values propagate.

    Batches wholly past ``n_valid`` (the padding of a pass's last call, e.g. 6 of the 8
    batches of a streamed 1M-point pass's second call) are not computed: the loop runs
    only over the batches holding data (their entries of per_batch stay 0, 0, True), and
    adding their all-zero sums would not change a bit.
    """
    B, G = layout.batch_size, layout.n_batches

    def run(params, ctx, columns, first_batch, origin, n_valid, batch_mask):
        def body(b, carry):
            acc, per = carry
            pos = (first_batch + b) * B
            cols = _batch_slices(columns, pos, B)
            g0 = origin + layout.stride * pos
            stats = batch_stats(params, ctx, cols, g0, n_valid - pos)
            ok = finite(stats) if validate else jnp.array(True)
            use = ok & batch_mask[b]
            acc = jax.tree_util.tree_map(lambda a, v: a + jnp.where(use, v, 0), acc, stats)
            # a batch whose points all lie in a left-out band holds data: not a failure
            n_read, cost = count_and_cost(stats)
            per = tuple(lax.dynamic_update_index_in_dim(a, v.astype(a.dtype), b, 0)
                        for a, v in zip(per, (n_read, cost, ok), strict=True))
            return acc, per

        n_run = jnp.clip((n_valid - first_batch * B + B - 1) // B, 0, G)
        per0 = (jnp.zeros(G, jnp.int64), jnp.zeros(G, jnp.float64), jnp.ones(G, bool))
        return lax.fori_loop(0, n_run, body, (zero(), per0))

    return jax.jit(run)


# Kernels are shared by every problem of one spec in the process (a jitted function is
# compiled once per jit object: a fit's second problem, a test's tenth fit, the production
# fits of one dataset compile nothing); keyed by everything their closures capture.
_KERNELS = 64


def _local_sets(spec: ModelSpec, layout: ChunkLayout) -> int:
    if spec.scaling == "shared":
        return 1
    span = layout.batch_size * layout.stride
    return min(spec.n_phi, math.ceil(span / spec.points_per_angle) + 1)


def _gram_width(spec: ModelSpec, k_local: int) -> int:
    """Columns of a batch's A = [J_physical | J_contrast | J_offset | r] (local sets)."""
    return spec.n_physical + 2 * k_local + 1


def _scaling_rows(G, n_physical: int, k_local: int, xp=np):
    """Rows of ``S`` (see TwoTimeProblem) for the k_local scaling sets of a Gram matrix
    G = AᵀA: per set, its contrast and offset columns against the physical ones, against
    each other, and against r. ``xp`` is numpy or jax.numpy."""
    P, c, o, r = n_physical, n_physical, n_physical + k_local, n_physical + 2 * k_local
    Gc, Go = G[c:o], G[o:r]

    def diag(block):
        return xp.diagonal(block)[:, None]

    return xp.concatenate([Gc[:, :P], Go[:, :P], diag(Gc[:, c:o]), diag(Gc[:, o:r]),
                           diag(Go[:, o:r]), Gc[:, r:], Go[:, r:]], axis=1)


def _two_time_zero(spec: ModelSpec, k_local: int):
    W = _gram_width(spec, k_local)
    K = spec.n_scaling_sets

    def zero():
        f = jnp.float64
        sums = dict(G=jnp.zeros((W, W), f), n=jnp.zeros((), jnp.int64),
                    n_band=jnp.zeros((), jnp.int64))
        if spec.scaling != "shared":
            sums["S"] = jnp.zeros((K + k_local, 2 * spec.n_physical + 5), f)
        return sums

    return zero


@functools.lru_cache(maxsize=_KERNELS)
def _two_time_chunk_fn(spec: ModelSpec, validate: bool, layout: ChunkLayout):
    """Jitted (params, ctx, columns, first_batch, origin, n_valid, mask) -> sums.

    A batch's sums are one Gram matrix G = AᵀA of A = [J_physical | J_contrast |
    J_offset | r] (weighted; the scaling columns of the batch's k_local consecutive
    angles), one matrix product: JᵀJ, Jᵀr and the cost ½ Σ r² are its blocks. Its
    physical and r rows are the same in every batch; with per-angle scaling the scaling
    rows are placed at the batch's first angle in ``S`` (K + k_local rows, see
    ``TwoTimeProblem.assemble``). A non-finite value anywhere in A makes G non-finite
    (its diagonal holds the squares), so one check of G validates the batch."""
    k_local = _local_sets(spec, layout)
    B, P = layout.batch_size, spec.n_physical
    cost_at = _gram_width(spec, k_local) - 1

    def batch_stats(params, ctx, cols, g0, n_left):
        y = cols["y"]
        valid = _validity(cols, B, n_left, validate and not layout.finite)
        # coordinates stay real for padding/NaN points (clipped), so each point keeps
        # its own angle; validity only enters through the weights
        g = jnp.minimum(g0 + layout.stride * jnp.arange(B), spec.n_points - 1)
        in_band = jnp.zeros((), jnp.int64)
        if spec.exclude_diagonal_frames > 1:  # the band is left out by position alone
            _, i, j = point_coordinates(g, spec)
            kept = spec.band_mask(i, j)
            in_band = jnp.sum((valid & ~kept).astype(jnp.int64))
            valid = valid & kept
        c2, dcon, doff, jp, s = c2_points_with_jacobian(params, ctx, g, spec)
        w = valid.astype(jnp.float64)
        if "w" in cols:
            w = w * jnp.where(valid, cols["w"], 0.0)
        r = jnp.where(valid, y - c2, 0.0).astype(jnp.float64) * w
        dcon = dcon.astype(jnp.float64) * w
        doff = doff.astype(jnp.float64) * w
        jp = jp.astype(jnp.float64) * w[:, None]
        s0 = s[0]
        onehot = ((s - s0)[:, None] == jnp.arange(k_local)[None, :]).astype(jnp.float64)
        A = jnp.concatenate([jp, dcon[:, None] * onehot, doff[:, None] * onehot, r[:, None]],
                            axis=1)
        G = A.T @ A
        # a float64 sum of 0/1 values is exact (and compiles to less than an int64 sum)
        sums = dict(G=G, n=jnp.sum(valid, dtype=jnp.float64).astype(jnp.int64),
                    n_band=in_band)
        if spec.scaling != "shared":
            S = jnp.zeros((spec.n_scaling_sets + k_local, 2 * P + 5), jnp.float64)
            sums["S"] = lax.dynamic_update_slice_in_dim(
                S, _scaling_rows(G, P, k_local, jnp), s0, axis=0)
        return sums

    def finite(sums):
        return jnp.all(jnp.isfinite(sums["G"]))

    def count_and_cost(sums):
        return sums["n"] + sums["n_band"], sums["G"][cost_at, cost_at]

    return _scan_batches(batch_stats, _two_time_zero(spec, k_local), layout, validate,
                         finite, count_and_cost)


class TwoTimeProblem:
    """The two-time model over points addressed by global flat index."""

    def __init__(self, spec: ModelSpec, validate: bool = True):
        self.spec = spec
        self.validate = validate
        self.n_params = spec.n_params
        self.parameter_names = spec.parameter_names

    def prepare(self, params):
        """Per parameter vector: the frame table of cumulative integrals and their
        derivatives (O(N P)), on the host (no kernel to compile), placed on the default
        device once per pass."""
        _, _, phys = self.spec.split(np.asarray(params, dtype=np.float64))
        return jax.device_put(frame_table_host(phys, self.spec))

    def _local_sets(self, layout: ChunkLayout) -> int:
        return _local_sets(self.spec, layout)

    def _zero(self, k_local):
        return _two_time_zero(self.spec, k_local)

    def chunk_fn(self, layout: ChunkLayout):
        """Jitted (params, ctx, columns, first_batch, origin, n_valid) -> sums."""
        return _two_time_chunk_fn(self.spec, bool(self.validate), layout)

    def zero_stats(self, layout: ChunkLayout):
        return self._zero(self._local_sets(layout))()

    def assemble(self, stats) -> NormalEquations:
        """The normal equations from a pass's sums: the physical and r blocks of the
        summed Gram matrix G, and per scaling set k the row S[k] = [J_c·J_phys,
        J_o·J_phys, J_c·J_c, J_c·J_o, J_o·J_o, J_c·r, J_o·r] (with shared scaling, the
        one set's rows of G)."""
        spec = self.spec
        P, K = spec.n_physical, spec.n_scaling_sets
        G = np.asarray(stats["G"])
        k_local = (G.shape[0] - P - 1) // 2
        if "S" in stats:
            S = np.asarray(stats["S"])
            S = S[:K] + 0.0  # the padding rows past K are never hit (dynamic slices clamp)
        else:
            S = _scaling_rows(G, P, k_local)
        n = self.n_params
        H = np.zeros((n, n))
        g = np.zeros(n)
        ph = slice(2 * K, n)
        H[ph, ph] = G[:P, :P]
        g[ph] = G[:P, -1]
        for k in range(K):
            c, o = k, K + k
            H[c, c] = S[k, 2 * P]
            H[c, o] = H[o, c] = S[k, 2 * P + 1]
            H[o, o] = S[k, 2 * P + 2]
            H[c, ph] = H[ph, c] = S[k, :P]
            H[o, ph] = H[ph, o] = S[k, P : 2 * P]
            g[c] = S[k, 2 * P + 3]
            g[o] = S[k, 2 * P + 4]
        return NormalEquations(0.5 * float(G[-1, -1]), H, g, int(stats["n"]))


class CurveProblem:
    """A generic ``model_func(xdata, *params)`` fitted to ydata (optionally weighted)."""

    generic_rules = True  # its parameter names mean nothing here (FitResult.generic_rules)

    def __init__(self, model_func, n_params: int, x_sample=None, validate: bool = True,
                 parameter_names=None):
        self.model_func = model_func
        self.n_params = n_params
        self.validate = validate
        self.parameter_names = tuple(parameter_names or (f"p{i}" for i in range(n_params)))
        self._fns: dict = {}
        self.uses_jax = self._traceable(x_sample)
        # largest |weighted data value|: scales the rounding of a residual, so that a fit
        # of noise-free data that stalls at that level is recognised as converged
        self.value_scale = 0.0
        self.sigma_given = False  # weighted by the data's sigma: chi2 judges the fit

    def _traceable(self, x_sample) -> bool:
        if x_sample is None:
            return True
        try:
            out = jax.eval_shape(lambda p, x: self.model_func(x, *p),
                                 jnp.zeros(self.n_params), jnp.asarray(x_sample))
        except Exception as exc:  # noqa: BLE001 - any tracing failure means NumPy fallback
            warnings.warn(
                "model_func cannot be traced by JAX "
                f"({type(exc).__name__}); evaluating it with NumPy and a finite-difference "
                "Jacobian, which is slower. Write it with jax.numpy for speed.",
                RuntimeWarning, stacklevel=3)
            return False
        n = np.shape(x_sample)[-1]
        if getattr(out, "shape", None) not in ((), (n,)):
            raise ValueError(f"model_func returns shape {getattr(out, 'shape', type(out))} for "
                             f"{n} points of xdata; it must return one value per point")
        return True

    def prepare(self, params):
        return None

    def _zero(self):
        n = self.n_params

        def zero():
            f = jnp.float64
            return dict(cost=jnp.zeros((), f), n=jnp.zeros((), jnp.int64),
                        H=jnp.zeros((n, n), f), g=jnp.zeros((n,), f))

        return zero

    def zero_stats(self, layout: ChunkLayout):
        return self._zero()()

    def chunk_fn(self, layout: ChunkLayout):
        key = (layout,)
        if key in self._fns:
            return self._fns[key]
        fn = self._jax_chunk_fn(layout) if self.uses_jax else self._numpy_chunk_fn(layout)
        self._fns[key] = fn
        return fn

    def _jax_chunk_fn(self, layout):
        B = layout.batch_size
        validate = self.validate
        f = self.model_func

        def batch_stats(params, ctx, cols, g0, n_left):
            valid = _validity(cols, B, n_left, validate and not layout.finite)
            x = cols["x"]

            def model(p):
                return jnp.broadcast_to(f(x, *p), (B,)).astype(jnp.float64)

            m, jac = model(params), jax.jacfwd(model)(params)
            w = valid.astype(jnp.float64)
            if "w" in cols:
                w = w * jnp.where(valid, cols["w"], 0.0)
            r = jnp.where(valid, cols["y"] - m, 0.0) * w
            jac = jnp.where(valid[:, None], jac, 0.0) * w[:, None]
            return dict(cost=jnp.sum(r * r), n=jnp.sum(valid.astype(jnp.int64)),
                        H=jac.T @ jac, g=jac.T @ r)

        return _scan_batches(batch_stats, self._zero(), layout, validate)

    def _numpy_chunk_fn(self, layout):
        """NumPy evaluation with a forward-difference Jacobian (step ~ sqrt(eps) |p|)."""
        B = layout.batch_size
        f = self.model_func
        validate = self.validate

        def run(params, ctx, columns, first_batch, origin, n_valid, batch_mask):
            params = np.asarray(params, dtype=np.float64)
            acc = {k: np.asarray(v) for k, v in self._zero()().items()}
            per_n = np.zeros(layout.n_batches, np.int64)
            per_cost = np.zeros(layout.n_batches)
            per_ok = np.ones(layout.n_batches, bool)
            for b in range(layout.n_batches):
                pos = (first_batch + b) * B
                n_left = int(n_valid) - pos
                if n_left <= 0:
                    break
                cols = {k: np.asarray(v)[..., pos : pos + min(B, n_left)]
                        for k, v in columns.items()}
                y = cols["y"]
                valid = np.isfinite(y) if validate else np.ones(y.shape, bool)
                with np.errstate(all="ignore"):
                    m = np.broadcast_to(f(cols["x"], *params), y.shape).astype(np.float64)
                    jac = np.empty((y.size, params.size))
                    for i in range(params.size):
                        h = 1.49e-8 * max(1.0, abs(params[i]))
                        pp = params.copy()
                        pp[i] += h
                        jac[:, i] = (np.broadcast_to(f(cols["x"], *pp), y.shape) - m) / h
                w = valid.astype(np.float64)
                if "w" in cols:
                    w = w * np.where(valid, cols["w"], 0.0)
                r = np.where(valid, y - m, 0.0) * w
                jac = np.where(valid[:, None], jac, 0.0) * w[:, None]
                stats = dict(cost=r @ r, n=int(valid.sum()), H=jac.T @ jac, g=jac.T @ r)
                finite = all(np.all(np.isfinite(v)) for v in stats.values()) if validate \
                    else True
                per_n[b], per_cost[b], per_ok[b] = stats["n"], stats["cost"], finite
                if finite and batch_mask[b]:
                    acc = {k: acc[k] + stats[k] for k in acc}
            return acc, (per_n, per_cost, per_ok)

        return run

    def assemble(self, stats) -> NormalEquations:
        return NormalEquations(0.5 * float(stats["cost"]), np.asarray(stats["H"], float),
                               np.asarray(stats["g"], float), int(stats["n"]))
