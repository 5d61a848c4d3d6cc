"""Rule fit_aps_aging (thin glue): the result set, then the rule's record. A bad input or
a failed fit is one line in the rule's log and the exit status of ``homodyne``."""

import sys
from pathlib import Path

from homodyne.cli import run_reporting_errors
from homodyne.production.aging import fit_aging
from homodyne.production.report import write_fit_record
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821
out = Path(snakemake.output.record).parent  # noqa: F821


def fit() -> int:
    r = fit_aging(list(snakemake.input), out,  # noqa: F821
                  max_tau_s=snakemake.params.max_tau_s)  # noqa: F821
    write_fit_record(out)
    print(r["result"].summary())
    return 0


sys.exit(run_reporting_errors("fit_aps_aging", fit))
