"""Rule fit_chx (thin glue): the result set, then the rule's record. A bad input or a
failed fit is one line in the rule's log and the exit status of ``homodyne``."""

import sys
from pathlib import Path

from homodyne.cli import run_reporting_errors
from homodyne.production.chx import fit_chx
from homodyne.production.report import write_fit_record
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821
out = Path(snakemake.output.record).parent  # noqa: F821


def fit() -> int:
    r = fit_chx(snakemake.input.matrix, snakemake.input.authors, out,  # noqa: F821
                alpha_window=tuple(snakemake.params.alpha_window))  # noqa: F821
    write_fit_record(out)
    print(r["result"].summary())
    return 0


sys.exit(run_reporting_errors("fit_chx", fit))
