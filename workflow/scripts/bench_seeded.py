"""Rule bench_seeded: the seeded comparison against SciPy's TRF (homodyne.benchmarks.seeded).

Records are appended to a work file named by the code's digest, which a Snakemake rerun
does not delete: a stopped job resumes; other code starts a file of its own."""

from pathlib import Path

from homodyne.benchmarks import seeded
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821
seeds = seeded.parse_seeds(str(snakemake.params.seeds))  # noqa: F821
work = Path(snakemake.params.work_dir) / f"seeded_{seeded.code_digest()}.jsonl"  # noqa: F821
n = seeded.run_seeds(seeds, work, snakemake.threads)  # noqa: F821
print(f"{n} case(s) run, {len(seeds) - n} taken from {work}")
records = seeded.select(seeded.load(work), seeds)
seeded.write_outputs(records, snakemake.output.jsonl, snakemake.output.md)  # noqa: F821
print(seeded.format_summary(records))
