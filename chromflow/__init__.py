"""chromflow: epigenetic reaction-rate maps from super-resolution images of chromatin.

The public names are imported lazily so that ``import chromflow`` (and the CLI's start-up, and
napari's plugin discovery) stays fast: torch is only loaded when a torch-backed name is used.

Examples
--------
>>> import chromflow as cf
>>> locs = cf.read_localizations("cell.csv")                      # doctest: +SKIP
>>> image = cf.render(locs, pixel_size=20.0, method="gaussian")   # doctest: +SKIP
>>> mask = cf.segment_nucleus(image)                              # doctest: +SKIP
>>> fields = cf.chromatin_fields(image, mask, grid=128)           # doctest: +SKIP
>>> result = cf.infer_rates(fields, method="pinn", seed=0)        # doctest: +SKIP
"""
from __future__ import annotations

import importlib

from .errors import CancelledError, ChromflowError, GridError, InputError, OutputError, SegmentationError
from .image import Image

# `render` is both a submodule and the public function: importing the submodule anywhere binds
# `chromflow.render` to the module, so bind the function eagerly, after the submodule loaded
# (numpy/scipy only, no torch), and it stays the function.
from .render import render

#: the release; it enters every settings fingerprint, so that `chromflow batch` recomputes results
#: an earlier release wrote (their numbers may differ) instead of skipping them as current
__version__ = "0.9.0"

# public name -> module that defines it
_LAZY = {
    "read_localizations": "chromflow.io",
    "write_localizations": "chromflow.io",
    "read_image": "chromflow.io",
    "write_image": "chromflow.io",
    "segment_nucleus": "chromflow.nucleus",
    "chromatin_fields": "chromflow.fields",
    "ChromatinFields": "chromflow.fields",
    "infer_rates": "chromflow.inverse",
    "RateMapResult": "chromflow.inverse",
    "run_file": "chromflow.pipeline",
    "PipelineSettings": "chromflow.pipeline",
    "run_batch": "chromflow.batch",
    "merge_blinks": "chromflow.blinks",
    "analyze_domains": "chromflow.domains",
    "DomainAnalysis": "chromflow.domains",
}
_SUBMODULES = {"io", "blinks", "mollifier", "models", "physics", "simulate", "nucleus", "fields",
               "inverse", "pipeline", "batch", "cli", "report", "training", "domains", "conditions",
               "evaluate"}

__all__ = sorted(["Image", "render", "ChromflowError", "InputError", "SegmentationError", "GridError",
                  "CancelledError", "OutputError", *_LAZY, *_SUBMODULES])


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        module = importlib.import_module(f"chromflow.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'chromflow' has no attribute {name!r}")


def __dir__():
    return __all__
