"""Rule fit_q_bin: one normal fit of one q bin of one file, in its own folder (glue).

Exits like ``homodyne``: bad input or output folder 2, a failed fit 3, each as one line
in the rule's log (no traceback)."""

import sys
from pathlib import Path

from homodyne.cli import EXIT_FIT_FAILED, EXIT_USAGE
from homodyne.config import ConfigError, load_config
from homodyne.data.errors import DataFileError
from homodyne.optimization.exceptions import NLSQMemoryError, NLSQOptimizationError
from homodyne.output import OutputDirError, OutputExistsError
from homodyne.production.multiq import fit_job, plan_jobs
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821
w = snakemake.wildcards  # noqa: F821
overrides = {**snakemake.params.overrides,  # noqa: F821
             "experimental_data.files": [snakemake.input.data]}  # noqa: F821
try:
    cfg = load_config(snakemake.params.config, overrides=overrides)  # noqa: F821
    (job,) = [j for j in plan_jobs(cfg) if j.file_id == w.file and j.q_index == int(w.qi)]
    assert job.output_dir == Path(snakemake.output.job).parent  # noqa: F821
    row = fit_job(cfg, job, overwrite=True)
except (ConfigError, DataFileError, OutputDirError, OutputExistsError,
        NLSQMemoryError) as exc:  # (OutputDirError: also a job folder's file we read)
    print(f"fit_q_bin: error: {exc}")
    sys.exit(EXIT_USAGE)
except NLSQOptimizationError as exc:
    print(f"fit_q_bin: fit failed: {exc}")
    sys.exit(EXIT_FIT_FAILED)
print(row)
