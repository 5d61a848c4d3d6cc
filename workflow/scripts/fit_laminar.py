"""Rule fit_laminar_synthetic (thin glue): the result set, then the rule's record. A bad
input or a failed fit is one line in the rule's log and the exit status of ``homodyne``."""

import sys
from pathlib import Path

from homodyne.cli import run_reporting_errors
from homodyne.production.laminar import fit_laminar_synthetic
from homodyne.production.report import write_fit_record
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821
s = snakemake.params.spec  # noqa: F821
out = Path(snakemake.output.record).parent  # noqa: F821


def fit() -> int:
    r = fit_laminar_synthetic(out, frames=s["frames"], angles=tuple(s["angles"]),
                              seed=s.get("seed", 11))
    write_fit_record(out)
    print(r["result"].summary())
    return 0


sys.exit(run_reporting_errors("fit_laminar_synthetic", fit))
