"""homodyne: exact, constant-memory least-squares fits of two-time XPCS data.

The package is layered one way: config -> data source -> model -> engine ->
result -> writers/plots. Heavy optional peers (nlsq, snakemake) are imported
lazily where they are used, so ``import homodyne`` stays light.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("homodyne")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0"

__all__ = ["__version__"]
