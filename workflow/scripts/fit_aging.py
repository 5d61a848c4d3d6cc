"""Rule fit_aps_aging (thin glue)."""

from pathlib import Path

from homodyne.production.aging import fit_aging
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821
r = fit_aging(list(snakemake.input), Path(snakemake.output.params).parent,  # noqa: F821
              max_tau_s=snakemake.params.max_tau_s)  # noqa: F821
print(r["result"].summary())
