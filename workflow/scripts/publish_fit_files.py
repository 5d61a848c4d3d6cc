"""Rule fits_report: the report's copies of the fits' committed files (thin glue)."""

from homodyne.production.report import publish_fit_files
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821
for fit, names in snakemake.params.reports.items():  # noqa: F821
    publish_fit_files(snakemake.input[fit], names, snakemake.output[fit])  # noqa: F821
