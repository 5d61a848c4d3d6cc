"""Rule benchmark_summary: the table of spec targets, the runs, and the plots."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821
from _log import redirect  # noqa: E402

from homodyne.benchmarks.runner import load_records  # noqa: E402
from homodyne.benchmarks.summary import write_summary  # noqa: E402

redirect(snakemake)  # noqa: F821
records = load_records(snakemake.input)  # noqa: F821
out = write_summary(records, Path(snakemake.output.csv).parent)  # noqa: F821
print(out["targets"].to_string())
