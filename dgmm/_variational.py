"""Pure NumPy maths of the variational (Bayesian) Gaussian mixture.

The variational mixture of scikit-learn's ``BayesianGaussianMixture``
(Bishop 2006, ch. 10.2; Blei & Jordan 2006 for the Dirichlet process) needs
nothing from the data beyond the statistics packet of EM
(:class:`dgmm._stats.SuffStats`): its E-step is the EM E-step of *effective*
parameters (:func:`effective_params`), and its M-step (the posterior of the
weight, mean and precision distributions) and its lower bound are functions
of the reduced packet and of the parameters its pass used. So the one driver
of :mod:`dgmm._em` runs it through :class:`VariationalMStep` and the kernels
stay as they are. Nothing here knows about Dask.

Local names (beyond those of :mod:`dgmm._covariance`):

    nk      sum_n r_nk, guarded by 10 eps as scikit-learn does, (K,)
    xk      the responsibility-weighted means, (K, d)
    sk      the responsibility-weighted covariances plus reg_covar (EM's M-step)
    diff    xk - mean prior, (K, d)
    beta    posterior mean precisions (``mean_precision_``), (K,)
    nu      posterior degrees of freedom, (K,) (a scalar for tied)
    wc      weight concentrations: (K,) Dirichlet; (2, K) Dirichlet process,
            the two parameters of every stick's Beta distribution

Sections: priors and posterior, weights, precisions, effective parameters,
lower bound, the M-step object the driver runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields

import numpy as np
from scipy.special import betaln, digamma, gammaln

from dgmm import _kernels as kernels
from dgmm._covariance import COVARIANCE
from dgmm._stats import SuffStats

PRIOR_TYPES = ("dirichlet_process", "dirichlet_distribution")
_LOG_2 = np.log(2.0)
_LOG_2PI = np.log(2.0 * np.pi)
_EPS_GUARD = 10.0 * np.finfo(np.float64).eps  # as scikit-learn's nk, avoids 0/0


# --------------------------------------------------------------------------
# Priors and posterior
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Priors:
    """The prior of a variational mixture, with scikit-learn's meanings.

    Attributes
    ----------
    weight_concentration_prior_type : {'dirichlet_process', 'dirichlet_distribution'}
    weight_concentration : float
        ``weight_concentration_prior_``.
    mean_precision : float
        ``mean_precision_prior_``.
    mean : ndarray of shape (d,)
        ``mean_prior_``.
    degrees_of_freedom : float
        ``degrees_of_freedom_prior_``.
    covariance : ndarray or float
        ``covariance_prior_``: (d, d) full and tied, (d,) diag, a float spherical.
    """

    weight_concentration_prior_type: str
    weight_concentration: float
    mean_precision: float
    mean: np.ndarray
    degrees_of_freedom: float
    covariance: np.ndarray

    def to_plain(self) -> list:
        """The priors as plain numbers and lists (what a checkpoint identity records)."""
        return [self.weight_concentration_prior_type, float(self.weight_concentration),
                float(self.mean_precision), np.asarray(self.mean, float).tolist(),
                float(self.degrees_of_freedom), np.asarray(self.covariance, float).tolist()]


def covariance_prior(mean_scatter: np.ndarray, n_samples: int, covariance_type: str):
    """scikit-learn's default ``covariance_prior_`` from the data's scatter matrix.

    ``mean_scatter`` is ``sum_n (x_n - mean)(x_n - mean)^T``; the default is the
    unbiased covariance (``ddof=1``): the matrix for full and tied, its
    diagonal for diag, the mean of that for spherical.
    """
    cov = np.atleast_2d(mean_scatter) / (n_samples - 1)
    return {"full": cov, "tied": cov, "diag": np.diag(cov).copy(),
            "spherical": float(np.diag(cov).mean())}[covariance_type]


@dataclass(frozen=True)
class Posterior:
    """The variational posterior, with scikit-learn's attribute names (without ``_``).

    Attributes
    ----------
    weight_concentration : ndarray
        (K,) for a Dirichlet distribution, (2, K) for a Dirichlet process.
    mean_precision : ndarray of shape (K,)
    means : ndarray of shape (K, d)
    degrees_of_freedom : ndarray of shape (K,), or float (tied)
    covariances : ndarray
        ``covariances_``: the inverse of the expected precision.
    precisions_cholesky : ndarray
        Cholesky factor of the expected precision ``nu W``.
    """

    weight_concentration: np.ndarray
    mean_precision: np.ndarray
    means: np.ndarray
    degrees_of_freedom: np.ndarray
    covariances: np.ndarray
    precisions_cholesky: np.ndarray

    def to_record(self) -> dict:
        """Plain arrays for a checkpoint record (keys prefixed ``posterior_``)."""
        return {f"posterior_{f.name}": np.asarray(getattr(self, f.name), dtype=np.float64)
                for f in fields(self)}

    @classmethod
    def from_record(cls, record: Mapping) -> Posterior:
        """Inverse of :meth:`to_record`."""
        values = {f.name: np.asarray(record[f"posterior_{f.name}"], dtype=np.float64)
                  for f in fields(cls)}
        if values["degrees_of_freedom"].ndim == 0:
            values["degrees_of_freedom"] = float(values["degrees_of_freedom"])
        return cls(**values)


def posterior(stats: SuffStats, priors: Priors, reg_covar: float) -> Posterior:
    """The variational M-step: the posterior given summed statistics.

    The responsibility-weighted means and covariances come from the shifted
    statistics through the covariance table's EM M-step (so data far from
    the origin keep their digits), then each prior is updated by them.
    """
    cov_type = stats.covariance_type
    kind = COVARIANCE[cov_type]
    nk = stats.nk + _EPS_GUARD
    m = stats.sk / nk[:, None]
    xk = stats.shift + m
    sk = kind.m_step(stats, nk, m, reg_covar)
    wc = _WEIGHT_PRIORS[priors.weight_concentration_prior_type].concentration(
        nk, priors.weight_concentration)
    beta = priors.mean_precision + nk
    diff = xk - priors.mean
    means = xk - (priors.mean_precision / beta)[:, None] * diff
    nu, covariances = _WISHART[cov_type](priors, nk, diff, sk, beta)
    return Posterior(wc, beta, means, nu, covariances, kind.precision_cholesky(covariances))


# --------------------------------------------------------------------------
# Weights: one entry per prior type
# --------------------------------------------------------------------------


def _concentration_process(nk, prior):
    # stick k: Beta(1 + N_k, prior + sum_{j > k} N_j)
    tail = np.concatenate([np.cumsum(nk[::-1])[-2::-1], [0.0]])
    return np.stack([1.0 + nk, prior + tail])


def _expected_log_process(wc):
    # E[log v_k] + sum_{j < k} E[log(1 - v_j)]
    log_total = digamma(wc[0] + wc[1])
    log_rest = digamma(wc[1]) - log_total
    return digamma(wc[0]) - log_total + np.concatenate([[0.0], np.cumsum(log_rest)[:-1]])


def _mean_process(wc):
    total = wc[0] + wc[1]
    w = wc[0] / total * np.concatenate([[1.0], np.cumprod(wc[1] / total)[:-1]])
    return w / w.sum()


def _log_norm_process(wc):
    return -float(np.sum(betaln(wc[0], wc[1])))


def _concentration_dirichlet(nk, prior):
    return prior + nk


def _expected_log_dirichlet(wc):
    return digamma(wc) - digamma(wc.sum())


def _mean_dirichlet(wc):
    return wc / wc.sum()


def _log_norm_dirichlet(wc):
    return float(gammaln(wc.sum()) - gammaln(wc).sum())


@dataclass(frozen=True)
class WeightPrior:
    """What one weight prior type needs.

    Attributes
    ----------
    concentration : callable (nk, prior) -> wc
    expected_log : callable (wc) -> ndarray of shape (K,)
        ``E[log pi_k]``.
    mean : callable (wc) -> ndarray of shape (K,)
        ``weights_``.
    log_norm : callable (wc) -> float
        Log normaliser of the posterior (its term of the lower bound).
    """

    concentration: Callable
    expected_log: Callable
    mean: Callable
    log_norm: Callable


_WEIGHT_PRIORS = {
    "dirichlet_process": WeightPrior(_concentration_process, _expected_log_process,
                                     _mean_process, _log_norm_process),
    "dirichlet_distribution": WeightPrior(_concentration_dirichlet, _expected_log_dirichlet,
                                          _mean_dirichlet, _log_norm_dirichlet),
}


# --------------------------------------------------------------------------
# Precisions: the Normal-Wishart update of each covariance type.  Each gives
# (nu, covariances) with covariances the inverse of the expected precision:
# (W0^-1 + N_k S_k + N_k beta0 / beta_k diff diff^T) / nu_k in its own shape.
# --------------------------------------------------------------------------


def _wishart_full(pr: Priors, nk, diff, sk, beta):
    nu = pr.degrees_of_freedom + nk
    shrink = nk * pr.mean_precision / beta
    cov = pr.covariance + nk[:, None, None] * sk
    cov += shrink[:, None, None] * diff[:, :, None] * diff[:, None, :]
    return nu, cov / nu[:, None, None]


def _wishart_tied(pr: Priors, nk, diff, sk, beta):
    # one Wishart shared by the K components: their counts are averaged
    K = nk.shape[0]
    nu = float(pr.degrees_of_freedom + nk.sum() / K)
    between = ((nk / beta) * diff.T) @ diff
    cov = pr.covariance + sk * (nk.sum() / K) + (pr.mean_precision / K) * between
    return nu, cov / nu


def _wishart_diag(pr: Priors, nk, diff, sk, beta):
    nu = pr.degrees_of_freedom + nk
    cov = pr.covariance + nk[:, None] * (sk + (pr.mean_precision / beta)[:, None] * diff**2)
    return nu, cov / nu[:, None]


def _wishart_spherical(pr: Priors, nk, diff, sk, beta):
    nu = pr.degrees_of_freedom + nk
    cov = pr.covariance + nk * (sk + pr.mean_precision / beta * np.mean(diff**2, axis=1))
    return nu, cov / nu


_WISHART = {"full": _wishart_full, "tied": _wishart_tied, "diag": _wishart_diag,
            "spherical": _wishart_spherical}


# --------------------------------------------------------------------------
# Effective parameters: the E-step of the variational mixture as an EM E-step
# --------------------------------------------------------------------------


def log_lambda(nu, n_features: int) -> np.ndarray:
    """``E[log |Lambda_k|] - log |nu_k W_k|`` plus ``d log nu_k``: the Wishart's digamma sum.

    ``d log 2 + sum_i psi((nu_k - i) / 2)``, shape (K,) (or (1,) for a scalar ``nu``).
    """
    nu = np.atleast_1d(np.asarray(nu, dtype=np.float64))
    return n_features * _LOG_2 + digamma(0.5 * (nu - np.arange(n_features)[:, None])).sum(axis=0)


def effective_params(post: Posterior, covariance_type: str, prior_type: str) -> kernels.Params:
    """EM parameters whose weighted log-densities are the variational E-step's.

    ``log rho_nk = E[log pi_k] + log N(x_n | means_k, (nu_k W_k)^-1)
    - d/2 log nu_k + 1/2 (log_lambda_k - d / beta_k)``: the Gaussian term is
    the kernel's, the rest a per-component constant (``log_weights``).
    """
    d = post.means.shape[1]
    prior = _WEIGHT_PRIORS[prior_type]
    nu = post.degrees_of_freedom
    log_w = (prior.expected_log(post.weight_concentration) - 0.5 * d * np.log(nu)
             + 0.5 * (log_lambda(nu, d) - d / post.mean_precision))
    return kernels.Params(covariance_type, prior.mean(post.weight_concentration), post.means,
                          post.precisions_cholesky, log_weights=log_w)


def mean_weights(weight_concentration, prior_type: str) -> np.ndarray:
    """``weights_``: the posterior mean of the mixing weights."""
    return _WEIGHT_PRIORS[prior_type].mean(np.asarray(weight_concentration, dtype=np.float64))


def params_of(covariance_type: str, prior_type: str, weight_concentration, mean_precision,
              means, degrees_of_freedom, precisions_cholesky) -> kernels.Params:
    """:func:`effective_params` from fitted attributes (``covariances_`` is not needed)."""
    dof = np.asarray(degrees_of_freedom, dtype=np.float64)
    post = Posterior(np.asarray(weight_concentration, dtype=np.float64),
                     np.asarray(mean_precision, dtype=np.float64),
                     np.asarray(means, dtype=np.float64),
                     float(dof) if dof.ndim == 0 else dof, None,
                     np.asarray(precisions_cholesky, dtype=np.float64))
    return effective_params(post, covariance_type, prior_type)


# --------------------------------------------------------------------------
# Lower bound, from the packet: -sum r log r is loglik - sum r log rho, and
# sum r log rho needs only N_k, S_k and Q_k about the means the pass used.
# --------------------------------------------------------------------------


def expected_log_rho(stats: SuffStats, used: kernels.Params) -> float:
    """``sum_n sum_k r_nk log rho_nk`` of a pass under ``used``, from its statistics.

    ``log rho_nk = c_k - 1/2 (x_n - mu_k)^T P_k (x_n - mu_k)`` with ``c_k`` the
    kernel's per-component offset; the quadratic part summed over rows is
    ``tr(P_k C_k) N_k + N_k m_k^T P_k m_k`` with ``C_k`` the weighted covariance
    and ``m_k`` the weighted mean about ``mu_k``, which the covariance table's
    M-step (without ``reg_covar``) gives from the shifted statistics.
    """
    cov_type = stats.covariance_type
    kind = COVARIANCE[cov_type]
    if not np.array_equal(stats.shift, used.means):
        stats = stats.shifted(used.means, kernels.center_of(used))
    K, d = used.means.shape
    nk = stats.nk + _EPS_GUARD
    m = stats.sk / nk[:, None]
    cov = kind.dense(kind.m_step(stats, nk, m, 0.0), K, d)
    prec = kind.dense(kind.precisions(used.precisions_cholesky), K, d)
    quad = (np.einsum("kij,kji->k", prec, cov) + np.einsum("ki,kij,kj->k", m, prec, m))
    offset = kind.log_det(used.precisions_cholesky, d) - 0.5 * d * _LOG_2PI + used.weight_terms
    return float(stats.nk @ (offset - 0.5 * quad))


def lower_bound(stats: SuffStats, used: kernels.Params, post: Posterior, priors: Priors) -> float:
    """scikit-learn's variational lower bound (up to its constants) after an M-step.

    The responsibilities' entropy comes from the pass under ``used``
    (:func:`expected_log_rho`); the other terms are the log normalisers of
    the posterior ``post`` (Wishart, weights) and its mean precisions.
    """
    cov_type = stats.covariance_type
    K, d = post.means.shape
    entropy = stats.loglik - expected_log_rho(stats, used)
    nu = post.degrees_of_freedom
    log_det = (COVARIANCE[cov_type].log_det(post.precisions_cholesky, d)
               - 0.5 * d * np.log(nu))
    # scikit-learn drops the log pi term of the Wishart normaliser
    log_wishart = -(nu * log_det + nu * d * 0.5 * _LOG_2
                    + gammaln(0.5 * (np.atleast_1d(nu) - np.arange(d)[:, None])).sum(axis=0))
    log_wishart = float(np.broadcast_to(log_wishart, (K,)).sum())  # tied: K times one
    log_weights = _WEIGHT_PRIORS[priors.weight_concentration_prior_type].log_norm(
        post.weight_concentration)
    return float(entropy - log_wishart - log_weights
                 - 0.5 * d * np.sum(np.log(post.mean_precision)))


# --------------------------------------------------------------------------
# The M-step the driver runs
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class VariationalMStep:
    """The variational update as a :class:`dgmm._kernels.MStep` of the one driver.

    Attributes
    ----------
    priors : Priors
    n_samples : int or None
        The data size stochastic variational inference scales its running
        normalised statistics to before an update (the rows of the data set a
        minibatch fit visits); None: the rows seen so far (``partial_fit``).
    """

    priors: Priors
    n_samples: int | None = None

    def __call__(self, stats: SuffStats, reg_covar: float,
                 previous: kernels.Params | None) -> kernels.Estimate:
        post = posterior(stats, self.priors, reg_covar)
        params = effective_params(post, stats.covariance_type,
                                  self.priors.weight_concentration_prior_type)
        bound = None if previous is None else lower_bound(stats, previous, post, self.priors)
        return kernels.Estimate(params, post.covariances, post, bound)

    def running(self, stats: SuffStats) -> SuffStats:
        # The posterior depends on the counts, so the running averages are
        # scaled to the data size: the natural-gradient step of SVI.
        n = self.n_samples if self.n_samples is not None else max(stats.n_rows, 1)
        return stats.scaled(n / stats.n)

    def restore(self, record: Mapping) -> Posterior:
        return Posterior.from_record(record)

    def identity(self) -> list:
        return ["variational", *self.priors.to_plain()]
