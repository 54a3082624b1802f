"""dgmm: Gaussian mixture models for data larger than memory, on Dask."""

from dgmm._em import EmptyComponentWarning
from dgmm._version import __version__
from dgmm.mixture import GaussianMixture, load, select_n_components

__all__ = [
    "EmptyComponentWarning",
    "GaussianMixture",
    "__version__",
    "load",
    "select_n_components",
]
