"""Synthetic two-time datasets in the APS-U layout, written block by block.

Memory is one block of rows at a time, so datasets larger than RAM can be made.
Matrices are stored as upper-triangle halves in square chunks: chunks wholly below
the diagonal are never written and take no disk space. Everything needed to check
a fit later (true parameters, noise level, seed, model settings) is stored as
attributes under ``/homodyne/synthetic``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from homodyne.data.twotime import (
    APSU_BINS,
    APSU_C2,
    APSU_PHI,
    APSU_Q,
    FRAME_TIME,
    SYNTHETIC_ATTRS,
)
from homodyne.model import ModelSpec, c2_rows
from homodyne.output import atomic_path, h5_with_room, remove_stale_temp_files

# HDF5's own bytes beyond the chunks, generously: superblock, groups and the small
# datasets, each matrix's object header, and the chunk index (a B-tree entry per chunk)
METADATA_BYTES = 64 * 1024
METADATA_PER_MATRIX = 8 * 1024
METADATA_PER_CHUNK = 256


@dataclass(frozen=True)
class SyntheticInfo:
    """What was written: the path, the model spec, the truth and the noise."""

    path: str
    spec: ModelSpec
    true_parameters: np.ndarray
    noise_sigma: float
    seed: int
    n_points: int


class NonFiniteSynthetic(ValueError):
    """The parameters asked for give c2 values that are NaN or overflow the dtype."""


def generate_synthetic(path, spec: ModelSpec, params, *, noise_sigma: float = 0.01,
                       seed: int = 0, block_rows: int = 256, dtype: str = "float32",
                       extra_q: tuple[float, ...] = (), more_q: tuple[float, ...] = (),
                       attrs: dict | None = None, overwrite: bool = False) -> SyntheticInfo:
    """Write c2 = model(params) + N(0, noise_sigma^2) for every selected angle.

    Frames 1..spec.n_frames (spec.first_frame is ignored: files always start at 1).
    ``extra_q`` adds decoy q bins (filled with a constant) to exercise q selection;
    ``more_q`` adds real q bins: the same parameters (one shared J(t)) at other q, as a
    multi-q measurement has. ``attrs`` are stored beside the truth (e.g. ``age_s``).
    The result is reproducible: noise comes from a generator seeded by
    (seed, angle, first row of the block), with block_rows stored as an attribute.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    params = np.asarray(params, dtype=np.float64)
    if params.size != spec.n_params:
        raise ValueError(f"expected {spec.n_params} parameters {spec.parameter_names}, "
                         f"got {params.size}")
    if spec.first_frame != 1:
        spec = ModelSpec(**{**_spec_dict(spec), "first_frame": 1})
    n = spec.n_frames
    qs = np.array([spec.q, *more_q, *extra_q], dtype=np.float64)
    n_real = 1 + len(more_q)
    n_phi = spec.n_phi
    chunk = min(n, max(16, block_rows))
    room = (synthetic_file_bytes(n, n_phi * n_real, n_phi * len(extra_q),
                                 block_rows=block_rows, dtype=dtype)
            + sum(np.asarray(v).nbytes for v in (attrs or {}).values()))
    # a generate killed (SIGKILL) while writing this file left its reserved temporary file
    remove_stale_temp_files(os.path.dirname(os.path.abspath(path)), of=os.path.basename(path))
    with atomic_path(path) as tmp, h5_with_room(tmp, room) as h5:
        h5[APSU_Q] = qs
        h5[APSU_PHI] = np.asarray(spec.phi_deg, dtype=np.float64)
        h5[FRAME_TIME] = np.array([[spec.dt]])
        bins = []
        for qi in range(qs.size):
            for k in range(n_phi):
                bins.append(qi * n_phi + k + 1)
        h5[APSU_BINS] = np.asarray(bins, dtype=np.int64)
        grp = h5.require_group(APSU_C2)
        for idx, b in enumerate(bins):
            qi, k = (b - 1) // n_phi, (b - 1) % n_phi
            ds = grp.create_dataset(f"c2_{idx + 1:05d}", shape=(n, n), dtype=dtype,
                                    chunks=(chunk, chunk), fillvalue=0.0)
            if qi >= n_real:
                ds[0:1, :] = 1.0  # decoy bin: constant, just enough to be valid
                ds[:, 0:1] = 1.0
                continue
            spec_q = spec if qi == 0 else ModelSpec(**{**_spec_dict(spec), "q": float(qs[qi])})
            for r0 in range(0, n, block_rows):
                r1 = min(n, r0 + block_rows)
                values, mask = c2_rows(params, spec_q, k, r0, r1)
                rng = np.random.default_rng([seed, k, r0] if qi == 0 else [seed, k, r0, qi])
                noise = rng.standard_normal(values.shape) * noise_sigma
                values = np.triu(np.where(mask, values + noise, values), r0)
                with np.errstate(over="ignore", invalid="ignore"):  # checked just below
                    stored = values[:, r0:].astype(dtype)
                if not np.all(np.isfinite(stored)):  # a file of NaN/Inf is no dataset
                    raise NonFiniteSynthetic(
                        f"the model with parameters {params.tolist()}, noise {noise_sigma:g} "
                        f"gives non-finite c2 values in {dtype} (angle {spec.phi_deg[k]:g}, "
                        f"q {qs[qi]:g}, frames {r0 + 1}..{r1}); choose smaller values")
                ds[r0:r1, r0:] = stored
        meta = h5.require_group(SYNTHETIC_ATTRS)
        labels = dict(
            mode=spec.mode, q=spec.q, dt=spec.dt, gap_h=spec.gap_h, scaling=spec.scaling,
            n_frames=n, phi_deg=np.asarray(spec.phi_deg), parameter_names=
            list(spec.parameter_names),
            true_parameters=params, noise_sigma=float(noise_sigma), seed=int(seed),
            block_rows=int(block_rows), q_values=qs[:n_real], **(attrs or {}),
        )
        meta.attrs.update({k: fixed_length_text(v) for k, v in labels.items()})
    return SyntheticInfo(path, spec, params, float(noise_sigma), int(seed), spec.n_points)


