"""Recovery strategies from the guide, applied when a fit runs into numerical trouble.

The engine records each application as ``{'batch': …, 'strategy': …}`` in
``result.recovery_actions``. Subclass ``RecoveryStrategyApplicator`` and override
``_apply_strategy`` for custom strategies (as in the guide), then list the name in
``NLSQWrapper.recovery_sequence``.
"""

from __future__ import annotations

import numpy as np

BUILT_IN = {
    "reduce_step_size": 0.5,  # LM: damping multiplied by 1/0.5 (a trial point failed)
    "perturb_parameters": 0.05,  # 5% random noise (the solver stalled)
    "smaller_batch": 0.5,  # halve the batch on a memory error
    "clip_to_bounds": None,  # project onto the box
    "tighten_bounds": 0.9,  # keep the central 90% of each range
}

DESCRIPTIONS = {
    "reduce_step_size": "reduce_step_size ({:.1f}x)",
    "perturb_parameters": "perturb_parameters ({:.0%} noise)",
    "smaller_batch": "smaller_batch ({:.1f}x)",
    "clip_to_bounds": "clip_to_bounds",
    "tighten_bounds": "tighten_bounds ({:.0%} range)",
}


class RecoveryStrategyApplicator:
    """Applies a named strategy to a parameter vector (deterministic for a given seed)."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        """Start the random stream afresh: each fit perturbs alike (a wrapper's second fit,
        or its resume after a stop, drew on where the previous fit had left the stream)."""
        self.rng = np.random.default_rng(getattr(self, "seed", 0))

    def describe(self, strategy_name: str, strategy_param=None) -> str:
        param = BUILT_IN.get(strategy_name) if strategy_param is None else strategy_param
        fmt = DESCRIPTIONS.get(strategy_name)
        return fmt.format(param) if fmt and param is not None else (fmt or strategy_name)

    def apply(self, strategy_name, params, bounds, strategy_param=None):
        param = BUILT_IN.get(strategy_name) if strategy_param is None else strategy_param
        out = self._apply_strategy(strategy_name, np.asarray(params, float), param, bounds)
        lb, ub = bounds
        return np.clip(np.asarray(out, float), lb, ub)

    def _apply_strategy(self, strategy_name, params, strategy_param, bounds):
        lb, ub = (np.asarray(b, float) for b in bounds)
        if strategy_name == "perturb_parameters":
            scale = np.where(params != 0, np.abs(params), 0.01 * np.where(
                np.isfinite(ub - lb), ub - lb, 1.0))
            return params + strategy_param * scale * self.rng.standard_normal(params.size)
        if strategy_name == "clip_to_bounds":
            return np.clip(params, lb, ub)
        if strategy_name == "tighten_bounds":
            mid = np.where(np.isfinite(lb + ub), 0.5 * (lb + ub), params)
            half = 0.5 * strategy_param * np.where(np.isfinite(ub - lb), ub - lb, np.inf)
            return np.clip(params, mid - half, mid + half)
        if strategy_name in ("reduce_step_size", "smaller_batch"):
            return params  # handled by the engine (damping, batch size); params unchanged
        raise ValueError(f"unknown recovery strategy {strategy_name!r}; built-in: "
                         f"{', '.join(BUILT_IN)}")
