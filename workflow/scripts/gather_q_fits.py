"""Rule gather_q_fits: summary.csv and plots from every job folder of a run (glue)."""

import sys
from pathlib import Path

from homodyne.production.multiq import ResultFileError, gather
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821
try:
    print(gather([Path(p).parent for p in snakemake.input],  # noqa: F821
                 Path(snakemake.output.summary).parent))  # noqa: F821
except ResultFileError as exc:  # a job folder's file edited or copied in: one line, no traceback
    sys.exit(f"gather: error: {exc}")
