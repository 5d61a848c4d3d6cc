"""Rule gather_q_fits: summary.csv and plots from every job folder of a run (glue)."""

from pathlib import Path

from homodyne.production.multiq import gather
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821
print(gather([Path(p).parent for p in snakemake.input],  # noqa: F821
             Path(snakemake.output.summary).parent))  # noqa: F821
