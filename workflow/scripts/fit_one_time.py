"""Rule fit_one_time (thin glue): the CLI's general one-time path on one measured file.

Exits like ``homodyne``: a fit that did NOT converge fails the job (exit 4)."""

import sys
from pathlib import Path

from homodyne.cli import exit_status
from homodyne.config import validate_config
from homodyne.pipeline import run_from_config
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821
cfg = validate_config({
    "analysis_mode": "one_time",
    "experimental_data": {"file_path": str(snakemake.input[0])},  # noqa: F821
    "one_time": dict(snakemake.params.settings),  # noqa: F821
    "output": {"directory": str(Path(snakemake.output.params).parent),  # noqa: F821
               "overwrite": True},
})
run = run_from_config(cfg)
print(run.result.summary())
sys.exit(exit_status(run.result.status, strict=False))
