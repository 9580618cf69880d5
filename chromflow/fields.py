"""Density image + nucleus mask -> chromatin volume fractions (phi_h, phi_e) on a square grid.

The rule is documented in :func:`chromatin_fields` and in ``docs/pipeline.md``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ._json import jsonable
from .errors import GridError, InputError, SegmentationError
from .image import Image
from .io._atomic import atomic_path

__all__ = ["ChromatinFields", "chromatin_fields", "check_channels", "partial_volume_width", "estimate_background",
           "MAX_TOTAL",
           "MIN_GRID", "MAX_GRID", "MIN_NUCLEUS_PIXELS", "MIN_CHANNEL_SHARE", "MIN_EDGE_BAND_NM"]

#: Total chromatin is clipped to this volume fraction (some nucleoplasm always remains).
MAX_TOTAL = 0.95
#: Smallest grid accepted.
MIN_GRID = 16
#: Largest grid accepted: beyond it the resampling matrices alone take gigabytes and a fit
#: takes hours; a grid finer than the image's pixels adds nothing anyway.
MAX_GRID = 2048
#: The edge band is at least this wide (nm): within ~100 nm of the nuclear envelope the bulk
#: model does not hold (the envelope's boundary layer: its no-flux condition, lamina attachment,
#: the outermost cells' partial volume). Chosen on tuning seed 100 of the independent simulator
#: (benchmarks/_heldout.py), domain-scale rate, 50 nm cells: PINN correlation 0.49 / 0.86 /
#: 0.90 / 0.87 / 0.85 / 0.80 for bands of 0 / 50 / 100 / 150 / 200 / 300 nm.
MIN_EDGE_BAND_NM = 100.0
#: The background is measured on pixels at least this far (nm) outside the nucleus, past the
#: render blur and the nucleus' own partial-volume edge.
BACKGROUND_DISTANCE_NM = 500.0
#: ... after a Gaussian smoothing of this sd (nm), so that sparse counts give a usable median.
BACKGROUND_SMOOTHING_NM = 100.0
#: ... and only when at least this many such pixels exist (else no background is subtracted).
MIN_BACKGROUND_PIXELS = 400
#: A nucleus with fewer image pixels than this cannot be resampled meaningfully.
MIN_NUCLEUS_PIXELS = 25
#: In two-channel mode each channel must hold at least this share of the density inside the
#: nucleus (see :func:`check_channels`).
MIN_CHANNEL_SHARE = 0.02


@dataclass
class ChromatinFields:
    """Chromatin volume fractions on a square grid over one nucleus.

    Parameters
    ----------
    phi_h, phi_e : ndarray
        Heterochromatin and euchromatin volume fractions, float64 ``(grid, grid)``; 0 outside
        the nucleus.
    mask : ndarray of bool
        Nucleus on the grid.
    spacing : float
        Grid cell size in nm.
    origin : tuple of float
        ``(y, x)`` position in nm of the centre of grid cell ``(0, 0)``, in the coordinate frame
        of the density image (napari: ``scale=(spacing, spacing)``, ``translate=origin``).
    source : str, optional
        File the density image came from.
    settings : dict
        The parameters used (JSON-serialisable).
    edge : ndarray of bool, optional
        Cells of the partial-volume band at the nucleus edge (a subset of ``mask``), where the
        density is diluted by the outside; :func:`chromflow.infer_rates` gives them no weight in
        the data term. None: no band (e.g. simulated fields on an exact mask).

    Examples
    --------
    >>> import numpy as np
    >>> f = ChromatinFields(np.full((16, 16), 0.25), np.full((16, 16), 0.25), np.ones((16, 16), bool),
    ...                     spacing=50.0, origin=(25.0, 25.0))
    >>> float(f.phi_w[0, 0]), f.spacing_um, f.shape
    (0.5, 0.05, (16, 16))
    """

    phi_h: np.ndarray
    phi_e: np.ndarray
    mask: np.ndarray
    spacing: float
    origin: tuple = (0.0, 0.0)
    source: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    edge: np.ndarray | None = None
    #: ``(phi_h, phi_e)`` of one half of the localizations on the same grid (made by
    #: :func:`chromflow.pipeline.compute_fields`; not saved): the split-half refit of
    #: :func:`chromflow.infer_rates` fits it instead of a white-noise data-fission draw
    half: tuple | None = field(default=None, repr=False)

    def __post_init__(self):
        self.phi_h = np.asarray(self.phi_h, dtype=np.float64)
        self.phi_e = np.asarray(self.phi_e, dtype=np.float64)
        self.mask = np.asarray(self.mask, dtype=bool)
        if self.edge is not None:
            self.edge = np.asarray(self.edge, dtype=bool) & self.mask
        self.spacing = float(self.spacing)
        self.origin = tuple(float(o) for o in self.origin)

    @property
    def phi_w(self) -> np.ndarray:
        """Nucleoplasm volume fraction ``1 - phi_h - phi_e``."""
        return 1.0 - self.phi_h - self.phi_e

    @property
    def phi_t(self) -> np.ndarray:
        """Total chromatin ``phi_h + phi_e``."""
        return self.phi_h + self.phi_e

    @property
    def phi_d(self) -> np.ndarray:
        """Order parameter ``phi_h - phi_e``."""
        return self.phi_h - self.phi_e

    @property
    def shape(self) -> tuple:
        return self.phi_h.shape

    @property
    def spacing_um(self) -> float:
        """Grid cell size in micrometres (the model's length unit)."""
        return self.spacing / 1000.0

    def to_image(self, name: str = "phi_h") -> Image:
        """One field (``phi_h``, ``phi_e``, ``phi_w``, ``phi_t``, ``phi_d``, ``mask`` or ``edge``) as an Image."""
        if name not in ("phi_h", "phi_e", "phi_w", "phi_t", "phi_d", "mask", "edge"):
            raise InputError(f"unknown field {name!r}; use phi_h, phi_e, phi_w, phi_t, phi_d, mask or edge",
                             self.source)
        if name == "edge" and self.edge is None:
            return Image(np.zeros(self.shape), pixel_size=self.spacing, origin=self.origin, name=name,
                         source=self.source, metadata={"units": "edge band"})
        return Image(np.asarray(getattr(self, name), dtype=np.float64), pixel_size=self.spacing,
                     origin=self.origin, name=name, source=self.source,
                     metadata={"units": {"mask": "nucleus mask", "edge": "edge band"}.get(name, "volume fraction")})

    def save(self, path: str | os.PathLike) -> None:
        """Write to ``path`` (``.npz``), atomically."""
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            extra = {} if self.edge is None else {"edge": self.edge}
            np.savez(fh, phi_h=self.phi_h, phi_e=self.phi_e, mask=self.mask, spacing=self.spacing, **extra,
                     origin=np.asarray(self.origin), source="" if self.source is None else self.source,
                     settings=json.dumps(jsonable(self.settings)))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ChromatinFields":
        """Read fields written by :meth:`save`."""
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["phi_h"], z["phi_e"], z["mask"], float(z["spacing"]), tuple(z["origin"]),
                           source=str(z["source"]) or None, settings=json.loads(str(z["settings"])),
                           edge=z["edge"] if "edge" in z.files else None)
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(f"not a chromflow fields file ({exc})", path) from None


