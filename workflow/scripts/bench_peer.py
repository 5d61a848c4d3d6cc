"""Rule bench_peer: scipy or nlsq on the same dataset (thin glue)."""

from homodyne.benchmarks.runner import bench_scipy, run_peer_with_timeout
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821
method = snakemake.wildcards.method  # noqa: F821
peers = snakemake.params.peers  # noqa: F821
data, out = snakemake.input[0], snakemake.output[0]  # noqa: F821
if method == "scipy-trf":
    rec = bench_scipy(data, out, max_points=peers.get("scipy_max_points", 10_000_000))
else:
    rec = run_peer_with_timeout(data, out, method=method.removeprefix("nlsq-"),
                                max_points=peers.get("nlsq_max_points", 1_000_000),
                                timeout_s=peers.get("timeout_s"))
print(rec)
