"""Rule generate_dataset: a synthetic dataset from the config (thin glue)."""

from homodyne.data.synthetic import generate_synthetic
from homodyne.model import ModelSpec
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821
d, ph = snakemake.params.spec, snakemake.params.physics  # noqa: F821
spec = ModelSpec(mode=d["mode"], q=ph["q"], dt=ph["dt"], n_frames=d["frames"],
                 phi_deg=tuple(d["angles"]), gap_h=ph["gap_h"], scaling="shared")
params = spec.pack(ph["contrast"], ph["offset"], ph[d["mode"]])
info = generate_synthetic(snakemake.output[0], spec, params, noise_sigma=ph["noise"],  # noqa: F821
                          seed=d.get("seed", 0), dtype=d.get("dtype", "float32"),
                          overwrite=True)
print(f"wrote {info.path}: {info.n_points:,} points")
