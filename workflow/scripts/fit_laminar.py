"""Rule fit_laminar_synthetic (thin glue)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821
from _log import redirect  # noqa: E402

from homodyne.production.laminar import fit_laminar_synthetic  # noqa: E402

redirect(snakemake)  # noqa: F821
s = snakemake.params.spec  # noqa: F821
r = fit_laminar_synthetic(Path(snakemake.output.params).parent, frames=s["frames"],  # noqa: F821
                          angles=tuple(s["angles"]), seed=s.get("seed", 11))
print(r["result"].summary())