def _overlap_matrix(start: float, cell: float, n_cells: int, n_pixels: int) -> np.ndarray:
    """R[a, i] = length of grid cell ``a`` overlapping pixel ``i``, divided by ``cell``.

    Coordinates in pixel-edge units: pixel ``i`` spans ``[i, i + 1)``, grid cell ``a`` spans
    ``[start + a*cell, start + (a+1)*cell)``. ``R @ v`` is the area average; cells reaching
    beyond the image average in zeros.
    """
    lo = start + cell * np.arange(n_cells)[:, None]
    hi = lo + cell
    i = np.arange(n_pixels)[None, :]
    return np.clip(np.minimum(hi, i + 1) - np.maximum(lo, i), 0.0, None) / cell


def _as_array(img, what, source):
    data = img.data if isinstance(img, Image) else img
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 2:
        raise InputError(f"{what} must be a 2D (y, x) image, got shape {data.shape}", source)
    if not np.isfinite(data).all():
        raise InputError(f"{what} has NaN or infinite values", source)
    return data


def distance_to_outline(mask) -> np.ndarray:
    """Distance (pixels) from each pixel centre of ``mask`` to the mask's outline (0 outside).

    The distance to the nearest outside pixel centre, minus half a pixel; pixels beyond the
    image border count as outside.

    Examples
    --------
    >>> m = np.zeros((5, 5), bool); m[1:4, 1:4] = True
    >>> distance_to_outline(m)[2].tolist()
    [0.0, 0.5, 1.5, 0.5, 0.0]
    """
    mask = np.asarray(mask, bool)
    return np.where(mask, ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1] - 0.5, 0.0)


