"""napari plugin for chromflow: open localizations, segment the nucleus, infer rate maps.

The plugin is a thin layer of widgets over the :mod:`chromflow` library; every computation
happens in the library. napari discovers it through the ``napari.manifest`` entry point
(``napari_plugin:napari.yaml``). Importing this package does not import napari, Qt or torch.
"""
from __future__ import annotations

from chromflow import __version__  # one version for the library and its plugin

__all__ = ["__version__"]
