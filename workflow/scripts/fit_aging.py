"""Rule fit_aps_aging (thin glue): the result set, then the rule's record."""

from pathlib import Path

from homodyne.production.aging import fit_aging
from homodyne.production.report import write_fit_record
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821
out = Path(snakemake.output.record).parent  # noqa: F821
r = fit_aging(list(snakemake.input), out, max_tau_s=snakemake.params.max_tau_s)  # noqa: F821
write_fit_record(out)
print(r["result"].summary())
