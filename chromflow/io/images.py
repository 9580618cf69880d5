"""Read and write TIFF images with their physical pixel size (nm) and origin.

Files are written so that ImageJ/Fiji reads the right pixel size (ImageJ hyperstack, unit
``micron``, ``XResolution``/``YResolution`` = pixels per micron) and so that chromflow reads back
the exact pixel size and origin (kept as ``chromflow_pixel_size_nm`` / ``chromflow_origin_nm`` in
the image description: a 32-bit rational resolution tag cannot hold every float exactly).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ..errors import InputError
from .._validate import check_input_file, check_pixel_size
from ..image import Image
from ._atomic import atomic_path

__all__ = ["read_image", "write_image", "DEFAULT_PIXEL_SIZE_NM"]

#: Pixel size (nm) assumed for a TIFF that records none, with a warning. 20 nm is the usual pixel
#: of a rendered super-resolution image (a 100 nm camera pixel magnified 5x) and chromflow's
#: default render pixel size.
DEFAULT_PIXEL_SIZE_NM = 20.0

_KEY_PIXEL = "chromflow_pixel_size_nm"
_KEY_ORIGIN = "chromflow_origin_nm"
_KEY_DTYPE = "chromflow_dtype"

# Length units met in TIFF metadata (ImageJ 'unit', OME PhysicalSizeXUnit), as nm per unit.
_UNIT_NM = {
    "nm": 1.0, "nanometer": 1.0, "nanometers": 1.0, "nanometre": 1.0,
    "um": 1e3, "\u00b5m": 1e3, "\u03bcm": 1e3, "micron": 1e3, "microns": 1e3, "\\u00b5m": 1e3,
    "micrometer": 1e3, "micrometre": 1e3,
    "mm": 1e6, "millimeter": 1e6, "cm": 1e7, "centimeter": 1e7, "m": 1e9, "meter": 1e9,
    "inch": 2.54e7, "in": 2.54e7, "pm": 1e-3, "\u00e5": 0.1, "angstrom": 0.1,
}
# Baseline TIFF ResolutionUnit: 2 = inch, 3 = centimetre (1 = none: no physical size).
_RESOLUTION_UNIT_NM = {2: 2.54e7, 3: 1e7}

# dtypes ImageJ opens natively; others are written as plain (non-ImageJ) TIFF
_IMAGEJ_DTYPES = (np.uint8, np.uint16, np.float32)


@contextlib.contextmanager
def _quiet_logger(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _unit_nm(unit) -> float | None:
    if unit is None:
        return None
    u = str(unit).strip().lower()
    return _UNIT_NM.get(u)


def _rational(value) -> float | None:
    try:
        if isinstance(value, (tuple, list)) and len(value) == 2:
            num, den = value
            return float(num) / float(den) if den else None
        return float(value)
    except (TypeError, ValueError):
        return None


def _valid(ps) -> bool:
    return ps is not None and math.isfinite(ps) and ps > 0


def _pixel_size_from_resolution(page, unit_nm: float | None) -> float | None:
    """nm per pixel from XResolution (pixels per unit), with the given or the tag's unit."""
    tags = page.tags
    if "XResolution" not in tags:
        return None
    xres = _rational(tags["XResolution"].value)
    if unit_nm is None:
        ru = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else 2  # TIFF default: inch
        unit_nm = _RESOLUTION_UNIT_NM.get(int(ru))
    if unit_nm is None or not xres or xres <= 0:
        return None
    if "YResolution" in tags:
        yres = _rational(tags["YResolution"].value)
        if yres and not math.isclose(yres, xres, rel_tol=1e-6):
            warnings.warn(f"pixels are not square (x {unit_nm / xres:g} nm, y {unit_nm / yres:g} nm); "
                          "using the x size", UserWarning, stacklevel=4)
    ps = unit_nm / xres
    # ImageJ leaves resolution 1 pixel/unit with unit 'pixel' or nothing: not a calibration
    return ps if _valid(ps) else None


def _pixel_size_from_ome(xml_text: str) -> float | None:
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] == "Pixels" and "PhysicalSizeX" in el.attrib:
            unit_nm = _unit_nm(el.attrib.get("PhysicalSizeXUnit", "\u00b5m"))  # OME default: um
            try:
                value = float(el.attrib["PhysicalSizeX"])
            except ValueError:
                return None
            if unit_nm is None:
                return None
            ps = value * unit_nm
            return ps if _valid(ps) else None
    return None


