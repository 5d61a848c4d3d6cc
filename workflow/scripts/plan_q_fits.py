"""Checkpoint plan_q_fits: the (file, q bin) jobs of one run, as JSON (glue)."""

import json
from pathlib import Path

from homodyne.config import load_config
from homodyne.production.multiq import plan_jobs
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821
cfg = load_config(snakemake.params.config, overrides=snakemake.params.overrides)  # noqa: F821
jobs = [{"file": j.file, "file_id": j.file_id, "q_index": j.q_index, "q": j.q}
        for j in plan_jobs(cfg)]
Path(snakemake.output[0]).write_text(json.dumps(jobs, indent=1) + "\n")  # noqa: F821
print(f"{len(jobs)} fits planned")
