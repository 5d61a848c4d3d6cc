"""Production fits on measured data (the workflow's `fit` target)."""