def _parse_origin(value, ndim: int) -> tuple | None:
    if value is None:
        return None
    if isinstance(value, str):
        parts = [p for p in re.split(r"[,\s]+", value.strip()) if p]
    else:
        parts = list(np.ravel(value))
    try:
        origin = tuple(float(p) for p in parts)
    except ValueError:
        return None
    return origin if len(origin) == ndim else None


def read_image(path, pixel_size=None, ndim=None, allow_nan=False) -> Image:
    """Read a TIFF image and its pixel size in nm.

    Parameters
    ----------
    path : str or os.PathLike
        TIFF file (ImageJ, OME-TIFF or plain).
    pixel_size : float, optional
        Pixel size in nm; given, it overrides what the file says.
    ndim : {None, 2, 3}
        Expected number of dimensions after dropping length-1 axes: ``2`` rejects stacks,
        ``3`` rejects single planes, ``None`` accepts both.
    allow_nan : bool
        Accept float images with NaN pixels (by default they are an error).

    Returns
    -------
    chromflow.Image
        ``data`` with the file's dtype, ``(y, x)`` or ``(z, y, x)``; ``pixel_size`` in nm;
        ``origin`` as written by :func:`write_image` (else zeros); ``source`` the path.

    Notes
    -----
    The pixel size is looked up in this order: chromflow's exact value in the description,
    ImageJ ``unit`` with ``XResolution``, OME-XML ``PhysicalSizeX``/``PhysicalSizeXUnit``, the
    resolution tags with ``ResolutionUnit`` inch or cm. When none is found a ``UserWarning``
    names the file and :data:`DEFAULT_PIXEL_SIZE_NM` is used. z spacing is not read: an
    :class:`Image` has one pixel size.

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> from chromflow import Image
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "img.tif"
    >>> _ = write_image(Image(np.ones((4, 5), np.float32), pixel_size=16.5), out)
    >>> read_image(out).pixel_size
    16.5
    """
    import tifffile

    path = check_input_file(path, "a TIFF image")
    pixel_size = check_pixel_size(pixel_size, path)
    try:
        # a broken file is reported once, as the InputError below, not also through tifffile's logger
        with _quiet_logger("tifffile"), tifffile.TiffFile(path) as tif:
            data = tif.asarray()
            page = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
            ij = tif.imagej_metadata or {}
            shaped = (tif.shaped_metadata or ({},))[0] if tif.is_shaped else {}
            ome = tif.ome_metadata if tif.is_ome else None
            samples = int(getattr(page, "samplesperpixel", 1))
    except Exception as exc:  # tifffile raises several types for broken files
        raise InputError(f"cannot read as TIFF ({type(exc).__name__}: {exc})", path) from None

    if samples > 1:
        raise InputError(f"is an RGB/multi-sample image ({samples} samples per pixel); save one "
                         "grey-level channel", path)
    data = np.squeeze(data) if data.ndim > 2 else data
    if data.ndim not in (2, 3):
        raise InputError(f"has {data.ndim} dimensions {data.shape}; expected (y, x) or (z, y, x)", path)
    if data.size == 0:
        raise InputError("image has no pixels", path)
    if ndim == 2 and data.ndim == 3:
        raise InputError(f"is a stack of {data.shape[0]} planes {data.shape}; a single 2D image "
                         "is expected", path)
    if ndim == 3 and data.ndim == 2:
        raise InputError(f"is a single 2D plane {data.shape}; a (z, y, x) stack is expected", path)
    if ndim not in (None, 2, 3):
        raise InputError(f"ndim must be None, 2 or 3, got {ndim!r}", path)

    meta = {**shaped, **ij}
    if str(meta.get(_KEY_DTYPE, "")) == "bool":
        data = data != 0
    if np.issubdtype(data.dtype, np.floating) and not allow_nan:
        n_bad = int(np.count_nonzero(~np.isfinite(data)))
        if n_bad:
            raise InputError(f"image has {n_bad} NaN/inf pixel(s); pass allow_nan=True to accept "
                             "them", path)

    found = None
    if _KEY_PIXEL in meta:
        found = _rational(str(meta[_KEY_PIXEL]))
    if not _valid(found) and ij:
        unit_nm = _unit_nm(ij.get("unit"))
        if unit_nm is not None:
            found = _pixel_size_from_resolution(page, unit_nm)
    if not _valid(found) and ome:
        found = _pixel_size_from_ome(ome)
    if not _valid(found) and not ij.get("unit"):
        found = _pixel_size_from_resolution(page, None)
    if pixel_size is not None:
        ps = pixel_size
    elif _valid(found):
        ps = float(found)
    else:
        warnings.warn(f"{path}: no pixel size in the file; assuming {DEFAULT_PIXEL_SIZE_NM} nm "
                      "(pass pixel_size= to set it)", UserWarning, stacklevel=2)
        ps = DEFAULT_PIXEL_SIZE_NM
    origin = _parse_origin(meta.get(_KEY_ORIGIN), data.ndim) or (0.0,) * data.ndim
    return Image(data, pixel_size=ps, origin=origin, name=path.name.split(".")[0],
                 source=str(path), metadata={"file_metadata": {k: v for k, v in ij.items()
                                                               if isinstance(v, (str, int, float))}})


