"""dgmm: Gaussian mixture models for data larger than memory, on Dask."""

from dgmm._em import EmptyComponentWarning
from dgmm._version import __version__
from dgmm.bayesian import BayesianGaussianMixture
from dgmm.mixture import GaussianMixture
from dgmm.models import load, save
from dgmm.selection import SelectionResult, select_n_components

__all__ = [
    "BayesianGaussianMixture",
    "EmptyComponentWarning",
    "GaussianMixture",
    "SelectionResult",
    "__version__",
    "load",
    "save",
    "select_n_components",
]
