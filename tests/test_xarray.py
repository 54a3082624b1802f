"""xarray in, xarray out: gridded Datasets with a land mask, fitted, and labels back on the grid."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
from dask.utils import key_split

import dgmm
from dgmm import GaussianMixture, _xarray
from dgmm.outliers import GaussianMixtureOutlierDetector
from tests.helpers import reference_init

xr = pytest.importorskip("xarray")

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

T, NY, NX = 8, 24, 36
CHUNKS = {"time": 3, "lat": 10, "lon": 12}  # along time and space, ragged at the ends


def ocean(seed: int = 0) -> xr.Dataset:
    """Temperature and salinity on (time, lat, lon): three water masses, land NaN everywhere."""
    rng = np.random.default_rng(seed)
    lat, lon = np.linspace(-30, 30, NY), np.linspace(100, 170, NX)
    mass = (lat[:, None] > 0).astype(int) + (lon[None, :] > 140)  # 0, 1 or 2
    centre = np.array([[4.0, 34.0], [12.0, 35.0], [22.0, 36.0]])
    temp = centre[mass, 0][None] + rng.normal(size=(T, NY, NX))
    psal = centre[mass, 1][None] + 0.2 * rng.normal(size=(T, NY, NX))
    land = (lat[:, None] > 10) & (lon[None, :] < 120)
    temp[:, land] = np.nan
    psal[:, land] = np.nan
    dims = ("time", "lat", "lon")
    return xr.Dataset(
        {"TEMP": (dims, temp), "PSAL": (dims, psal)},
        coords={"time": np.arange(T), "lat": lat, "lon": lon,
                "area": (("lat", "lon"), np.cos(np.radians(lat))[:, None] * np.ones(NX))},
    )


def valid_rows(ds: xr.Dataset, names=("TEMP", "PSAL")):
    """The points with an observed feature, stacked in C order, and their mask."""
    stacked = np.stack([ds[n].values for n in names], axis=-1)
    mask = ~np.isnan(stacked).all(axis=-1)
    return stacked[mask], mask


def on_grid(values, mask, fill):
    out = np.full(mask.shape + np.shape(values)[1:], fill, dtype=np.asarray(values).dtype)
    out[mask] = values
    return out


def n_rechunk_merges(x) -> int:
    return sum(key_split(k).startswith("rechunk-merge") for k in dict(x.__dask_graph__()))


@pytest.fixture(scope="module")
def ds():
    return ocean().chunk(CHUNKS)


@pytest.fixture(scope="module")
def start(ds):
    X, _ = valid_rows(ds)
    return reference_init(X, 3, "full", seed=0)


@pytest.fixture(scope="module")
def fitted(ds, start):
    return GaussianMixture(3, max_iter=10, tol=0, **start).fit(ds)


def test_a_dask_dataset_fits_as_numpy_on_its_valid_points_and_labels_come_back_on_the_grid(
        ds, start, fitted):
    X, mask = valid_rows(ds)
    ref = GaussianMixture(3, max_iter=10, tol=0, **start).fit(X)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_allclose(getattr(fitted, name), getattr(ref, name), rtol=1e-9,
                                   atol=1e-12)
    assert fitted.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-12)
    labels = fitted.predict(ds)
    assert isinstance(labels.data, da.Array)  # lazy for lazy input
    assert labels.dims == ("time", "lat", "lon") and labels.name == "labels"
    assert labels.chunks == ds.TEMP.chunks
    for c in ("time", "lat", "lon", "area"):
        xr.testing.assert_identical(labels[c], ds[c])
    np.testing.assert_array_equal(labels.values, on_grid(ref.predict(X), mask, -1))

    proba = fitted.predict_proba(ds)
    assert proba.dims == ("time", "lat", "lon", "component")
    np.testing.assert_array_equal(proba.component.values, np.arange(3))
    np.testing.assert_allclose(proba.values, on_grid(ref.predict_proba(X), mask, np.nan),
                               rtol=1e-9, atol=1e-12)
    dens = fitted.score_samples(ds).values
    np.testing.assert_array_equal(np.isnan(dens), ~mask)
    np.testing.assert_allclose(dens[mask], ref.score_samples(X), rtol=1e-9)
    assert fitted.score(ds) == pytest.approx(ref.score(X), rel=1e-12)
    assert fitted.bic(ds) == pytest.approx(ref.bic(X), rel=1e-12)
    assert fitted.aic(ds) == pytest.approx(ref.aic(X), rel=1e-12)


def test_numpy_backed_input_gives_numpy_backed_outputs(ds, fitted):
    eager = ocean()
    labels = fitted.predict(eager)
    assert isinstance(labels.data, np.ndarray)
    np.testing.assert_array_equal(labels.values, fitted.predict(ds).values)


def test_area_weights_on_lat_lon_broadcast_over_time_as_numpy_weights(ds, start):
    X, mask = valid_rows(ds)
    w = np.broadcast_to(ds.area.values, mask.shape)[mask]
    got = GaussianMixture(3, max_iter=5, tol=0, **start).fit(ds, sample_weight=ds.area)
    ref = GaussianMixture(3, max_iter=5, tol=0, **start).fit(X, sample_weight=w)
    np.testing.assert_allclose(got.means_, ref.means_, rtol=1e-9)
    np.testing.assert_allclose(got.covariances_, ref.covariances_, rtol=1e-9)
    with pytest.raises(TypeError, match="DataArray on its sample dimensions"):
        GaussianMixture(3).fit(ds, sample_weight=w)


@pytest.mark.parametrize("chunks", [{"time": 2}, CHUNKS], ids=["time-only", "time-and-space"])
def test_points_become_rows_without_rechunking(chunks):
    ds = ocean().chunk(chunks)
    grid = _xarray.to_grid(ds)
    assert n_rechunk_merges(grid.X) == 0
    assert grid.X.numblocks == (ds.TEMP.data.npartitions, 1)
    model = GaussianMixture(2, max_iter=2, random_state=0).fit(ds)
    for out in (model.predict(ds), model.predict_proba(ds)):
        assert n_rechunk_merges(out.data) == 0
        assert out.chunks[:3] == ds.TEMP.chunks


def test_a_dataarray_with_its_feature_dim_first_in_storage():
    ds = ocean()
    band = ds.to_dataarray("var").transpose("var", "time", "lat", "lon").chunk({"time": 4})
    model = GaussianMixture(3, max_iter=5, random_state=0).fit(band, feature_dim="var")
    assert list(model.feature_names_in_) == ["TEMP", "PSAL"]
    labels = model.predict(band)  # the feature dim is found by its coordinate
    assert labels.dims == ("time", "lat", "lon")
    np.testing.assert_array_equal(labels.values, model.predict(ds).values)
    with pytest.raises(ValueError, match="feature_dim 'band' is not a dimension"):
        GaussianMixture(2).fit(band, feature_dim="band")


def test_a_dataarray_without_string_feature_names_sets_none():
    ds = ocean()
    bands = ds.to_dataarray("band").assign_coords(band=[1, 2])  # numbers, as scikit-learn
    model = GaussianMixture(2, max_iter=2, random_state=0).fit(bands, feature_dim="band")
    assert not hasattr(model, "feature_names_in_")
    assert model.predict(bands.transpose("time", "lat", "lon", "band")).dims == (
        "time", "lat", "lon")
    with pytest.raises(ValueError, match=r"sample_dims \['time', 'lat'\] must be every"):
        GaussianMixture(2).fit(bands, feature_dim="band", sample_dims=["time", "lat"])


def test_points_missing_some_features_follow_the_missing_policy():
    ds = ocean()
    ds["PSAL"][0, 0, -1] = np.nan  # TEMP observed there
    with pytest.raises(ValueError, match=r"NaN.*point \{'time': 0, 'lat': 0, 'lon': 35\}"):
        GaussianMixture(2, random_state=0).fit(ds.chunk(CHUNKS))
    model = GaussianMixture(2, random_state=0, max_iter=5, missing="marginalize").fit(
        ds.chunk(CHUNKS))
    dens = model.score_samples(ds)
    assert np.isfinite(dens[0, 0, -1]) and np.isnan(dens[0, -1, 0])  # land stays NaN


def test_feature_names_select_and_order_variables_by_name(ds, fitted):
    assert list(fitted.feature_names_in_) == ["TEMP", "PSAL"]
    swapped = ds[["PSAL", "TEMP"]].assign(extra=ds.TEMP * 0)
    np.testing.assert_array_equal(fitted.predict(swapped).values, fitted.predict(ds).values)
    with pytest.raises(ValueError, match=r"no variable\(s\) \['PSAL'\]"):
        fitted.predict(ds[["TEMP"]])
    with pytest.raises(ValueError, match=r"no variable\(s\) \['DOXY'\]"):
        GaussianMixture(2).fit(ds, features=["TEMP", "DOXY"])
    with pytest.raises(ValueError, match="xarray input only"):
        GaussianMixture(2).fit(valid_rows(ds)[0], features=["TEMP"])
    refit = GaussianMixture(2, max_iter=2, random_state=0).fit(valid_rows(ds)[0])
    assert not hasattr(refit, "feature_names_in_")  # a NumPy fit has no names


def test_model_file_round_trip_keeps_feature_names(ds, fitted, tmp_path):
    path = tmp_path / "model.npz"
    fitted.save(path)
    loaded = dgmm.load(path)
    assert loaded.feature_names_in_.dtype == object
    np.testing.assert_array_equal(loaded.feature_names_in_, fitted.feature_names_in_)
    np.testing.assert_array_equal(loaded.predict(ds[["PSAL", "TEMP"]]).values,
                                  fitted.predict(ds).values)


def test_outlier_detector_on_a_dataset_skips_land(ds, fitted):
    X, mask = valid_rows(ds)
    det = GaussianMixtureOutlierDetector(fitted, contamination=0.05).fit(ds)
    ref = GaussianMixtureOutlierDetector(fitted, contamination=0.05).fit(X)
    assert det.threshold_ == ref.threshold_
    flags = det.predict(ds).values
    np.testing.assert_array_equal(flags, on_grid(ref.predict(X), mask, 0))
    assert list(det.feature_names_in_) == ["TEMP", "PSAL"]
    margin = det.decision_function(ds)
    assert margin.dims == ("time", "lat", "lon")
    np.testing.assert_array_equal(np.isnan(margin.values), ~mask)


def test_cli_fits_an_xarray_store_and_writes_labels_xarray_opens(ds, tmp_path):
    from click.testing import CliRunner

    from dgmm.cli import main

    store, model, out = tmp_path / "ocean.zarr", tmp_path / "m.npz", tmp_path / "labels.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr 3's note on consolidated metadata
        ocean().chunk({"time": 2}).to_zarr(store)
    runner = CliRunner()
    fit = runner.invoke(main, ["fit", str(store), "--features", "TEMP,PSAL", "--sample-dims",
                               "time,lat,lon", "--n-components", "3", "--seed", "0",
                               "--out", str(model), "-q"])
    assert fit.exit_code == 0, fit.output
    pred = runner.invoke(main, ["predict", str(model), str(store), "--out", str(out),
                                "--log-density", "-q"])
    assert pred.exit_code == 0, pred.output
    written = xr.open_zarr(out)  # no warning, no options
    assert written.labels.dims == ("time", "lat", "lon")
    xr.testing.assert_identical(written.lat, ds.lat)
    expected = dgmm.load(model).predict(ocean())
    np.testing.assert_array_equal(written.labels.values, expected.values)
    np.testing.assert_array_equal(np.isnan(written.log_density.values),
                                  np.isnan(ds.TEMP.values))
    inside = runner.invoke(main, ["predict", str(model), str(store), "--out",
                                  str(store / "labels")])
    assert inside.exit_code == 2 and "inside the input" in inside.output
    again = runner.invoke(main, ["fit", str(store), "--features", "TEMP,DOXY",
                                 "--n-components", "2", "--out", str(tmp_path / "x.npz")])
    assert again.exit_code != 0 and "DOXY" in again.output


def test_label_map_draws_a_2d_slice(fitted, ds):
    pytest.importorskip("matplotlib")
    from dgmm import plot

    labels = fitted.predict(ds).isel(time=0)
    fig = plot.label_map(labels)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "lon" and ax.get_ylabel() == "lat"
    assert ax.get_title() == "3 components"
    with pytest.raises(ValueError, match="2-D DataArray"):
        plot.label_map(fitted.predict(ds))