def fixed_length_text(value):
    """Text as fixed-length (UTF-8) strings, other values unchanged: a variable-length
    string lives in a global heap, and a damaged heap or reference hangs HDF5's read of
    it, so the reader leaves variable-length labels out."""
    if isinstance(value, str):
        return np.bytes_(value.encode("utf-8"))
    items = list(value) if isinstance(value, list | tuple | np.ndarray) else None
    if items and all(isinstance(v, str) for v in items):
        return np.array([v.encode("utf-8") for v in items], dtype=bytes)
    return value


def synthetic_file_bytes(n_frames: int, n_matrices: int, n_decoys: int = 0, *,
                         block_rows: int = 256, dtype: str = "float32") -> int:
    """An upper bound of the size of the file ``generate_synthetic`` writes: the whole
    chunks its row blocks fill (the upper triangle, rounded out to chunks; a decoy bin fills
    its first row and column) plus HDF5's metadata. The file's room is reserved up front."""
    n, rows = int(n_frames), int(block_rows)
    chunk = min(n, max(16, rows))
    per_side = -(-n // chunk)
    # the first row block reaching chunk row i starts at row (i*chunk // rows) * rows
    filled = sum(per_side - (i * chunk // rows * rows) // chunk for i in range(per_side))
    chunks = n_matrices * filled + n_decoys * (2 * per_side - 1)
    return (chunks * (chunk * chunk * np.dtype(dtype).itemsize + METADATA_PER_CHUNK)
            + (n_matrices + n_decoys) * METADATA_PER_MATRIX + METADATA_BYTES)


def _spec_dict(spec: ModelSpec) -> dict:
    return dict(mode=spec.mode, q=spec.q, dt=spec.dt, n_frames=spec.n_frames,
                phi_deg=spec.phi_deg, gap_h=spec.gap_h, scaling=spec.scaling,
                first_frame=spec.first_frame, dtype=spec.dtype)
