"""Checkpoint plan_q_fits: the (file, q bin) jobs of one run, as JSON (glue)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821
from _log import redirect  # noqa: E402

from homodyne.config import load_config  # noqa: E402
from homodyne.production.multiq import plan_jobs  # noqa: E402

redirect(snakemake)  # noqa: F821
cfg = load_config(snakemake.params.config, overrides=snakemake.params.overrides)  # noqa: F821
jobs = [{"file": j.file, "file_id": j.file_id, "q_index": j.q_index, "q": j.q}
        for j in plan_jobs(cfg)]
Path(snakemake.output[0]).write_text(json.dumps(jobs, indent=1) + "\n")  # noqa: F821
print(f"{len(jobs)} fits planned")
