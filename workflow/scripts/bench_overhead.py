"""Rule bench_overhead: paired-pass checkpoint and fault-tolerance overheads."""

import sys

sys.path.insert(0, str(__import__("pathlib").Path(snakemake.scriptdir)))  # noqa: F821
from _log import redirect  # noqa: E402

from homodyne.benchmarks.overhead import bench_overheads  # noqa: E402

redirect(snakemake)  # noqa: F821
p = snakemake.params  # noqa: F821
rec = bench_overheads(snakemake.input[0], snakemake.output[0],  # noqa: F821
                      tier=snakemake.wildcards.tier, rounds=p.rounds,  # noqa: F821
                      checkpoint_frequencies=p.checkpoint_frequencies,
                      fault_modes=p.fault_modes)
print(rec)
