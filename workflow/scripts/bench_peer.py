"""Rule bench_peer: scipy or nlsq on the same dataset (thin glue)."""

from homodyne.benchmarks.runner import bench_scipy, peer_max_points, run_peer_with_timeout
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821
method = snakemake.wildcards.method  # noqa: F821
peers = snakemake.params.peers  # noqa: F821
data, out = snakemake.input[0], snakemake.output[0]  # noqa: F821
limit = peer_max_points(peers, method)
if method == "scipy-trf":
    rec = bench_scipy(data, out, max_points=limit)
else:
    rec = run_peer_with_timeout(data, out, method=method.removeprefix("nlsq-"),
                                max_points=limit, timeout_s=peers.get("timeout_s"))
print(rec)