def estimate_background(image, mask, pixel_size: float | None = None,
                        distance: float = BACKGROUND_DISTANCE_NM) -> float:
    """Density of the background: localizations (or intensity) per pixel far outside the nucleus.

    Non-specific localizations (false detections, unbound dye) are spread over the whole field of
    view, inside the nucleus too, where they add a constant to both marks and flatten the ratio
    the rates come from. Their level is the median of the density, smoothed by a Gaussian of
    :data:`BACKGROUND_SMOOTHING_NM`, over pixels at least ``distance`` nm from the nucleus: the
    median ignores a neighbouring cell that takes up less than half of that region.

    Parameters
    ----------
    image : Image or ndarray
        Density (per pixel). An ndarray needs ``pixel_size``.
    mask : ndarray of bool
        Nucleus.
    pixel_size : float, optional
        nm per pixel (default: the Image's).
    distance : float
        Smallest distance (nm) from the nucleus of the pixels used.

    Returns
    -------
    float
        Background per pixel (>= 0); 0 when fewer than :data:`MIN_BACKGROUND_PIXELS` pixels are
        that far from the nucleus (a field of view cropped to the nucleus).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> yy, xx = np.indices((200, 200))
    >>> mask = (yy - 100) ** 2 + (xx - 100) ** 2 < 50 ** 2
    >>> counts = rng.poisson(np.where(mask, 5.0, 0.3))
    >>> round(estimate_background(counts, mask, pixel_size=20.0), 1)
    0.3
    """
    ps = float(image.pixel_size if pixel_size is None and isinstance(image, Image) else (pixel_size or 1.0))
    return _background_level(getattr(image, "data", image), _far_from(mask, ps, distance), ps)


def _far_from(mask, pixel_size: float, distance: float) -> np.ndarray | None:
    """Pixels at least ``distance`` nm from ``mask``; None when fewer than
    :data:`MIN_BACKGROUND_PIXELS` are (no background can be measured)."""
    far = ndimage.distance_transform_edt(~np.asarray(mask, bool)) * pixel_size >= distance
    return far if far.sum() >= MIN_BACKGROUND_PIXELS else None


def _background_level(data, far, pixel_size: float) -> float:
    """The median of ``data``, smoothed by :data:`BACKGROUND_SMOOTHING_NM`, over ``far`` (0 if None)."""
    if far is None:
        return 0.0
    data = np.asarray(data, dtype=np.float64)
    smooth = ndimage.gaussian_filter(data, BACKGROUND_SMOOTHING_NM / pixel_size, mode="nearest")
    return max(float(np.median(smooth[far])), 0.0)


def _masked_smooth(values, mask, sigma):
    # normalised convolution: the outside (zeros) does not dilute the density near the edge
    if sigma <= 0:
        return values
    m = mask.astype(np.float64)
    num = ndimage.gaussian_filter(values * m, sigma, mode="constant")
    den = ndimage.gaussian_filter(m, sigma, mode="constant")
    return np.where(mask, num / np.where(den > 1e-12, den, 1.0), 0.0)


