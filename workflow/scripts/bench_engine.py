"""Rules bench_engine*: one engine run of the grid (thin glue over homodyne.benchmarks)."""

import shutil
import sys

sys.path.insert(0, str(__import__("pathlib").Path(snakemake.scriptdir)))  # noqa: F821
from _log import redirect  # noqa: E402

from homodyne.benchmarks.runner import bench_engine  # noqa: E402

redirect(snakemake)  # noqa: F821
w = snakemake.wildcards  # noqa: F821
freq = int(w.freq) if "freq" in w.keys() else None
mode = w.mode if "mode" in w.keys() else "full"
ckdir = snakemake.params.checkpoint_dir  # noqa: F821
shutil.rmtree(ckdir, ignore_errors=True)
b = snakemake.config["benchmark"]  # noqa: F821
overhead = w.dataset == b.get("overhead_dataset") and \
    w.tier == b.get("overhead_tier", "streaming")
rec = bench_engine(snakemake.input[0], snakemake.output[0], tier=w.tier,  # noqa: F821
                   device=w.device, fault_mode=mode, checkpoint_frequency=freq,
                   checkpoint_dir=ckdir, repeats=b.get("overhead_repeats", 3) if overhead else 1)
shutil.rmtree(ckdir, ignore_errors=True)
print(rec)
