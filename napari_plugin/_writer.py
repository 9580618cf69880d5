"""napari writer: an image layer (a rate map, ...) as TIFF with its nm pixel size and origin.

napari's own TIFF writer drops ``scale`` and ``translate``; this one writes through
:func:`chromflow.io.write_image`, so Fiji, :func:`chromflow.read_image` and the chromflow
reader get the pixel size (nm) and origin back. File > Save Selected Layer(s)... > chromflow.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["write_rate_map", "WRITER_SUFFIXES"]

WRITER_SUFFIXES = (".tif", ".tiff")


def write_rate_map(path, data, attributes: dict) -> list:
    """npe2 single-layer writer: write one image layer as a calibrated TIFF, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Output file; ``.tif`` is appended when it has no TIFF suffix.
    data : array-like
        The layer data, ``(y, x)`` or ``(z, y, x)``. Floating-point maps are written as float32
        (the ImageJ flavour, NaN kept outside the nucleus); other dtypes as they are.
    attributes : dict
        napari's layer attributes: ``scale`` (nm per pixel, square in y and x), ``translate``
        (nm of the centre of pixel (0, 0)), ``name``, ``metadata``.

    Returns
    -------
    list of str
        The path written.

    Raises
    ------
    chromflow.InputError
        Non-square pixels, or data that TIFF cannot hold.

    Examples
    --------
    >>> write_rate_map("rate.tif", rate, {"scale": (50.0, 50.0), "translate": (0.0, 0.0)})  # doctest: +SKIP
    ['rate.tif']
    """
    from chromflow.errors import InputError
    from chromflow.image import Image
    from chromflow.io import write_image

    path = Path(os.fspath(path))
    if path.suffix.lower() not in WRITER_SUFFIXES:
        path = path.with_name(path.name + ".tif")
    array = np.asarray(data)
    scale = np.asarray(attributes.get("scale", (1.0,) * array.ndim), dtype=float)
    if not np.allclose(scale[-2:], scale[-1], rtol=1e-6):
        raise InputError(f"layer {attributes.get('name')!r} has non-square pixels (scale {tuple(scale)}); "
                         "TIFF holds one pixel size", path)
    if array.dtype.kind == "f":
        array = array.astype(np.float32)
    translate = tuple(float(t) for t in attributes.get("translate", (0.0,) * array.ndim))
    metadata = dict(attributes.get("metadata") or {})
    image = Image(array, pixel_size=float(scale[-1]), origin=translate,
                  name=str(attributes.get("name") or path.stem), source=metadata.get("source"))
    write_image(image, path)
    return [str(path)]