def _scale_to_mean(total, mask, target):
    """Scale ``a`` with mean(clip(a * total, 0, MAX_TOTAL)) over the mask == target (bisection)."""
    values = total[mask]
    mean = values.mean()
    a = target / mean
    if np.clip(a * values, 0, MAX_TOTAL).mean() >= target * (1 - 1e-12):
        return a
    # clipping is active: the clipped mean is continuous and non-decreasing in a
    if MAX_TOTAL * (values > 0).mean() <= target:
        raise InputError(f"cannot reach total_mean={target}: too few nuclear cells have chromatin", None)
    lo, hi = a, a
    while np.clip(hi * values, 0, MAX_TOTAL).mean() < target:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if np.clip(mid * values, 0, MAX_TOTAL).mean() < target:
            lo = mid
        else:
            hi = mid
    return hi


def chromatin_fields(image, mask, grid: int = 128, euchromatin=None, total_mean: float = 0.5,
                     split: str = "density", split_range=(0.2, 0.8), split_percentiles=(5.0, 95.0),
                     margin: float = 0.1, smoothing: float | None = None,
                     euchromatin_gain: float = 1.0, edge_band="auto", background="auto") -> ChromatinFields:
    """Chromatin volume fractions ``phi_h``, ``phi_e`` on a ``grid x grid`` square over the nucleus.

    Parameters
    ----------
    image : Image or ndarray
        2D density (localizations per pixel). With ``euchromatin`` given, the heterochromatin
        channel. An ndarray is taken to have 1 nm pixels and origin 0.
    mask : ndarray of bool
        Nucleus, same shape as ``image`` (see :func:`chromflow.segment_nucleus`).
    grid : int
        Cells per side of the output grid (>= 16).
    euchromatin : Image or ndarray, optional
        Second channel (euchromatin mark), same shape and pixels as ``image``.
    total_mean : float
        Mean of ``phi_h + phi_e`` over the nucleus, in (0, 0.95).
    split : {"density", "uniform"}
        Single-channel rule for the heterochromatin share (see Notes).
    split_range : (float, float)
        ``(s_min, s_max)``, heterochromatin share at low / high density, 0 <= s_min <= s_max <= 1.
    split_percentiles : (float, float)
        Percentiles of the nuclear density mapped to ``s_min`` / ``s_max``.
    margin : float
        Padding of the nucleus bounding box on each side, as a fraction of its longer side.
    smoothing : float, optional
        Gaussian standard deviation in nm applied to the resampled density inside the nucleus
        (normalised convolution: the outside does not dilute the edge). None: no smoothing.
    euchromatin_gain : float
        Relative labelling efficiency: the euchromatin density is multiplied by this.
    edge_band : "auto", float or None
        Width in nm of the band at the nucleus edge (``fields.edge``) that the fit gives no
        weight: ``"auto"`` measures the partial-volume width from the density's edge profile
        (:func:`partial_volume_width`) and takes at least :data:`MIN_EDGE_BAND_NM`; a number
        sets it; None or 0 gives no band beyond the cells the mask only partly covers.
    background : "auto", float, (float, float) or None
        Background per pixel subtracted from the density (each channel) before the fields are
        made: ``"auto"`` measures it far outside the nucleus (:func:`estimate_background`; 0
        when the image is cropped to the nucleus); a number, or one per channel
        (heterochromatin, euchromatin), sets it; None or 0 subtracts nothing. Recorded in
        ``settings["background"]``.

    Returns
    -------
    ChromatinFields

    Raises
    ------
    SegmentationError
        ``mask`` has no nucleus.
    InputError
        Shape mismatch, NaN, bad parameters, or (single channel) a density without contrast
        inside the nucleus.
    GridError
        ``grid < 16`` or a nucleus of fewer than 25 pixels.

    Notes
    -----
    1. *Resampling.* The mask's bounding box (pixel edges) is padded by ``margin`` times its
       longer side on each side and made square about its centre; side ``L`` pixels. Image and
       mask are area-averaged onto ``grid x grid`` cells of ``L / grid`` pixels (exact overlap
       weights; parts beyond the image count as zero). A cell is in the nucleus when more than
       half of its area is. ``spacing = L * pixel_size / grid`` nm;
       ``origin = image.origin + (box_start + spacing_px / 2 - 1/2) * pixel_size``.
    2. *Background.* ``rho`` is the area average minus ``background`` (per channel), clipped at
       0: localizations spread over the whole field of view (false detections, unbound dye)
       are no chromatin.
       *Total chromatin* ``phi_t = min(a * rho, 0.95)`` inside the nucleus (0 outside), with
       ``a`` chosen so that the mean of ``phi_t`` over the nucleus is ``total_mean`` (when no
       cell reaches 0.95 this is ``a = total_mean / mean(rho)``).
    3. *Split.* Two channels: ``phi_h = a * rho_h``, ``phi_e = a * g * rho_e`` with one common
       ``a`` (``g = euchromatin_gain``) on ``rho = rho_h + g * rho_e`` as in step 2 (both scaled
       down together where the total is clipped). One channel, ``split="density"``:
       ``s = s_min + (s_max - s_min) * clip((rho - q_lo) / (q_hi - q_lo), 0, 1)`` with ``q_lo``,
       ``q_hi`` the ``split_percentiles`` of ``rho`` inside the nucleus;
       ``phi_h = s * phi_t``, ``phi_e = (1 - s) * phi_t`` (denser chromatin is more
       heterochromatic; with ``s_max < 1`` euchromatin never vanishes inside the nucleus).
       ``split="uniform"``: ``s = (s_min + s_max) / 2`` everywhere.
    4. *Edge band.* A segmented nucleus ends in a band where the density is diluted by the
       outside (render blur, localization precision, and a mask drawn a little wide). Its cells
       are ``fields.edge``: cells the mask covers only partly, and cells whose centre is within
       the band width of the mask's outline. ``edge_band="auto"`` takes the width from the data:
       the depth at which the median density, as a function of the distance from the outline,
       first reaches 80 % of its interior level, and at least ``MIN_EDGE_BAND_NM`` = 100 nm, where
       the bulk model does not hold (``settings["edge_band_nm"]``).

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.indices((100, 100))
    >>> mask = (yy - 50) ** 2 + (xx - 50) ** 2 < 40 ** 2
    >>> density = np.where(mask, 1.0 + 0.5 * np.sin(xx / 5.0), 0.0)
    >>> f = chromatin_fields(Image(density, pixel_size=20.0), mask, grid=32)
    >>> f.shape, round(float(f.phi_t[f.mask].mean()), 6), f.spacing
    ((32, 32), 0.5, 59.25)
    """
    source = getattr(image, "source", None)
    rho_img = _as_array(image, "density image", source)
    ps = image.pixel_size if isinstance(image, Image) else 1.0
    origin0 = tuple(image.origin) if isinstance(image, Image) else (0.0, 0.0)
    mask = np.asarray(mask)
    if mask.shape != rho_img.shape:
        raise InputError(f"mask shape {mask.shape} differs from image shape {rho_img.shape}", source)
    mask = mask.astype(bool)
    if int(grid) != grid or not MIN_GRID <= grid <= MAX_GRID:
        raise GridError(f"grid must be an integer from {MIN_GRID} to {MAX_GRID}, got {grid}", source)
    grid = int(grid)
    if not mask.any():
        raise SegmentationError("mask has no nucleus (all False)", source)
    if mask.sum() < MIN_NUCLEUS_PIXELS:
        raise GridError(f"nucleus has only {int(mask.sum())} pixels (< {MIN_NUCLEUS_PIXELS}); "
                        "render at a smaller pixel size", source)
    if not 0 < total_mean < MAX_TOTAL:
        raise InputError(f"total_mean must be in (0, {MAX_TOTAL}), got {total_mean}", source)
    s_min, s_max = (float(v) for v in split_range)
    if not 0 <= s_min <= s_max <= 1:
        raise InputError(f"split_range must satisfy 0 <= s_min <= s_max <= 1, got {split_range}", source)
    p_lo, p_hi = (float(v) for v in split_percentiles)
    if not 0 <= p_lo < p_hi <= 100:
        raise InputError(f"split_percentiles must satisfy 0 <= lo < hi <= 100, got {split_percentiles}", source)
    if split not in ("density", "uniform"):
        raise InputError(f"unknown split {split!r}; use 'density' or 'uniform'", source)
    if margin < 0:
        raise InputError(f"margin must be >= 0, got {margin}", source)
    if not euchromatin_gain > 0:
        raise InputError(f"euchromatin_gain must be > 0, got {euchromatin_gain}", source)
    rho_e_img = None
    if euchromatin is not None:
        rho_e_img = _as_array(euchromatin, "euchromatin image", source)
        if rho_e_img.shape != rho_img.shape:
            raise InputError(f"euchromatin shape {rho_e_img.shape} differs from image shape {rho_img.shape}", source)
    n_negative = int((rho_img < 0).sum()) + (0 if rho_e_img is None else int((rho_e_img < 0).sum()))
    if rho_e_img is not None:
        check_channels(rho_img, euchromatin_gain * rho_e_img, mask, source)
        rho_e_pos = np.clip(rho_e_img, 0, None)     # the density the euchromatin field is made of
    rho_img = np.clip(rho_img, 0, None)            # densities cannot be negative (e.g. background-subtracted TIFF)

    # 1. square box around the nucleus, in pixel-edge coordinates
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    side = max(r1 - r0, c1 - c0) * (1.0 + 2.0 * margin)
    y_start = 0.5 * (r0 + r1) - 0.5 * side
    x_start = 0.5 * (c0 + c1) - 0.5 * side
    cell = side / grid                              # pixels per grid cell
    ry = _overlap_matrix(y_start, cell, grid, rho_img.shape[0])
    rx = _overlap_matrix(x_start, cell, grid, rho_img.shape[1])

    def resample(a):
        return ry @ a @ rx.T

    coverage = resample(mask.astype(np.float64))
    gmask = coverage > 0.5
    if gmask.sum() < 4:
        raise GridError("nucleus covers fewer than 4 grid cells", source)
    spacing = cell * ps
    origin = (origin0[0] + (y_start + 0.5 * cell - 0.5) * ps, origin0[1] + (x_start + 0.5 * cell - 0.5) * ps)

    sigma_cells = 0.0 if smoothing is None else float(smoothing) / spacing
    if background is None:
        bg = (0.0, 0.0)
    elif isinstance(background, str):
        if background != "auto":
            raise InputError(f"background must be None, 'auto' or a number per pixel, got {background!r}", source)
        far = _far_from(mask, ps, BACKGROUND_DISTANCE_NM)   # one region for both channels
        bg = (_background_level(rho_img, far, ps), 0.0 if rho_e_img is None else _background_level(rho_e_pos, far, ps))
    else:
        bg = tuple(float(b) for b in np.broadcast_to(np.asarray(background, dtype=np.float64), (2,)))
        if not all(np.isfinite(b) and b >= 0 for b in bg):
            raise InputError(f"background must be >= 0 per pixel, got {background!r}", source)

    # area averages minus the background; cells cannot hold less than nothing
    rho = np.where(gmask, _masked_smooth(np.clip(resample(rho_img) - bg[0], 0, None), gmask, sigma_cells), 0.0)
    settings = {"grid": grid, "total_mean": float(total_mean), "split": split if rho_e_img is None else "two-channel",
                "split_range": [s_min, s_max], "split_percentiles": [p_lo, p_hi], "margin": float(margin),
                "smoothing": None if smoothing is None else float(smoothing),
                "euchromatin_gain": float(euchromatin_gain), "box_pixels": [int(r0), int(c0), int(r1), int(c1)],
                "negative_pixels_clipped": n_negative,
                "background": None if background is None else (list(bg) if rho_e_img is not None else bg[0])}

    if rho_e_img is not None:
        rho_e = euchromatin_gain * np.where(
            gmask, _masked_smooth(np.clip(resample(rho_e_pos) - bg[1], 0, None), gmask,
                                  sigma_cells), 0.0)
        total = rho + rho_e
        if not (total[gmask] > 0).any():
            raise InputError("both channels are empty inside the nucleus", source)
        a = _scale_to_mean_checked(total, gmask, total_mean, source)
        phi_t = np.clip(a * total, 0, MAX_TOTAL)
        # where clipped, both channels shrink by the same factor
        with np.errstate(invalid="ignore", divide="ignore"):
            factor = np.where(total > 0, phi_t / np.where(total > 0, a * total, 1.0), 0.0)
        phi_h = np.where(gmask, a * rho * factor, 0.0)
        phi_e = np.where(gmask, a * rho_e * factor, 0.0)
        settings["scale"] = a
    else:
        inside = rho[gmask]
        if inside.max() == inside.min():
            raise InputError("density has no contrast inside the nucleus (all values equal)", source)
        if not (inside > 0).any():
            raise InputError("density is zero inside the nucleus", source)
        a = _scale_to_mean_checked(rho, gmask, total_mean, source)
        phi_t = np.where(gmask, np.clip(a * rho, 0, MAX_TOTAL), 0.0)
        if split == "density":
            q_lo, q_hi = np.percentile(inside, [p_lo, p_hi])
            if q_hi <= q_lo:                       # many equal values: fall back to the full range
                q_lo, q_hi = inside.min(), inside.max()
            share = s_min + (s_max - s_min) * np.clip((rho - q_lo) / (q_hi - q_lo), 0.0, 1.0)
            settings["split_quantiles"] = [float(q_lo), float(q_hi)]
        else:
            share = np.full_like(rho, 0.5 * (s_min + s_max))
        phi_h = np.where(gmask, share * phi_t, 0.0)
        phi_e = np.where(gmask, phi_t - phi_h, 0.0)
        settings["scale"] = a

    if edge_band == "auto":
        band_nm = max(partial_volume_width(rho_img if rho_e_img is None else rho_img + rho_e_img, mask, ps),
                      MIN_EDGE_BAND_NM)
    elif edge_band is None:
        band_nm = 0.0
    else:
        band_nm = float(edge_band)
        if not np.isfinite(band_nm) or band_nm < 0:
            raise InputError(f"edge_band must be 'auto', None or a width >= 0 nm, got {edge_band!r}", source)
    cell_dist_nm = resample(distance_to_outline(mask)) / np.maximum(coverage, 1e-12) * ps
    edge = gmask & ((coverage < 0.999) | (cell_dist_nm < band_nm))
    settings["edge_band_nm"] = float(band_nm)
    settings["edge_cells"] = int(edge.sum())
    return ChromatinFields(phi_h, phi_e, gmask, spacing=spacing, origin=origin, source=source, settings=settings,
                           edge=edge)


