"""Rule fits_report: the report's copies of the fits' committed files (thin glue). A set
that is no longer the recorded one is one line in the rule's log, exit 2."""

import sys

from homodyne.cli import run_reporting_errors
from homodyne.production.report import publish_fit_files
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821


def publish() -> int:
    for fit, names in snakemake.params.reports.items():  # noqa: F821
        publish_fit_files(snakemake.input[fit], names, snakemake.output[fit])  # noqa: F821
    return 0


sys.exit(run_reporting_errors("fits_report", publish))
