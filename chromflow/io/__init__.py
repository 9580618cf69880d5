"""Readers and writers: localization tables (ThunderSTORM, Picasso, CSV) and TIFF images.

All lengths are in nanometres; see ``docs/formats.md`` for the formats and their quirks.

Examples
--------
>>> from chromflow.io import read_localizations, read_image   # doctest: +SKIP
>>> locs = read_localizations("cell_locs.hdf5")               # doctest: +SKIP
>>> img = read_image("cell.tif")                              # doctest: +SKIP
"""
from ._atomic import atomic_path
from .images import DEFAULT_PIXEL_SIZE_NM, read_image, write_image
from .localizations import read_localizations, write_localizations

__all__ = ["read_localizations", "write_localizations", "read_image", "write_image",
           "DEFAULT_PIXEL_SIZE_NM", "atomic_path"]