def partial_volume_width(density, mask, pixel_size: float = 1.0, level: float = 0.8,
                         max_depth_nm: float | None = None) -> float:
    """Width in nm of the band inside a mask's outline where the density is diluted by the outside.

    The median density of the pixels at each distance from the outline (bins of one pixel) is
    divided by its interior level (the median over pixels deeper than ``max_depth_nm``); the
    width is the first depth from which this profile stays at or above ``level`` up to
    ``max_depth_nm``. For a sharp nucleus blurred by a Gaussian of width ``s`` with a mask
    drawn ``d`` too wide it is about ``d + 0.84 s`` (``level=0.8``); denser chromatin at the
    lamina (LADs) makes it smaller, never larger.

    Parameters
    ----------
    density : (ny, nx) ndarray
        Density image (e.g. localizations per pixel).
    mask : (ny, nx) bool ndarray
        Nucleus.
    pixel_size : float
        nm per pixel.
    level : float
        Share of the interior density that ends the band.
    max_depth_nm : float, optional
        Deepest band considered (default: a quarter of the deepest distance in the mask, at
        most 600 nm).

    Returns
    -------
    float
        Band width in nm (0 when the density is at its interior level right at the outline).

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import ndimage
    >>> yy, xx = np.indices((200, 200))
    >>> r = np.hypot(yy - 100, xx - 100)
    >>> density = ndimage.gaussian_filter((r < 70).astype(float), 3.0)   # blur 3 px
    >>> w = partial_volume_width(density, r < 75, pixel_size=10.0)       # mask 5 px too wide
    >>> bool(60 <= w <= 100)
    True
    """
    density = np.asarray(density, dtype=np.float64)
    mask = np.asarray(mask, bool)
    dist = distance_to_outline(mask) * float(pixel_size)
    inside = dist[mask]
    values = density[mask]
    deepest = float(inside.max()) if inside.size else 0.0
    if max_depth_nm is None:
        max_depth_nm = min(0.25 * deepest, 600.0)
    deep = inside > max_depth_nm
    if deep.sum() < 10 or max_depth_nm <= 0:
        return 0.0
    plateau = float(np.median(values[deep]))
    if plateau <= 0:
        return 0.0
    step = float(pixel_size)
    edges = np.arange(0.0, max_depth_nm + step, step)
    idx = np.digitize(inside, edges) - 1
    profile = np.full(len(edges) - 1, np.nan)
    for b in range(len(edges) - 1):
        sel = idx == b
        if sel.any():
            profile[b] = np.median(values[sel]) / plateau
    below = np.flatnonzero(~(profile >= level))     # NaN bins count as below
    if below.size == 0:
        return 0.0
    return float(edges[below[-1] + 1])


