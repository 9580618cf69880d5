"""Nucleus segmentation of a density image (rendered localizations or a super-resolution TIFF)."""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.morphology import disk

from .errors import InputError, SegmentationError
from .image import Image

__all__ = ["segment_nucleus", "DEFAULT_SMOOTHING_NM", "MIN_CONTRAST", "MIN_SIGNIFICANCE"]

#: Detection smoothing (Gaussian standard deviation, nm) for an :class:`Image`.
DEFAULT_SMOOTHING_NM = 250.0
#: Minimum nucleus area for an :class:`Image` (nm^2): 1 um^2.
DEFAULT_MIN_AREA_NM2 = 1.0e6
#: The nucleus must be at least this many times denser than the background (median vs median).
MIN_CONTRAST = 1.5
#: For count images (``metadata["units"] == "localizations per pixel"``, as :func:`chromflow.render`
#: makes): the nucleus must hold this many Poisson standard deviations more localizations than a
#: uniform scatter would.
MIN_SIGNIFICANCE = 10.0
#: Reject a mask that covers more than this fraction of the image ...
MAX_COVERAGE = 0.9
#: ... or more than this fraction of the image border (a nucleus lies inside the field of view).
MAX_BORDER_FRACTION = 0.5


def _largest_component(binary: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(binary)
    if n == 0:
        return binary
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def _log_otsu(values: np.ndarray) -> float:
    # SMLM densities span orders of magnitude (empty background, dense heterochromatin): Otsu on
    # the logarithm separates "nucleus" from "background" instead of dense from sparse chromatin
    floor = 1e-3 * float(values.mean())
    return float(math.exp(threshold_otsu(np.log(values + floor))) - floor)


def _closing(binary: np.ndarray, radius: int) -> np.ndarray:
    if radius < 1:
        return binary
    # pad so that the erosion half of the closing does not eat a nucleus touching the border
    padded = np.pad(binary, radius)
    closed = ndimage.binary_closing(padded, structure=disk(radius))
    return closed[radius:-radius, radius:-radius]


def segment_nucleus(image, threshold: float | None = None, smoothing: float | None = None,
                    min_area: float | None = None, fill_holes: bool = True) -> np.ndarray:
    """Segment the nucleus in a 2D density image.

    Parameters
    ----------
    image : Image or ndarray
        2D density ``(y, x)``, e.g. from :func:`chromflow.render` (localizations per pixel).
    threshold : float, optional
        Manual threshold on the lightly smoothed density (same units as ``image``; see Notes).
        Overrides the automatic one.
    smoothing : float, optional
        Gaussian standard deviation of the detection smoothing: nm for an :class:`Image`
        (default :data:`DEFAULT_SMOOTHING_NM` = 250 nm), pixels for an ndarray (default 1 % of
        the larger image side, at least 2 pixels).
    min_area : float, optional
        Smallest accepted nucleus: nm^2 for an :class:`Image` (default 1 um^2), pixels for an
        ndarray (default 0.5 % of the image).
    fill_holes : bool
        Fill holes (dark nucleoli) in the mask.

    Returns
    -------
    ndarray of bool
        Same shape as ``image``; True inside the nucleus (one connected component).

    Raises
    ------
    SegmentationError
        The image is empty or constant, the detected region is not denser (mean of the
        detection image) than the background by :data:`MIN_CONTRAST`, no component reaches ``min_area``, or the mask covers more than
        90 % of the image or more than half of its border (not a nucleus inside the field); for
        count images from :func:`chromflow.render`, the nucleus holds fewer localizations than
        :data:`MIN_SIGNIFICANCE` Poisson standard deviations above a uniform scatter.
    InputError
        Not a 2D image, or NaN / infinite values.

    Notes
    -----
    Two stages, so that the heavy smoothing needed to turn sparse localizations into a
    connected region does not also move the boundary outward:

    1. *Detection*: Gaussian smoothing with ``smoothing``; threshold by Otsu's method on the
       logarithm of the smoothed density; fill holes; keep the largest component (``M0``).
    2. *Boundary*: smoothing with ``smoothing / 4`` (at least 1 pixel); threshold at half-way
       between the background (median outside ``M0`` dilated by 2 ``smoothing``) and the
       nuclear density (median inside ``M0`` eroded by 2 ``smoothing``), i.e. the half-maximum
       of the edge; restricted to the dilated ``M0``; morphological closing with a disk of
       radius ``smoothing``; hole filling; largest component.

    A manual ``threshold`` replaces the half-way value of stage 2 (and the detection, which
    then uses the same threshold on the heavily smoothed image).

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.indices((120, 120))
    >>> density = 5.0 * ((yy - 60) ** 2 / 40 ** 2 + (xx - 55) ** 2 / 30 ** 2 < 1) + 0.2
    >>> mask = segment_nucleus(density)
    >>> mask.shape, mask.dtype, bool(mask[60, 55]), bool(mask[5, 5])
    ((120, 120), dtype('bool'), True, False)
    """
    source = getattr(image, "source", None)
    if isinstance(image, Image):
        data = np.asarray(image.data, dtype=np.float64)
        ps = image.pixel_size
        sigma = (DEFAULT_SMOOTHING_NM if smoothing is None else float(smoothing)) / ps
        area_min = (DEFAULT_MIN_AREA_NM2 if min_area is None else float(min_area)) / ps ** 2
    else:
        data = np.asarray(image, dtype=np.float64)
        sigma = max(2.0, 0.01 * max(data.shape)) if smoothing is None else float(smoothing)
        area_min = 0.005 * data.size if min_area is None else float(min_area)
    if data.ndim != 2:
        raise InputError(f"segment_nucleus needs a 2D (y, x) image, got shape {data.shape}", source)
    if not np.isfinite(data).all():
        raise InputError("image has NaN or infinite values", source)
    if sigma < 0:
        raise InputError(f"smoothing must be >= 0, got {smoothing}", source)
    if data.size == 0 or not data.any():
        raise SegmentationError("image is empty (all zero): no nucleus", source)
    if data.max() == data.min():
        raise SegmentationError("image is constant (no contrast): no nucleus", source)

    detect = ndimage.gaussian_filter(data, sigma) if sigma > 0 else data
    t_detect = _log_otsu(detect) if threshold is None else float(threshold)
    m0 = detect > t_detect
    m0 = _largest_component(ndimage.binary_fill_holes(m0))
    if not m0.any():
        raise SegmentationError(f"nothing above the threshold {t_detect:.4g}: no nucleus", source)

    fine = ndimage.gaussian_filter(data, max(1.0, sigma / 4))
    reach = max(1, int(round(2 * sigma)))
    region = ndimage.binary_dilation(m0, iterations=reach)
    inner = ndimage.binary_erosion(m0, iterations=reach)
    if threshold is None:
        outside = ~region
        if outside.mean() < 1.0 - MAX_COVERAGE:
            raise SegmentationError(f"the dense region covers {100 * region.mean():.0f}% of the image: "
                                    "no separate nucleus found", source)
        # contrast on the detection image (robust for sparse renders): mean inside vs outside
        ratio = float(detect[m0].mean()) / max(float(detect[outside].mean()), 1e-300)
        if ratio < MIN_CONTRAST:
            raise SegmentationError(f"no nucleus: the densest region is only {ratio:.2f} times denser "
                                    f"than the background (need {MIN_CONTRAST})", source)
        background = float(np.median(fine[outside]))
        nuclear = float(np.median(fine[inner])) if inner.any() else float(np.median(fine[m0]))
        t_edge = background + 0.5 * (nuclear - background)
    else:
        t_edge = float(threshold)

    mask = (fine > t_edge) & region
    mask = _closing(mask, int(round(sigma)))
    if fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    mask = _largest_component(mask)

    area = int(mask.sum())
    if area == 0 or area < area_min:
        raise SegmentationError(f"no nucleus: largest component has {area} pixels, less than "
                                f"min_area ({area_min:.0f} pixels)", source)
    if area > MAX_COVERAGE * mask.size:
        raise SegmentationError(f"mask covers {100 * area / mask.size:.0f}% of the image: "
                                "no separate nucleus found", source)
    if threshold is None and isinstance(image, Image) and image.metadata.get("units") == "localizations per pixel":
        # counts: the nucleus must hold significantly more localizations than a uniform scatter
        # would put there (guards against a clump of a few stray localizations)
        total = float(data.sum())
        expected = total * area / mask.size
        z = (float(data[mask].sum()) - expected) / math.sqrt(max(expected, 1.0))
        if z < MIN_SIGNIFICANCE:
            raise SegmentationError(f"no nucleus: the densest region holds only {z:.1f} standard deviations "
                                    f"more localizations than a uniform scatter (need {MIN_SIGNIFICANCE})", source)
    border = np.concatenate([mask[0], mask[-1], mask[1:-1, 0], mask[1:-1, -1]])
    if border.mean() > MAX_BORDER_FRACTION:
        raise SegmentationError(f"mask touches {100 * border.mean():.0f}% of the image border: "
                                "probably not a nucleus", source)
    return mask
