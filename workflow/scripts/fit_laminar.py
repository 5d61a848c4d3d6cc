"""Rule fit_laminar_synthetic (thin glue)."""

from pathlib import Path

from homodyne.production.laminar import fit_laminar_synthetic
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821
s = snakemake.params.spec  # noqa: F821
r = fit_laminar_synthetic(Path(snakemake.output.params).parent, frames=s["frames"],  # noqa: F821
                          angles=tuple(s["angles"]), seed=s.get("seed", 11))
print(r["result"].summary())
