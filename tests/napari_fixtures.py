"""Fixtures shared by the napari plugin tests (a small simulated nucleus in a viewer, captured errors)."""
import pytest

from napari_plugin._sample_data import simulated_nucleus

SMALL = {"grid": 48, "n_localizations": 6000, "seed": 3}


@pytest.fixture(scope="module")
def small_sample():
    return simulated_nucleus(pixel_size=80.0, **SMALL)


@pytest.fixture
def viewer_with_sample(make_napari_viewer, small_sample):
    viewer = make_napari_viewer()
    for data, kwargs, kind in small_sample:
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    return viewer


@pytest.fixture
def errors(monkeypatch):
    """Messages sent to napari's error notifications during the test."""
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    return shown
