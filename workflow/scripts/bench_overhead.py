"""Rule bench_overhead: paired-pass checkpoint and fault-tolerance overheads."""

from homodyne.benchmarks.overhead import bench_overheads
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821
p = snakemake.params  # noqa: F821
rec = bench_overheads(snakemake.input[0], snakemake.output[0],  # noqa: F821
                      tier=snakemake.wildcards.tier, rounds=p.rounds,  # noqa: F821
                      checkpoint_frequencies=p.checkpoint_frequencies,
                      fault_modes=p.fault_modes)
print(rec)
