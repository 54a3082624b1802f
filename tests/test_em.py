"""The drivers: one function from starts to fitted runs, sharing passes between groups."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from dgmm import _em, _passes
from tests.helpers import COVARIANCE_TYPES, mixture_data


@pytest.fixture
def blocks():
    X, _, _ = mixture_data(n=2000, d=3, k=3)
    return _passes.as_blocks(da.from_array(X, chunks=(400, 3)))


def test_groups_share_every_pass_and_fit_as_alone(blocks, monkeypatch):
    settings = _em.Settings(max_iter=4, tol=0.0)
    groups = [_em.Group(2, n_init=2, random_state=0), _em.Group(3, n_init=1, random_state=0)]
    calls = []
    real = _em.estep_pass
    monkeypatch.setattr(_em, "estep_pass", lambda b, ps, *a, **kw: calls.append(len(ps)) or real(
        b, ps, *a, **kw))
    together = _em.fit_groups(blocks, settings, groups, score=True)
    assert calls == [3, 3, 3, 3, 2]  # 4 EM passes for all 3 runs, then one scoring pass
    for g, fitted in zip(groups, together, strict=True):
        (alone,) = _em.fit_groups(blocks, settings, [g], score=True)
        np.testing.assert_array_equal(fitted.best.params.means, alone.best.params.means)
        assert fitted.score == alone.score
        assert len(fitted.runs) == g.n_init and fitted.state is None


def test_minibatch_groups_keep_their_stream_state(blocks):
    settings = _em.Settings(algorithm="minibatch", batch_size=300, max_iter=2, tol=0.0)
    fitted = _em.fit_groups(blocks, settings, [_em.Group(2, 1, 0), _em.Group(3, 2, 0)])
    for f, k in zip(fitted, (2, 3), strict=True):
        assert f.state.params.n_components == k and f.state.n_steps > 0
        assert f.best.n_iter == 2 and f.runs == [f.best]


def test_complete_user_parameters_need_no_initialisation_pass(blocks, monkeypatch):
    monkeypatch.setattr(_em._init, "initial_stats", lambda *a, **k: pytest.fail("init pass"))
    init = _em.InitialParams(np.array([0.5, 0.5]), np.zeros((2, 3)), np.stack([np.eye(3)] * 2))
    (runs,) = _em.initial_runs(blocks, _em.Settings(), [_em.Group(2, n_init=2)], init)
    assert len(runs) == 2
    np.testing.assert_allclose(runs[0].covariances, np.stack([np.eye(3)] * 2))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_run_record_round_trip(blocks, covariance_type):
    settings = _em.Settings(max_iter=2, tol=0.0)
    group = _em.Group(2, random_state=0, covariance_type=covariance_type)
    (fitted,) = _em.fit_groups(blocks, settings, [group])
    run = fitted.best
    back = _em.Run.from_record(run.to_record(), covariance_type)
    for name in ("weights", "means", "precisions_cholesky"):
        np.testing.assert_array_equal(getattr(back.params, name), getattr(run.params, name))
    assert (back.lower_bounds, back.n_iter, back.converged) == (
        run.lower_bounds, run.n_iter, run.converged)


def test_every_m_step_reports_an_empty_component():
    X = np.vstack([np.zeros((50, 2)), np.ones((50, 2))])
    blocks = _passes.as_blocks(da.from_array(X, chunks=50))
    far = _em.InitialParams(np.array([0.5, 0.25, 0.25]),
                            np.array([[0.0, 0.0], [1.0, 1.0], [1e3, 1e3]]),
                            np.stack([np.eye(2)] * 3))
    with pytest.warns(_em.EmptyComponentWarning, match=r"Component\(s\) \[2\]"):
        _em.fit_groups(blocks, _em.Settings(max_iter=1), [_em.Group(3)], init=far)
