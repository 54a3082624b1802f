"""dgmm: Gaussian mixture models for data larger than memory, on Dask."""

from dgmm._em import EmptyComponentWarning
from dgmm._version import __version__
from dgmm.mixture import GaussianMixture, select_n_components
from dgmm.models import load, save

__all__ = [
    "EmptyComponentWarning",
    "GaussianMixture",
    "__version__",
    "load",
    "save",
    "select_n_components",
]
