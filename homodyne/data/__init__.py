"""Data sources: APS two-time HDF5 (both layouts), multi-tau one-time, bare .npy,
a synthetic generator, and the row-block reader every engine tier consumes."""

from homodyne.data.errors import DataFileError
from homodyne.data.synthetic import generate_synthetic
from homodyne.data.twotime import TwoTimeSource, open_two_time

__all__ = ["DataFileError", "TwoTimeSource", "generate_synthetic", "open_two_time"]
