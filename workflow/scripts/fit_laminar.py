"""Rule fit_laminar_synthetic (thin glue): the result set, then the rule's record."""

from pathlib import Path

from homodyne.production.laminar import fit_laminar_synthetic
from homodyne.production.report import write_fit_record
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821
s = snakemake.params.spec  # noqa: F821
out = Path(snakemake.output.record).parent  # noqa: F821
r = fit_laminar_synthetic(out, frames=s["frames"], angles=tuple(s["angles"]),
                          seed=s.get("seed", 11))
write_fit_record(out)
print(r["result"].summary())
