"""Rule fit_chx (thin glue)."""

from pathlib import Path

from homodyne.production.chx import fit_chx
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821
r = fit_chx(snakemake.input.matrix, snakemake.input.authors,  # noqa: F821
            Path(snakemake.output.params).parent,  # noqa: F821
            alpha_window=tuple(snakemake.params.alpha_window))  # noqa: F821
print(r["result"].summary())
