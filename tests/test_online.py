"""Stepwise (online) EM: the packet update, the minibatch driver, partial_fit."""

from __future__ import annotations

import io
import warnings

import dask.array as da
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from sklearn.exceptions import ConvergenceWarning

from dgmm import GaussianMixture, _em, _passes
from dgmm import _kernels as K
from dgmm._stats import SuffStats
from tests.helpers import COVARIANCE_TYPES, mixture_data

FITTED = ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_",
          "n_features_in_", "n_steps_", "n_samples_seen_", "step_size_", "running_stats_")


def _init_kwargs(X, k, covariance_type, seed=0, init_params="random_from_data"):
    """Explicit starting parameters (an init and one batch-EM step), as *_init kwargs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm = GaussianMixture(k, covariance_type=covariance_type, init_params=init_params,
                             max_iter=1, random_state=seed).fit(X)
    return {"weights_init": gm.weights_, "means_init": gm.means_,
            "precisions_init": gm.precisions_}


def _state(gm) -> dict:
    return {name: np.copy(getattr(gm, name)) for name in FITTED if hasattr(gm, name)}


def _assert_same_state(a: dict, b: dict, rtol: float = 0.0):
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=rtol, atol=0, err_msg=name)


def _mean_error(fitted, true):
    dist = np.linalg.norm(fitted[:, None, :] - true[None, :, :], axis=2)
    rows, cols = linear_sum_assignment(dist)
    return dist[rows, cols].max()


def _random_packet(rng, covariance_type, k=3, d=4, n=50, offset=0.0):
    X = rng.normal(size=(n, d)) + offset
    resp = rng.dirichlet(np.ones(k), size=n).T
    shift = X[:k] + rng.normal(size=(k, d))
    return K.stats_from_resp(X, resp, shift, X.mean(axis=0), covariance_type,
                             loglik=rng.normal())


# --------------------------------------------------------------------------
# The packet: stepwise update, pack/unpack, inverse M-step
# --------------------------------------------------------------------------


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_stepped_is_the_convex_combination(covariance_type):
    rng = np.random.default_rng(1)
    a = _random_packet(rng, covariance_type, offset=1e3).scaled(1 / 50)
    b = _random_packet(rng, covariance_type, offset=1e3)
    rho = 0.3
    got = a.stepped(b, rho)
    assert got.shift is b.shift and got.center is b.center
    want = a.shifted(b.shift, b.center)
    for name in ("nk", "sk", "qk"):
        expected = (1 - rho) * getattr(want, name) + rho * getattr(b, name) / b.n
        np.testing.assert_allclose(getattr(got, name), expected, rtol=1e-10, atol=1e-8)
    assert got.n == pytest.approx(1.0)
    assert got.loglik == pytest.approx((1 - rho) * a.loglik + rho * b.loglik / b.n)
    assert got.n_rows == a.n_rows + b.n_rows


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_pack_unpack_round_trip(covariance_type):
    st = _random_packet(np.random.default_rng(2), covariance_type)
    vec = st.pack()
    assert vec.dtype == np.float64 and vec.ndim == 1
    back = SuffStats.unpack(vec, covariance_type, 3, 4)
    for name in ("shift", "center", "nk", "sk", "qk"):
        np.testing.assert_array_equal(getattr(back, name), getattr(st, name))
    assert (back.n, back.loglik, back.n_rows) == (st.n, st.loglik, st.n_rows)
    with pytest.raises(ValueError, match="must have shape"):
        SuffStats.unpack(vec[:-1], covariance_type, 3, 4)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_stats_from_params_inverts_the_m_step(covariance_type):
    X, _, _ = mixture_data(n=2000, d=3, k=3)
    st = K.estep_stats(X, _em.params_from_stats(
        K.stats_from_resp(X, np.random.default_rng(0).dirichlet(np.ones(3), 2000).T,
                          np.zeros((3, 3)), np.zeros(3), covariance_type), 1e-6)[0])
    params, cov = _em.params_from_stats(st, 1e-6)
    inv = K.stats_from_params(params, cov, 1e-6)
    assert inv.n == pytest.approx(1.0)
    params2, cov2 = _em.params_from_stats(inv, 1e-6)
    np.testing.assert_allclose(params2.weights, params.weights, rtol=1e-12)
    np.testing.assert_allclose(params2.means, params.means, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cov2, cov, rtol=1e-9)


# --------------------------------------------------------------------------
# The driver: epoch plans
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("sizes", "batch_size", "n_batches"), [
    ([1000] * 10, 1000, 10),   # one block per minibatch
    ([250] * 40, 1000, 10),    # several whole blocks per minibatch
    ([4000, 3000, 3001], 1000, 10),  # large blocks cut into slices
    ([7], 1000, 1),            # fewer rows than one minibatch
])
def test_epoch_plan_covers_every_row_once(sizes, batch_size, n_batches):
    rng = np.random.default_rng(0)
    plans = [_em.epoch_plan(sizes, batch_size, rng) for _ in range(2)]
    for plan in plans:
        assert len(plan) == n_batches
        seen = [np.zeros(n, dtype=int) for n in sizes]
        for batch in plan:
            rows = sum(stop - start for _, start, stop in batch)
            assert rows < 2 * batch_size or n_batches == 1
            for b, start, stop in batch:
                assert 0 < stop - start <= batch_size
                seen[b][start:stop] += 1
        assert all((s == 1).all() for s in seen)
    if len(sizes) > 1:
        assert plans[0] != plans[1]  # a new order every epoch
    in_order = _em.epoch_plan(sizes, batch_size, None)
    flat = [p for batch in in_order for p in batch]
    assert flat == sorted(flat)


def test_minibatch_step_sums_its_pieces():
    X, _, _ = mixture_data(n=3000, d=3, k=2)
    blocks = _passes.as_blocks(da.from_array(X, chunks=500))
    params = _em.params_from_stats(K.estep_stats(X, K.Params(
        "full", np.full(2, 0.5), X[:2], np.stack([np.eye(3)] * 2))), 1e-6)[0]
    pieces = [(4, 100, 400), (1, 0, 500)]
    (st,) = _passes.estep_pass(blocks, [params], scheduler="sync", pieces=pieces)
    want = K.estep_stats(X[2100:2400], params) + K.estep_stats(X[500:1000], params)
    np.testing.assert_allclose(st.qk, want.qk, rtol=1e-12)
    assert st.n_rows == 800


def test_first_step_keeps_the_most_likely_initialisation():
    X, _, means = mixture_data(n=600, d=2, k=2, seed=13)
    good = K.Params("spherical", np.full(2, 0.5), means, np.ones(2))
    bad = K.Params("spherical", np.full(2, 0.5), means[::-1] + 50.0, np.ones(2))
    states = [_em.OnlineState.from_params(p, np.ones(2), 1e-6) for p in (bad, good)]
    packets = [K.estep_stats(X, p) for p in (bad, good)]
    state, packet = _em.stepwise_step(states, packets, reg_covar=1e-6, decay=0.6, offset=0.0)
    assert packet is packets[1] and state.n_steps == 1 and state.step_size == 1.0
    assert _mean_error(state.params.means, means) < 0.5


# --------------------------------------------------------------------------
# Minibatch fit
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def million():
    X, _, means = mixture_data(n=1_000_000, d=8, k=5, seed=3)
    return X, means


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_one_epoch_reaches_the_batch_optimum(million, covariance_type):
    X, true_means = million
    init = _init_kwargs(X[:20_000], 5, covariance_type, seed=1, init_params="kmeans")
    batch = GaussianMixture(5, covariance_type=covariance_type, tol=1e-5, max_iter=200,
                            **init).fit(X)
    assert batch.converged_
    mini = GaussianMixture(5, covariance_type=covariance_type, algorithm="minibatch",
                           batch_size=10_000, max_iter=1, random_state=0, **init)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # one epoch cannot test tol
        mini.fit(X)
    assert (mini.n_iter_, mini.n_steps_, mini.n_samples_seen_) == (1, 100, 1_000_000)
    # batch.lower_bound_ is within tol of the optimum it converged to
    assert mini.score(X) > batch.lower_bound_ - 0.01
    assert _mean_error(mini.means_, batch.means_) < 0.05
    assert _mean_error(mini.means_, true_means) < 0.1


def test_minibatch_stops_on_tol_and_polishes(capsys):
    X, _, _ = mixture_data(n=20_000, d=3, k=3, seed=4)
    init = _init_kwargs(X, 3, "full")
    kw = dict(algorithm="minibatch", batch_size=1000, random_state=0, **init)
    gm = GaussianMixture(3, tol=1e-3, max_iter=50, verbose=2, verbose_interval=1, **kw).fit(X)
    assert gm.converged_ and 1 < gm.n_iter_ < 50
    assert f"epoch {gm.n_iter_}: mean log-likelihood" in capsys.readouterr().out
    assert len(gm.lower_bounds_) == gm.n_iter_
    assert gm.n_steps_ == 20 * gm.n_iter_ and gm.n_samples_seen_ == 20_000 * gm.n_iter_
    polished = GaussianMixture(3, tol=1e-6, max_iter=1, polish_iter=100, **kw).fit(X)
    batch = GaussianMixture(3, tol=1e-6, max_iter=200, **init).fit(X)
    assert polished.converged_ and polished.n_iter_ > 1 + 1
    assert polished.lower_bound_ == pytest.approx(batch.lower_bound_, abs=1e-5)
    # the stream goes on from the polished model
    assert polished.n_steps_ == 20
    polished.partial_fit(X[:1000])
    assert polished.n_steps_ == 21


def test_seeded_shuffle_is_reproducible():
    X, _, _ = mixture_data(n=6000, d=3, k=3, seed=5)
    init = _init_kwargs(X, 3, "diag")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fits = [GaussianMixture(3, covariance_type="diag", algorithm="minibatch",
                                batch_size=500, max_iter=2, tol=0, random_state=seed,
                                **init).fit(X)
                for seed in (7, 7, 8)]
    np.testing.assert_array_equal(fits[0].means_, fits[1].means_)
    assert not np.array_equal(fits[0].means_, fits[2].means_)


# --------------------------------------------------------------------------
# partial_fit
# --------------------------------------------------------------------------


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_partial_fit_loop_equals_minibatch_fit(covariance_type):
    X, _, _ = mixture_data(n=100 * 300, d=3, k=3, seed=6)
    init = _init_kwargs(X, 3, covariance_type)
    kw = dict(covariance_type=covariance_type, learning_decay=0.7, learning_offset=2.0, **init)
    stream = GaussianMixture(3, **kw)
    for batch in (X[i : i + 300] for i in range(0, len(X), 300)):
        stream.partial_fit(batch)
    fitted = GaussianMixture(3, algorithm="minibatch", batch_size=300, max_iter=1,
                             shuffle=False, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fitted.fit(da.from_array(X, chunks=300))
    assert stream.n_steps_ == 100
    assert stream.step_size_ == pytest.approx(102 ** -0.7)
    # same arithmetic; only BLAS threading may differ between the two paths
    _assert_same_state(_state(stream), _state(fitted), rtol=1e-12)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_decay_one_gives_the_cumulative_average(covariance_type):
    X, _, _ = mixture_data(n=8 * 400, d=3, k=3, seed=7, offset=1e4)
    init = _init_kwargs(X, 3, covariance_type)
    gm = GaussianMixture(3, covariance_type=covariance_type, learning_decay=1.0,
                         learning_offset=0.0, **init)
    params = K.Params(covariance_type, init["weights_init"], init["means_init"],
                      K.precision_cholesky_from_precisions(init["precisions_init"],
                                                           covariance_type))
    packets = []
    for batch in np.split(X, 8):
        # the E-step of each step, recomputed independently of the estimator
        packets.append(K.estep_stats(batch, params).scaled(1 / 400))
        gm.partial_fit(batch)
        params = gm._params()
    running = SuffStats.unpack(gm.running_stats_, covariance_type, 3, 3)
    assert gm.n_steps_ == 8 and gm.step_size_ == pytest.approx(1 / 8)
    assert gm.n_samples_seen_ == len(X)
    common = [p.shifted(running.shift, running.center) for p in packets]
    for name in ("nk", "sk", "qk"):
        average = sum(getattr(p, name) for p in common) / 8
        scale = np.abs(average).max()
        np.testing.assert_allclose(getattr(running, name), average, rtol=1e-9,
                                   atol=1e-9 * scale, err_msg=name)
    assert running.n == pytest.approx(1.0, rel=1e-12)
    assert running.loglik == pytest.approx(sum(p.loglik for p in packets) / 8, rel=1e-12)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_resume_from_saved_attributes_continues_exactly(covariance_type):
    X, _, _ = mixture_data(n=10 * 200, d=3, k=2, seed=8)
    batches = np.split(X, 10)
    kw = dict(covariance_type=covariance_type, init_params="random_from_data", random_state=0)
    gm = GaussianMixture(2, **kw)
    for batch in batches[:5]:
        gm.partial_fit(batch)
    buffer = io.BytesIO()  # what a model file keeps: named plain arrays, no pickle
    np.savez(buffer, **_state(gm))
    buffer.seek(0)
    restored = GaussianMixture(2, **kw)
    with np.load(buffer, allow_pickle=False) as saved:
        for name in saved.files:
            value = saved[name]
            setattr(restored, name, value if value.ndim else value.item())
    for batch in batches[5:]:
        gm.partial_fit(batch)
        restored.partial_fit(batch)
    _assert_same_state(_state(gm), _state(restored))


def test_partial_fit_accepts_dask_batches():
    X, _, _ = mixture_data(n=1200, d=3, k=2, seed=9)
    kw = dict(covariance_type="tied", init_params="random_from_data", random_state=0)
    a, b = GaussianMixture(2, **kw), GaussianMixture(2, **kw)
    for batch in np.split(X, 3):
        a.partial_fit(batch)
        b.partial_fit(da.from_array(batch, chunks=100))
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-10)


def test_partial_fit_after_batch_fit_starts_a_stream_from_its_parameters():
    X, _, _ = mixture_data(n=4000, d=3, k=3, seed=10)
    gm = GaussianMixture(3, algorithm="minibatch", batch_size=1000, max_iter=2, tol=0,
                         init_params="random_from_data", random_state=0)
    with pytest.warns(ConvergenceWarning) as record:
        gm.fit(X)
    assert record[0].filename == __file__  # points at the caller
    assert gm.n_steps_ == 8
    gm.set_params(algorithm="batch", warm_start=True, learning_offset=1e6, tol=1e-2).fit(X)
    assert not hasattr(gm, "running_stats_") and not hasattr(gm, "n_steps_")
    assert gm.n_samples_seen_ == 4000  # the rows of the batch fit
    means = gm.means_
    gm.partial_fit(X[:500])
    # the fitted rows count as 4000 // 1000 steps taken, and t continues from there;
    # a huge offset makes rho tiny: the step barely moves the batch-fitted model
    assert gm.n_steps_ == 5 and gm.step_size_ == pytest.approx(1 / (1e6 + 5) ** 0.6)
    assert gm.n_samples_seen_ == 4500
    np.testing.assert_allclose(gm.means_, means, atol=1e-3)


@pytest.mark.parametrize(("make_bad", "match"), [
    (lambda b: b[:, :2], "features"),
    (lambda b: b[:0], "0 rows"),
    (lambda b: np.where(np.arange(len(b))[:, None] == 57, np.nan, b), "row 57"),
])
def test_rejected_batch_leaves_the_model_unchanged(make_bad, match):
    X, _, _ = mixture_data(n=900, d=3, k=2, seed=11)
    gm = GaussianMixture(2, init_params="random_from_data", random_state=0)
    gm.partial_fit(X[:300]).partial_fit(X[300:600])
    before = _state(gm)
    with pytest.raises(ValueError, match=match):
        gm.partial_fit(make_bad(X[600:]))
    _assert_same_state(before, _state(gm))
    gm.partial_fit(X[600:])  # and the stream goes on
    assert gm.n_steps_ == 3


def test_rejected_first_batch_leaves_the_estimator_unfitted():
    X, _, _ = mixture_data(n=300, d=3, k=2, seed=12)
    X[5, 1] = np.nan
    gm = GaussianMixture(2, init_params="random", random_state=0)
    with pytest.raises(ValueError, match="NaN"):
        gm.partial_fit(X)
    assert not hasattr(gm, "means_")
    with pytest.raises(ValueError, match="n_samples >= n_components"):
        GaussianMixture(3).partial_fit(X[10:12])


@pytest.mark.parametrize(("param", "value"), [
    ("learning_decay", 0.5), ("learning_decay", 1.5), ("learning_decay", "0.7"),
    ("learning_offset", -1.0), ("batch_size", 0), ("polish_iter", -1),
    ("algorithm", "online"), ("shuffle", "yes"), ("min_step_size", -0.1), ("min_step_size", 1.5),
])
def test_invalid_online_parameters(param, value):
    X, _, _ = mixture_data(n=200, d=2, k=2)
    gm = GaussianMixture(2, init_params="random_from_data", **{param: value})
    for method in (gm.fit, gm.partial_fit):
        with pytest.raises(ValueError, match=param):
            method(X)


def test_minibatch_on_a_distributed_client_matches_threads():
    distributed = pytest.importorskip("distributed")
    X, _, _ = mixture_data(n=8000, d=3, k=3, seed=14)
    Xd = da.from_array(X, chunks=500)
    kw = dict(algorithm="minibatch", batch_size=1000, max_iter=1, random_state=0,
              init_params="random_from_data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        local = GaussianMixture(3, **kw).fit(Xd)
        with distributed.Client(processes=False, n_workers=1, threads_per_worker=2,
                                dashboard_address=":0"):
            remote = GaussianMixture(3, **kw).fit(Xd)
    assert remote.n_steps_ == 8  # two blocks per step, computed in parallel
    np.testing.assert_allclose(remote.means_, local.means_, rtol=1e-10)


def test_a_stream_built_by_partial_fit_alone_saves_and_continues(tmp_path):
    import dgmm

    X, _, _ = mixture_data(n=2000, d=3, k=2)
    gm = GaussianMixture(2, random_state=0)
    for batch in np.array_split(X[:1000], 4):
        gm.partial_fit(batch)
    gm.save(tmp_path / "stream.npz")
    back = dgmm.load(tmp_path / "stream.npz")
    gm.partial_fit(X[1000:1500])
    back.partial_fit(X[1000:1500])
    np.testing.assert_array_equal(back.means_, gm.means_)
    assert back.n_steps_ == gm.n_steps_ == 5
