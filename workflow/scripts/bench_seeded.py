"""Rule bench_seeded: the seeded comparison against SciPy's TRF (homodyne.benchmarks.seeded).

Records are appended to a work file named by the code's digest, which a Snakemake rerun
does not delete: a stopped job resumes; other code starts a file of its own. A bad seed
range is one line and exit 2, as in ``homodyne``."""

import sys
from pathlib import Path

from homodyne.benchmarks import seeded
from homodyne.cli import run_reporting_errors
from homodyne.config import ConfigError
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821


def compare() -> int:
    text = str(snakemake.params.seeds)  # noqa: F821
    try:
        seeds = seeded.parse_seeds(text)
    except ValueError:
        raise ConfigError("benchmark.seeded.seeds", f"{text!r} is not a seed range: give "
                          "lo-hi with lo <= hi, a seed, or a list such as 1,5,9-11") from None
    work = Path(snakemake.params.work_dir) / f"seeded_{seeded.code_digest()}.jsonl"  # noqa: F821
    n = seeded.run_seeds(seeds, work, snakemake.threads)  # noqa: F821
    print(f"{n} case(s) run, {len(seeds) - n} taken from {work}")
    records = seeded.select(seeded.load(work), seeds)
    seeded.write_outputs(records, snakemake.output.jsonl, snakemake.output.md)  # noqa: F821
    print(seeded.format_summary(records))
    return 0


sys.exit(run_reporting_errors("bench_seeded", compare))
