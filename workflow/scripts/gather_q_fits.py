"""Rule gather_q_fits: summary.csv and plots from every job folder of a run (glue)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821
from _log import redirect  # noqa: E402

from homodyne.production.multiq import gather  # noqa: E402

redirect(snakemake)  # noqa: F821
print(gather([Path(p).parent for p in snakemake.input],  # noqa: F821
             Path(snakemake.output.summary).parent))  # noqa: F821
