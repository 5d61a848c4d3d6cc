"""Rule fit_chx (thin glue)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821
from _log import redirect  # noqa: E402

from homodyne.production.chx import fit_chx  # noqa: E402

redirect(snakemake)  # noqa: F821
r = fit_chx(snakemake.input.matrix, snakemake.input.authors,  # noqa: F821
            Path(snakemake.output.params).parent,  # noqa: F821
            alpha_window=tuple(snakemake.params.alpha_window))  # noqa: F821
print(r["result"].summary())
