"""Rule fit_chx (thin glue): the result set, then the rule's record."""

from pathlib import Path

from homodyne.production.chx import fit_chx
from homodyne.production.report import write_fit_record
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821
out = Path(snakemake.output.record).parent  # noqa: F821
r = fit_chx(snakemake.input.matrix, snakemake.input.authors, out,  # noqa: F821
            alpha_window=tuple(snakemake.params.alpha_window))  # noqa: F821
write_fit_record(out)
print(r["result"].summary())
