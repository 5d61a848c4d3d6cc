"""Rule fits_summary: results/fits/summary.md."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821
from _log import redirect  # noqa: E402

from homodyne.production.report import write_fit_summary  # noqa: E402

redirect(snakemake)  # noqa: F821
dirs = [Path(p).parent for p in snakemake.input]  # noqa: F821
write_fit_summary(snakemake.output[0], *dirs)  # noqa: F821
