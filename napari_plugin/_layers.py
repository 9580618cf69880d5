"""Small helpers shared by the reader and the widgets: layers <-> chromflow objects.

Nothing scientific lives here; these functions only move arrays, pixel sizes and origins
between napari layers and :class:`chromflow.Image`, and report errors to the user.
"""
from __future__ import annotations

import logging
import os
import weakref

import numpy as np

from chromflow.errors import ChromflowError
from chromflow.image import Image

__all__ = ["image_from_layer", "image_layer_kwargs", "robust_contrast_limits", "report_error",
           "SYNC_ENV", "NM_UNITS", "RATE_LEGEND", "layer_type", "plugin_settings", "nucleus_contours",
           "show_scale_bar", "show_legend"]

logger = logging.getLogger("chromflow.napari")

#: Set this environment variable to ``1`` to run long work synchronously (tests, scripts).
SYNC_ENV = "CHROMFLOW_NAPARI_SYNC"


def run_synchronously() -> bool:
    """True when :data:`SYNC_ENV` asks for synchronous (non-threaded) work."""
    return os.environ.get(SYNC_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


#: napari ``units`` of every chromflow layer: world coordinates are nanometres, so the scale
#: bar reads nm / um instead of "pixel"
NM_UNITS = ("nm", "nm")

#: what the colour of a rate map means (shown in the canvas next to the colorbar)
RATE_LEGEND = "rate  lambda = Gamma_me / Gamma_ac"

_PLUGIN_SETTINGS = weakref.WeakKeyDictionary()


def plugin_settings(viewer):
    """The one :class:`chromflow.pipeline.PipelineSettings` that the widgets of ``viewer`` share.

    The render, segment and inference widgets each write their controls into their own section
    of this object and call the :mod:`chromflow.pipeline` stage functions with it, so the plugin
    runs exactly what ``chromflow run --config`` runs with the same settings (the inference
    widget saves and loads it as the CLI's JSON config).

    Examples
    --------
    >>> plugin_settings(viewer).fields.grid            # doctest: +SKIP
    128
    """
    from chromflow.pipeline import PipelineSettings

    settings = _PLUGIN_SETTINGS.get(viewer)
    if settings is None:
        settings = _PLUGIN_SETTINGS[viewer] = PipelineSettings()
    return settings


def layer_type(layer) -> str:
    """``"image"``, ``"labels"``, ``"shapes"``, ``"points"``, ... from napari's public classes.

    (napari's private ``layer._type_string`` goes away in napari 0.10.)
    """
    import napari.layers

    for name in ("Labels", "Image", "Shapes", "Points", "Surface", "Vectors", "Tracks"):
        klass = getattr(napari.layers, name, None)
        if klass is not None and isinstance(layer, klass):
            return name.lower()
    return type(layer).__name__.lower()


def image_layer_kwargs(image: Image, **extra) -> dict:
    """napari ``add_image`` keyword arguments that place ``image`` in nm world coordinates.

    ``scale`` is the pixel size (nm), ``translate`` the nm position of the centre of pixel
    ``(0, 0)`` (exactly napari's convention for ``translate``) and ``units`` nanometres, so
    that napari's scale bar and status bar speak nm / um.
    """
    metadata = dict(image.metadata)
    metadata.setdefault("source", image.source)
    metadata.setdefault("pixel_size", image.pixel_size)
    kwargs = {"name": image.name or "image", "scale": image.scale, "translate": image.translate,
              "units": ("nm",) * image.data.ndim,
              "metadata": metadata}
    kwargs.update(extra)
    return kwargs


def nucleus_contours(mask, spacing: float, origin=(0.0, 0.0)) -> list:
    """Outlines of a nucleus mask as closed polygons in nm (for a napari Shapes layer).

    Each outline is the iso-line at 0.5 of the mask (:func:`skimage.measure.find_contours`),
    which runs through the middle of the edges between inside and outside cells: a smooth line
    rather than the one-cell-wide staircase of a Labels contour. The mask is padded by one cell
    first, so that a nucleus touching the border still gets a closed outline.

    Parameters
    ----------
    mask : ndarray of bool, (ny, nx)
    spacing : float
        Cell size in nm.
    origin : tuple of float
        nm position of the centre of cell ``(0, 0)``.

    Returns
    -------
    list of ndarray
        One ``(n, 2)`` array of ``(y, x)`` vertices in nm per outline (holes included), largest
        first; the last vertex repeats the first.

    Examples
    --------
    >>> m = np.zeros((6, 6), bool); m[1:5, 1:5] = True
    >>> [c] = nucleus_contours(m, spacing=10.0)
    >>> float(c[:, 0].min()), float(c[:, 0].max())     # half a cell outside the inner centres
    (5.0, 45.0)
    """
    from skimage.measure import find_contours

    padded = np.pad(np.asarray(mask, dtype=float), 1)
    contours = [(c - 1.0) * float(spacing) + np.asarray(origin, dtype=float)[-2:]
                for c in find_contours(padded, 0.5) if len(c) >= 3]
    return sorted(contours, key=lambda c: -_polygon_area(c))


def _polygon_area(vertices) -> float:
    y, x = np.asarray(vertices, dtype=float).T
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2)


def _canvas_overlays(viewer):
    # napari >= 0.9 keeps canvas overlays under viewer.canvas.overlays (viewer.scale_bar and
    # viewer.text_overlay are deprecated there); older versions only have the latter
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    if overlays is not None:
        return overlays.scale_bar, overlays.text
    return viewer.scale_bar, viewer.text_overlay


def show_scale_bar(viewer) -> None:
    """Turn napari's scale bar on; with layers in nm units it reads nm / um."""
    scale_bar, _ = _canvas_overlays(viewer)
    scale_bar.visible = True
    scale_bar.ticks = True
    scale_bar.font_size = 12


def show_legend(viewer, text: str = RATE_LEGEND) -> None:
    """Write ``text`` in the bottom-left corner of the canvas (what the colours of a map mean).

    The top corners are the colorbars' (rate: right, uncertainty: left), the bottom right the
    scale bar's.
    """
    _, overlay = _canvas_overlays(viewer)
    overlay.text = text
    overlay.position = "bottom_left"
    overlay.font_size = 12
    overlay.visible = True


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
