"""Rule fits_summary: results/fits/summary.md."""

from pathlib import Path

from homodyne.production.report import write_fit_summary
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821
dirs = [Path(p).parent for p in snakemake.input]  # noqa: F821
write_fit_summary(snakemake.output[0], *dirs)  # noqa: F821
