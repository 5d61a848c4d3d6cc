"""Rule fit_q_bin: one normal fit of one q bin of one file, in its own folder (glue).

Exits like ``homodyne``: bad input or output folder 2, a failed fit 3, each as one line
in the rule's log (no traceback)."""

import sys
from pathlib import Path

from homodyne.cli import run_reporting_errors
from homodyne.config import load_config
from homodyne.production.multiq import fit_job, plan_jobs
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821
w = snakemake.wildcards  # noqa: F821
overrides = {**snakemake.params.overrides,  # noqa: F821
             "experimental_data.files": [snakemake.input.data]}  # noqa: F821


def fit_bin() -> int:
    cfg = load_config(snakemake.params.config, overrides=overrides)  # noqa: F821
    (job,) = [j for j in plan_jobs(cfg) if j.file_id == w.file and j.q_index == int(w.qi)]
    assert job.output_dir == Path(snakemake.output.job).parent  # noqa: F821
    print(fit_job(cfg, job, overwrite=True))
    return 0


sys.exit(run_reporting_errors("fit_q_bin", fit_bin))
