"""Rule generate_aging_series_file: file k of the synthetic multi-q aging series (glue)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821
from _log import redirect  # noqa: E402

from homodyne.production.multiq_data import AgingSeries, write_series_file  # noqa: E402

redirect(snakemake)  # noqa: F821
series = AgingSeries(**{k: tuple(v) if isinstance(v, list) else v
                        for k, v in snakemake.params.series.items()})  # noqa: F821
out = Path(snakemake.output[0])  # noqa: F821
path = write_series_file(out.parent, series, int(snakemake.wildcards.k))  # noqa: F821
assert path == out, (path, out)
print(f"wrote {path}")
