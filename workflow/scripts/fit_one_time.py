"""Rule fit_one_time (thin glue): the CLI's general one-time path on one measured file.

Exits like ``homodyne``: a fit that did NOT converge fails the job (exit 4). The set is
committed by the run (all or nothing), then the rule's record is written."""

import sys
from pathlib import Path

from homodyne.cli import exit_status, run_reporting_errors
from homodyne.config import validate_config
from homodyne.pipeline import run_from_config
from homodyne.production.report import write_fit_record
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821
out = Path(snakemake.output.record).parent  # noqa: F821


def fit() -> int:
    cfg = validate_config({
        "analysis_mode": "one_time",
        "experimental_data": {"file_path": str(snakemake.input[0])},  # noqa: F821
        "one_time": dict(snakemake.params.settings),  # noqa: F821
        "output": {"directory": str(out), "overwrite": True},
    })
    run = run_from_config(cfg)
    write_fit_record(out)
    print(run.result.summary())
    return exit_status(run.result.status, strict=False)


sys.exit(run_reporting_errors("fit_one_time", fit))
