"""Error types named in the user guide, raised where it says."""


class NLSQOptimizationError(RuntimeError):
    """Base class: the fit could not produce a trustworthy result."""


class NLSQNumericalError(NLSQOptimizationError):
    """Non-finite residuals, JᵀJ/Jᵀr or parameter updates (e.g. model overflow)."""


class NLSQConvergenceError(NLSQOptimizationError):
    """Too few batches succeeded (below ``min_success_rate``) or the solver diverged."""


class NLSQCheckpointError(NLSQOptimizationError):
    """A checkpoint is corrupt, unreadable, or belongs to other data or config."""


class NLSQMemoryError(NLSQOptimizationError, MemoryError):
    """The requested memory limit is too small to run even the smallest batch."""
