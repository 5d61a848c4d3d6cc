"""Rule fit_aps_aging (thin glue)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821
from _log import redirect  # noqa: E402

from homodyne.production.aging import fit_aging  # noqa: E402

redirect(snakemake)  # noqa: F821
r = fit_aging(list(snakemake.input), Path(snakemake.output.params).parent,  # noqa: F821
              max_tau_s=snakemake.params.max_tau_s)  # noqa: F821
print(r["result"].summary())
