"""One place that configures JAX for this package: float64 must be available.

The model defaults to float64 and the engine accumulates JᵀJ in float64 even when
the model runs in float32, so x64 is switched on before any array is created.
"""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

__all__ = ["jax", "jnp"]
