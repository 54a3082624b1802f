"""Pictures: headless (Agg), each written as a non-empty PNG, the right shapes drawn."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from dgmm import GaussianMixture
from dgmm.outliers import GaussianMixtureOutlierDetector
from tests.helpers import COVARIANCE_TYPES, as_kind, mixture_data

pytest.importorskip("matplotlib")
from matplotlib.patches import Ellipse  # noqa: E402

from dgmm import plot  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data():
    X, _, _ = mixture_data(n=2000, d=4, k=3, seed=2)
    return X


def _png(path) -> bytes:
    content = path.read_bytes()
    assert content.startswith(PNG_MAGIC) and len(content) > 5000
    return content


def _ellipses(ax) -> list[Ellipse]:
    return [p for p in ax.patches if isinstance(p, Ellipse)]


@pytest.mark.parametrize(
    ("covariance_type", "kind"),
    list(zip(COVARIANCE_TYPES, ["numpy", "dask-uneven", "zarr", "dask-uneven"], strict=True)),
)
def test_ellipses_draw_k_per_sigma_level_over_a_sample(data, tmp_path, kind, covariance_type):
    gm = GaussianMixture(3, covariance_type=covariance_type, random_state=0, max_iter=5).fit(data)
    path = tmp_path / "e.png"
    fig = plot.ellipses(gm, as_kind(data, kind), features=(1, 3), n_points=500, path=path)
    _png(path)
    (ax,) = fig.axes
    drawn = _ellipses(ax)
    assert len(drawn) == 2 * gm.n_components
    assert sorted(e.get_linestyle() for e in drawn) == ["-"] * 3 + ["--"] * 3
    assert 300 < len(ax.collections[0].get_offsets()) < 700  # about n_points sampled rows
    # 2 sigma is twice 1 sigma, and the centres are the chosen features of the means
    one = {tuple(e.center): e.width for e in drawn if e.get_linestyle() == "-"}
    two = {tuple(e.center): e.width for e in drawn if e.get_linestyle() == "--"}
    assert one.keys() == two.keys()
    np.testing.assert_allclose([two[c] for c in one], [2 * one[c] for c in one])
    np.testing.assert_allclose(sorted(one), sorted(map(tuple, gm.means_[:, [1, 3]])))


def test_ellipses_on_principal_axes_project_the_covariances(data):
    gm = GaussianMixture(3, random_state=0).fit(data)
    fig = plot.ellipses(gm, data, features="pca", n_points=5000)
    drawn = _ellipses(fig.axes[0])
    assert len(drawn) == 6
    origin, axes, _ = plot.projection(data, "pca")
    np.testing.assert_allclose(axes.T @ axes, np.eye(2), atol=1e-12)
    # the projected 1-sigma ellipse of each component has the area of its 2x2 covariance
    areas = sorted(np.pi * e.width * e.height / 4 for e in drawn if e.get_linestyle() == "-")
    want = sorted(np.pi * np.sqrt(np.linalg.det(axes.T @ c @ axes)) for c in gm.covariances_)
    np.testing.assert_allclose(areas, want, rtol=1e-9)


@pytest.mark.parametrize("features", [(0, 4), (1,), "tsne"])
def test_ellipses_refuse_bad_features(data, features):
    gm = GaussianMixture(2, random_state=0, max_iter=5).fit(data)
    with pytest.raises(ValueError, match="features must be"):
        plot.ellipses(gm, data, features=features)


def test_selection_curves_one_line_per_covariance_type_best_and_late_marked(tmp_path):
    table = [
        {"n_components": k, "covariance_type": t, "bic": 100.0 - 10 * k + k * k + off,
         "aic": 90.0 - k, "score": -1.0, "n_iter": 10, "converged": k != 4}
        for t, off in (("full", 0.0), ("diag", 5.0)) for k in range(1, 7)
    ]
    path = tmp_path / "s.png"
    fig = plot.selection_curves(table, "bic", path=path)
    _png(path)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["full", "diag"]
    labels = [c.get_label() for c in ax.collections]
    assert labels == ["did not converge", "best: 5, full"]
    np.testing.assert_array_equal(ax.collections[0].get_offsets()[:, 0], [4, 4])
    # a table without covariance_type (as select_n_components gives) is one line
    plain = [{k: v for k, v in row.items() if k != "covariance_type"} for row in table[:6]]
    assert len(plot.selection_curves(plain, "aic").axes[0].lines) == 1
    with pytest.raises(ValueError, match="criterion"):
        plot.selection_curves(table, "icl")


def test_lower_bounds_and_log_density_histogram(data, tmp_path):
    gm = GaussianMixture(3, random_state=0, tol=0, max_iter=7).fit(data)
    fig = plot.lower_bounds(gm, path=tmp_path / "lb.png")
    _png(tmp_path / "lb.png")
    np.testing.assert_array_equal(fig.axes[0].lines[0].get_ydata(), gm.lower_bounds_)

    det = GaussianMixtureOutlierDetector(gm, contamination=0.05).fit(data)
    from_detector = plot.log_density_histogram(det, path=tmp_path / "h.png").axes[0]
    _png(tmp_path / "h.png")
    from_scores = plot.log_density_histogram(gm.score_samples(data), threshold=det.threshold_)
    for ax in (from_detector, from_scores.axes[0]):
        counts = sum(p.get_data().values.sum() for p in ax.patches)
        assert counts == len(data)
        (line,) = [x for x in ax.lines if x.get_linestyle() == "--"]
        assert line.get_xdata()[0] == det.threshold_


def test_without_matplotlib_the_error_says_how_to_install(monkeypatch, data):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r'pip install "dgmm\[plot\]"'):
        plot.lower_bounds(GaussianMixture(2, max_iter=3).fit(data))
