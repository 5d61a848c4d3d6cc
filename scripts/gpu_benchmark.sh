#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: the benchmark subset that matters (10M-1B points,
# static and laminar, in-memory CHUNKED and disk STREAMING tiers) on the GPU, then its
# table in results/benchmark/summary.md. Sized for about ten minutes on one H100/H200.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m venv .venv
.venv/bin/pip install -q -e ".[workflow,gpu]"
.venv/bin/python -c "import jax; d = jax.devices(); print(d); assert d[0].platform == 'gpu', 'JAX sees no GPU'"
.venv/bin/snakemake --cores all benchmark --configfile config/gpu.yaml
cat results/benchmark/summary.md
