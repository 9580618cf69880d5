"""Small helpers shared by the reader and the widgets: layers <-> chromflow objects.

Nothing scientific lives here; these functions only move arrays, pixel sizes and origins
between napari layers and :class:`chromflow.Image`, and report errors to the user.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from chromflow.errors import ChromflowError
from chromflow.image import Image

__all__ = ["image_from_layer", "image_layer_kwargs", "robust_contrast_limits", "report_error",
           "SYNC_ENV"]

logger = logging.getLogger("chromflow.napari")

#: Set this environment variable to ``1`` to run long work synchronously (tests, scripts).
SYNC_ENV = "CHROMFLOW_NAPARI_SYNC"


def run_synchronously() -> bool:
    """True when :data:`SYNC_ENV` asks for synchronous (non-threaded) work."""
    return os.environ.get(SYNC_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def image_layer_kwargs(image: Image, **extra) -> dict:
    """napari ``add_image`` keyword arguments that place ``image`` in nm world coordinates.

    ``scale`` is the pixel size (nm) and ``translate`` the nm position of the centre of pixel
    ``(0, 0)``, which is exactly napari's convention for ``translate``.
    """
    metadata = dict(image.metadata)
    metadata.setdefault("source", image.source)
    metadata.setdefault("pixel_size", image.pixel_size)
    kwargs = {"name": image.name or "image", "scale": image.scale, "translate": image.translate,
              "metadata": metadata}
    kwargs.update(extra)
    return kwargs


def image_from_layer(layer) -> Image:
    """A :class:`chromflow.Image` with the data, pixel size and origin of a napari layer.

    Raises
    ------
    chromflow.InputError
        When the layer has different pixel sizes along y and x (chromflow images are square-pixel).
    """
    from chromflow.errors import InputError

    scale = np.asarray(layer.scale, dtype=float)
    if not np.allclose(scale[-2:], scale[-1], rtol=1e-6):
        raise InputError(f"layer {layer.name!r} has non-square pixels (scale {tuple(scale)}); "
                         "chromflow needs the same pixel size along y and x")
    metadata = dict(layer.metadata)
    return Image(np.asarray(layer.data), pixel_size=float(scale[-1]),
                 origin=tuple(float(t) for t in layer.translate), name=layer.name,
                 source=metadata.get("source"), metadata=metadata)


def robust_contrast_limits(data, mask=None, low: float = 1.0, high: float = 99.0) -> tuple:
    """Contrast limits from the ``low``/``high`` percentiles of the finite values (in ``mask``).

    A few extreme pixels (the rim of the nucleus, where derivatives are least reliable) would
    otherwise squeeze the colour scale of a rate map. Falls back to ``(0, 1)`` without data and
    widens a constant image by one unit so napari gets ``min < max``.

    Examples
    --------
    >>> robust_contrast_limits(np.arange(101.0))
    (1.0, 99.0)
    """
    values = np.asarray(data, dtype=float)
    if mask is not None:
        values = values[np.asarray(mask, dtype=bool)]
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (0.0, 1.0)
    lo, hi = (float(v) for v in np.percentile(values, [low, high]))
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    return (lo, hi)


def report_error(error: BaseException, what: str = "chromflow") -> None:
    """Show an error to the user as a napari notification instead of a traceback.

    :class:`~chromflow.ChromflowError` messages are written for users and shown as they are;
    anything else is a bug, so it is also logged with its traceback.
    """
    from napari.utils.notifications import show_error

    if isinstance(error, ChromflowError):
        show_error(f"{what}: {error}")
    else:
        logger.error("%s failed", what, exc_info=(type(error), error, error.__traceback__))
        show_error(f"{what} failed: {type(error).__name__}: {error}")
