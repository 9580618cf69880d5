"""The npe2 manifest is valid, its python names import, and napari finds the plugin."""
from pathlib import Path

import pytest

npe2 = pytest.importorskip("npe2")

MANIFEST = Path(__file__).resolve().parents[1] / "napari_plugin" / "napari.yaml"


def test_manifest_validates_and_imports():
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    assert manifest.name == "chromflow"
    manifest.validate_imports()  # raises when a python_name does not resolve
    contributions = manifest.contributions
    assert {r.command for r in contributions.readers} == {"chromflow.get_reader"}
    assert len(contributions.widgets) == 5  # render, segment, infer, results, domains
    assert [s.key for s in contributions.sample_data] == ["simulated_nucleus"]
    patterns = contributions.readers[0].filename_patterns
    assert {"*.csv", "*.hdf5", "*.tif"} <= set(patterns)


def test_entry_point_finds_the_manifest():
    pm = npe2.PluginManager()
    pm.discover()
    assert "chromflow" in pm._manifests  # via the napari.manifest entry point + package data
    readers = list(pm.iter_compatible_readers(["cell.csv"]))
    assert any(r.command == "chromflow.get_reader" for r in readers)
