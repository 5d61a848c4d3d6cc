"""Rule fit_one_time (thin glue): the CLI's general one-time path on one measured file.

Exits like ``homodyne``: a fit that did NOT converge fails the job (exit 4)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821
from _log import redirect  # noqa: E402

from homodyne.cli import exit_status  # noqa: E402
from homodyne.config import validate_config  # noqa: E402
from homodyne.pipeline import run_from_config  # noqa: E402

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
