"""Model selection across n_components and covariance types: select_n_components."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from dgmm import GaussianMixture, SelectionResult, select_n_components
from dgmm.datasets import make_mixture
from tests.helpers import mixture_data

TYPES = ("full", "diag")


@pytest.fixture(scope="module")
def X():
    return mixture_data(n=3000, d=3, k=3, seed=2)[0]


def _same_model(a, b):
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-12, atol=0)
    assert (a.covariance_type, a.n_iter_, a.converged_) == (
        b.covariance_type, b.n_iter_, b.converged_)


def test_every_candidate_of_two_covariance_types_equals_its_lone_fit(X):
    result = select_n_components(X, [2, 3], covariance_type=TYPES, random_state=0, n_init=2)
    assert [(r["n_components"], r["covariance_type"]) for r in result.table] == [
        (2, "full"), (3, "full"), (2, "diag"), (3, "diag")]
    for row in result.table:
        lone = GaussianMixture(row["n_components"], covariance_type=row["covariance_type"],
                               random_state=0, n_init=2).fit(X)
        assert (row["n_iter"], row["converged"]) == (lone.n_iter_, lone.converged_)
        np.testing.assert_allclose(row["score"], lone.score(X), rtol=1e-10)
        np.testing.assert_allclose(row["bic"], lone.bic(X), rtol=1e-10)
        if (row["n_components"], row["covariance_type"]) == (
                result.best_.n_components, result.best_.covariance_type):
            _same_model(result.best_, lone)


def test_a_shared_selection_reads_the_data_fewer_times_than_its_candidates_alone(X):
    Xd = da.from_array(X, chunks=500)
    shared = select_n_components(Xd, [1, 2, 3], covariance_type=TYPES, random_state=0)
    alone = [select_n_components(Xd, [k], covariance_type=t, random_state=0).n_passes
             for t in TYPES for k in (1, 2, 3)]
    slowest = max(row["n_iter"] for row in shared.table)
    # The passes of the slowest candidate (initialisation, EM, scoring), not their sum.
    assert shared.n_passes == max(alone)
    assert slowest < shared.n_passes < sum(alone) / 3


def test_the_result_unpacks_and_names_its_fields(X):
    result = select_n_components(X, [2, 3], covariance_type="spherical", criterion="aic",
                                 random_state=0)
    assert isinstance(result, SelectionResult) and result.criterion == "aic"
    best, table = result
    assert best is result.best_ and table is result.table
    assert set(table[0]) == {"n_components", "covariance_type", "bic", "aic", "score",
                             "n_iter", "converged"}
    assert best.aic(X) == pytest.approx(min(row["aic"] for row in table), rel=1e-10)
    assert result.n_passes >= 3  # a sample, at least one EM pass, the scoring pass


def test_candidates_that_did_not_converge_are_named(X):
    with pytest.warns(ConvergenceWarning, match=r"n_components=2 \(diag\), n_components=3 "
                                                 r"\(diag\) did not converge"):
        select_n_components(X, [2, 3], covariance_type="diag", max_iter=1, random_state=0)


def test_plot_hands_the_table_to_selection_curves(X, monkeypatch):
    result = select_n_components(X, [2, 3], random_state=0)
    try:
        from dgmm import plot
    except ImportError:  # dgmm.plot comes from another branch
        with pytest.raises(ImportError):
            result.plot()
        return
    seen = {}
    monkeypatch.setattr(plot, "selection_curves", lambda table, **kw: seen.update(kw, t=table))
    result.plot(path="curves.png")
    assert seen == {"criterion": "bic", "ax": None, "path": "curves.png", "t": result.table}


def test_bad_covariance_types_are_refused(X):
    with pytest.raises(ValueError, match=r"covariance_type must be one or more of"):
        select_n_components(X, [2], covariance_type=("full", "dense"))
    with pytest.raises(ValueError, match=r"covariance_type must be one or more of"):
        select_n_components(X, [2], covariance_type=())


@pytest.mark.parametrize("seed", range(3))
def test_bic_with_default_settings_finds_the_true_number_of_components(seed):
    # The small version of benchmarks/bench_select.py's sweep.
    X, _, _ = make_mixture(5_000, 8, 4, seed=seed)
    best, _ = select_n_components(X, range(2, 7))
    assert best.n_components == 4
