"""dgmm: Gaussian mixture models for data larger than memory, on Dask."""

from dgmm._em import EmptyComponentWarning
from dgmm.mixture import GaussianMixture, load
from dgmm.selection import SelectionResult, select_n_components

__version__ = "0.1.0"

__all__ = [
    "EmptyComponentWarning",
    "GaussianMixture",
    "SelectionResult",
    "__version__",
    "load",
    "select_n_components",
]
