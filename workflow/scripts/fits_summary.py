"""Rule fits_summary: results/fits/summary.md of the sets the fits' records name. A folder
that no longer holds its recorded set, or a result it cannot read, is one line in the
rule's log, exit 2."""

import sys

from homodyne.cli import run_reporting_errors
from homodyne.production.report import check_record, write_fit_summary
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821


def summarize() -> int:
    dirs = [check_record(p) for p in snakemake.input]  # noqa: F821
    write_fit_summary(snakemake.output[0], *dirs)  # noqa: F821
    return 0


sys.exit(run_reporting_errors("fits_summary", summarize))