def write_image(image_or_array, path, pixel_size=None) -> Path:
    """Write a 2D or 3D image as TIFF with its pixel size, atomically.

    Parameters
    ----------
    image_or_array : chromflow.Image or ndarray
        ``(y, x)`` or ``(z, y, x)`` pixels. The dtype is kept.
    path : str or os.PathLike
        Output ``.tif`` path.
    pixel_size : float, optional
        Pixel size in nm; required for a bare array, overrides ``image.pixel_size`` when given.

    Returns
    -------
    pathlib.Path
        The path written.

    Notes
    -----
    uint8, uint16, float32 and bool images are written as ImageJ hyperstacks (unit ``micron``,
    resolution = pixels per micron; bool as 0/255 uint8 restored to bool by :func:`read_image`).
    Other dtypes (float64, int32, ...), which ImageJ cannot hold, are written as plain TIFF with
    resolution tags in pixels per centimetre (read correctly by Fiji's Bio-Formats importer).
    Both kinds carry the exact pixel size and origin in the description.

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "mask.tif"
    >>> _ = write_image(np.eye(3, dtype=bool), out, pixel_size=20.0)
    >>> read_image(out).data.dtype
    dtype('bool')
    """
    import tifffile

    path = Path(os.fspath(path))
    if isinstance(image_or_array, Image):
        data = np.asarray(image_or_array.data)
        ps = image_or_array.pixel_size if pixel_size is None else pixel_size
        origin = image_or_array.origin
    else:
        data = np.asarray(image_or_array)
        if pixel_size is None:
            raise InputError("pixel_size= (nm) is required to write a bare array", path)
        ps = pixel_size
        origin = (0.0,) * data.ndim
    if ps is None:
        raise InputError("pixel_size must be a number of nm, got None", path)
    ps = check_pixel_size(ps, path)
    if data.ndim not in (2, 3):
        raise InputError(f"can only write (y, x) or (z, y, x) images, got shape {data.shape}", path)
    if data.dtype.kind not in "biuf":
        raise InputError(f"cannot write dtype {data.dtype} to TIFF", path)
    if len(origin) != data.ndim:
        origin = (0.0,) * data.ndim
    origin_text = ",".join(repr(float(o)) for o in origin)
    axes = "YX" if data.ndim == 2 else "ZYX"
    ps_um = ps / 1000.0

    with atomic_path(path) as tmp:
        if data.dtype == bool or data.dtype in [np.dtype(t) for t in _IMAGEJ_DTYPES]:
            extra = {}
            if data.dtype == bool:
                data = data.astype(np.uint8) * np.uint8(255)
                extra[_KEY_DTYPE] = "bool"
            metadata = {"axes": axes, "unit": "micron", _KEY_PIXEL: repr(ps),
                        _KEY_ORIGIN: origin_text, **extra}
            if data.ndim == 3:
                metadata["spacing"] = ps_um  # isotropic: an Image has one pixel size
            tifffile.imwrite(tmp, data, imagej=True, resolution=(1.0 / ps_um, 1.0 / ps_um),
                             metadata=metadata)
        else:
            per_cm = 1.0e7 / ps
            tifffile.imwrite(tmp, data, photometric="minisblack", resolution=(per_cm, per_cm),
                             resolutionunit="CENTIMETER",
                             metadata={"axes": axes, _KEY_PIXEL: repr(ps), _KEY_ORIGIN: origin_text})
    return path
