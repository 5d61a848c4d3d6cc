"""Shared test helpers: small model specs, their true parameters, bounds and starts."""

import os
from pathlib import Path

import numpy as np

from homodyne.model import ModelSpec

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("HOMODYNE_DATA_MIRROR", REPO.parent / "shared" / "data" / "real"))

STATIC_PHYS = [1.0e4, -0.5, 100.0]
LAMINAR_PHYS = [1.0e4, -0.5, 100.0, 1.0e-5, 0.2, 1.0e-6, 5.0]


def make_spec(mode="static", n_frames=60, n_phi=3, scaling="individual", **kw) -> ModelSpec:
    return ModelSpec(mode=mode, n_frames=n_frames, phi_deg=tuple(np.linspace(-20, 70, n_phi)),
                     scaling=scaling, **kw)


def truth_for(spec: ModelSpec) -> np.ndarray:
    k = spec.n_scaling_sets
    contrast = np.linspace(0.3, 0.2, k)
    offset = np.linspace(1.0, 1.02, k)
    phys = STATIC_PHYS if spec.mode == "static" else LAMINAR_PHYS
    return spec.pack(contrast, offset, phys)
