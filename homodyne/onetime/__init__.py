"""One-time g2(q, tau) fits: readers for multi-tau results and plain tables, the per-q
model offset + contrast·exp(-2 (Gamma tau)^beta), and the CLI's one-time run."""