def check_channels(heterochromatin, euchromatin, mask, source=None, min_share: float = MIN_CHANNEL_SHARE) -> float:
    """Refuse two channels when one of them is (nearly) absent inside the nucleus.

    With no euchromatin inside the nucleus, ``phi_e`` is ~0 there and the rate
    ``lambda ~ phi_h / phi_e`` is meaningless (a fit reports ~1000 with no warning); with no
    heterochromatin the roles are likely swapped. Each channel must hold at least
    ``min_share`` (:data:`MIN_CHANNEL_SHARE`, 2 %) of the summed density inside ``mask``.

    Parameters
    ----------
    heterochromatin, euchromatin : ndarray
        The two densities on the same pixels (localizations per pixel).
    mask : ndarray of bool
        The nucleus.
    source : str, optional
        File named in the error.
    min_share : float

    Returns
    -------
    float
        The euchromatin share inside the nucleus.

    Raises
    ------
    InputError
        A channel holds less than ``min_share`` of the density inside the nucleus.

    Examples
    --------
    >>> import numpy as np
    >>> mask = np.zeros((10, 10), bool); mask[2:8, 2:8] = True
    >>> round(check_channels(np.ones((10, 10)), np.full((10, 10), 0.25), mask), 3)
    0.2
    """
    mask = np.asarray(mask, dtype=bool)
    het = float(np.clip(np.asarray(heterochromatin, dtype=np.float64)[mask], 0, None).sum())
    eu = float(np.clip(np.asarray(euchromatin, dtype=np.float64)[mask], 0, None).sum())
    total = het + eu
    share = eu / total if total > 0 else 0.0
    for name, value in (("euchromatin", share), ("heterochromatin", 1.0 - share)):
        if value < min_share:
            raise InputError(f"the {name} channel holds only {100 * value:.2g}% of the density inside the nucleus "
                             f"(need {100 * min_share:g}%): no {name} there, so the rate is undefined. Check the "
                             "channel (--euchromatin-channel, config fields.euchromatin_channel) or the second file "
                             "(--euchromatin): the same cell, the same field of view?", source)
    return share


def _scale_to_mean_checked(total, mask, target, source):
    try:
        return float(_scale_to_mean(total, mask, target))
    except InputError as exc:
        raise InputError(exc.reason, source) from None
