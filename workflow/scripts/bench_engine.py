"""Rules bench_engine*: one engine run of the grid (thin glue over homodyne.benchmarks)."""

import sys

sys.path.insert(0, str(__import__("pathlib").Path(snakemake.scriptdir)))  # noqa: F821
from _log import redirect  # noqa: E402

from homodyne.benchmarks.runner import bench_engine  # noqa: E402

redirect(snakemake)  # noqa: F821
w = snakemake.wildcards  # noqa: F821
rec = bench_engine(snakemake.input[0], snakemake.output[0], tier=w.tier,  # noqa: F821
                   device=w.device)
print(rec)
