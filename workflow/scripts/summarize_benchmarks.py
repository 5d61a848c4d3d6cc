"""Rule benchmark_summary: the table of spec targets, the runs, and the plots."""

from pathlib import Path

from homodyne.benchmarks import seeded
from homodyne.benchmarks.runner import load_records
from homodyne.benchmarks.summary import write_summary
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821
records = load_records(snakemake.input.runs)  # noqa: F821
compared = [seeded.load(p) for p in snakemake.input.seeded]  # noqa: F821
out = write_summary(records, Path(snakemake.output.csv).parent,  # noqa: F821
                    seeded=compared[0] if compared else None)
print(out["targets"].to_string())
