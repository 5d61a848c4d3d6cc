"""Rule gather_q_fits: summary.csv and plots from every job folder of a run, each row
marked settings_match against the run's fit config as the rule sees it now (glue)."""

import sys
from pathlib import Path

from homodyne.config import ConfigError, load_config
from homodyne.production.multiq import ResultFileError, gather, settings_digest
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821
try:
    cfg = load_config(snakemake.params.config,  # noqa: F821
                      overrides=snakemake.params.overrides)  # noqa: F821
    print(gather([Path(p).parent for p in snakemake.input],  # noqa: F821
                 Path(snakemake.output.summary).parent,  # noqa: F821
                 settings=settings_digest(cfg)))
except (ResultFileError, ConfigError) as exc:  # a job folder's file edited or copied in:
    sys.exit(f"gather: error: {exc}")  # one line, no traceback
