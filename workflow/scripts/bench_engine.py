"""Rule bench_engine: one engine run of the grid (thin glue over homodyne.benchmarks)."""

from homodyne.benchmarks.runner import bench_engine
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821
w = snakemake.wildcards  # noqa: F821
rec = bench_engine(snakemake.input[0], snakemake.output[0], tier=w.tier,  # noqa: F821
                   device=w.device)
print(rec)
