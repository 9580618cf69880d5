"""The public names of ../shared/DESIGN.md resolve to what they promise."""
import importlib
import subprocess
import sys

import chromflow as cf


def test_render_stays_the_function_after_submodule_imports():
    # importing the submodule (as the napari plugin and batch workers do) must not shadow cf.render
    importlib.import_module("chromflow.render")
    importlib.import_module("chromflow.pipeline")
    assert callable(cf.render)
    assert cf.render.__module__ == "chromflow.render"


def test_public_names_resolve():
    for name in ["read_localizations", "write_localizations", "read_image", "write_image", "render",
                 "segment_nucleus", "chromatin_fields", "ChromatinFields", "infer_rates", "RateMapResult",
                 "run_file", "PipelineSettings", "run_batch", "Image", "InputError", "merge_blinks"]:
        assert getattr(cf, name) is not None, name
    assert callable(cf.mollifier.derivative)
    assert cf.mollifier.MollifierLayer.__module__.startswith("chromflow.mollifier")
    assert callable(cf.simulate.chromatin_steady_state)


def test_import_does_not_load_torch():
    # the CLI's start-up and napari's plugin discovery stay fast: torch loads only when needed
    code = "import sys, chromflow; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_citation_and_license_match_the_package():
    """CITATION.cff carries the released version and the licence the package declares."""
    from pathlib import Path

    import yaml

    try:
        import tomllib
    except ModuleNotFoundError:          # Python 3.10 has no tomllib
        import pytest

        tomllib = pytest.importorskip("tomli")

    root = Path(__file__).resolve().parents[1]
    citation = yaml.safe_load((root / "CITATION.cff").read_text(encoding="utf-8"))
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert citation["version"] == cf.__version__
    assert citation["license"] == project["license"] == "BSD-3-Clause"
    assert "BSD 3-Clause License" in (root / project["license-files"][0]).read_text(encoding="utf-8")
    # the release date is the CHANGELOG's for this version
    assert f"## {cf.__version__} ({citation['date-released']})" in (root / "CHANGELOG.md").read_text(encoding="utf-8")
