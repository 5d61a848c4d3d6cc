"""Rule generate_aging_series_file: file k of the synthetic multi-q aging series (glue)."""

from pathlib import Path

from homodyne.production.multiq_data import AgingSeries, write_series_file
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821
series = AgingSeries(**{k: tuple(v) if isinstance(v, list) else v
                        for k, v in snakemake.params.series.items()})  # noqa: F821
out = Path(snakemake.output[0])  # noqa: F821
path = write_series_file(out.parent, series, int(snakemake.wildcards.k))  # noqa: F821
assert path == out, (path, out)
print(f"wrote {path}")
