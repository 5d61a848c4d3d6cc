"""Error types named in the user guide, raised where it says, and the control-flow
exceptions that stop a fit cleanly (``StopFit``, ``Interrupted``).

A leaf module: every layer may import it, it imports nothing from homodyne.
"""


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


class StopFit(Exception):
    """Raised inside a pass to stop the fit cleanly (callback, signal)."""


class Interrupted(StopFit):
    """SIGINT, SIGTERM or SIGHUP arrived: a checkpoint was saved (when enabled), the fit
    stops."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
