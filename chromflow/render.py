"""Localizations -> density image.

:func:`render` turns a localization table (x, y in nm) into a :class:`chromflow.Image` whose
values are *localizations per pixel*: the image sums to the number of localizations inside the
field of view, for both methods.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import ndimage

from ._validate import check_pixel_size
from .errors import InputError
from .image import Image

__all__ = ["render", "DEFAULT_SIGMA_NM", "MAX_PIXELS", "MAX_SIGMA_NM", "MIN_SIGMA_PIXELS"]

#: Blur (nm) of the Gaussian method when neither ``sigma`` nor an ``uncertainty`` column is given.
DEFAULT_SIGMA_NM = 20.0
#: Largest image :func:`render` makes (pixels); beyond this the pixel size is too small.
MAX_PIXELS = 200_000_000
#: Largest Gaussian blur (nm) accepted, as ``sigma`` or as a localization precision: SMLM
#: precisions are 5-50 nm; a micrometre is no localization, and a kernel of 1e7 nm would need
#: terabytes. Larger precisions are replaced by the median of the others, with a warning.
MAX_SIGMA_NM = 1000.0
#: Kernels are truncated at this many standard deviations (then renormalised to unit mass).
TRUNCATE_SIGMAS = 4.0
#: Blurs below this many pixels are rendered as this wide: either way all of a localization's
#: mass lands in its own pixel (unless it sits within 0.004 pixel of an edge), and far smaller
#: ones (a precision of 1e-200 nm) would underflow in the kernels.
MIN_SIGMA_PIXELS = 1e-3
#: Localizations are grouped by blur; within one group sigmas differ by at most this ratio.
SIGMA_BIN_RATIO = 1.25
#: Sub-pixel positions are quantised to steps no coarser than sigma / this (at most 8 steps).
SUBPIXEL_STEPS_PER_SIGMA = 3.0
_MAX_SUBPIXEL = 8
#: The cloud-in-cell path renders a bin on a grid f = 1, 2, 4, 8 times finer than the pixels, the
#: smallest with f * sigma >= this (pixels): it is then at least as accurate as the sub-pixel
#: phases (measured: 8.4 % against 8.8 % of a localization's mass misplaced at f * sigma = 0.85).
CIC_MIN_SIGMA = 0.85
_MAX_CIC_FACTOR = 8


def _source(locs) -> str | None:
    attrs = getattr(locs, "attrs", None) or {}
    src = attrs.get("source")
    return None if src is None else str(src)


def _pixel_weights(offset: np.ndarray, s: float, half: int) -> np.ndarray:
    """Fraction of a unit 1D Gaussian landing in pixels ``-half..half``, one row per source.

    ``offset`` (pixel units, shape (m,)) is the position of the source relative to the centre of
    its own pixel; ``s`` the standard deviation in pixels (scalar or shape (m,)). Each row is the
    erf difference over the pixel edges, renormalised to sum to 1 (so truncation loses no mass);
    computed by the direct scatter's own kernel, :func:`chromflow._render_kernels._pixel_weights_into`.
    """
    from ._render_kernels import _pixel_weights_into

    offset = np.asarray(offset, dtype=np.float64)
    s = np.broadcast_to(np.asarray(s, dtype=np.float64), offset.shape)
    w = np.empty((len(offset), 2 * half + 1))
    for row, o, s_row in zip(w, offset, s):
        _pixel_weights_into(row, float(o), float(s_row), half)
    return w


def _fold_edges(padded: np.ndarray, pad: int, n: int, axis: int) -> np.ndarray:
    """Remove ``pad`` cells on both ends of ``axis``, adding their content back by reflection
    (``padded`` is used as scratch space).

    Mirror (half-sample) reflection about the image edge keeps every count inside the field of
    view, which is what makes the Gaussian render conserve mass at the borders.
    """
    padded = np.moveaxis(padded, axis, 0)
    if pad <= n:                                  # one reflection: two reversed slices
        out = padded[pad:pad + n]                 # a view: padded is the caller's scratch
        out[:pad] += padded[:pad][::-1]
        out[n - pad:] += padded[pad + n:][::-1]
        return np.moveaxis(out, 0, axis)
    out = padded[pad:pad + n].copy()
    period = 2 * n
    for k in range(padded.shape[0]):
        if pad <= k < pad + n:
            continue
        j = (k - pad) % period          # position in the infinitely reflected line
        if j >= n:
            j = period - 1 - j
        out[j] += padded[k]
    return np.moveaxis(out, 0, axis)


def _check_locs(locs, source):
    if not hasattr(locs, "columns"):
        raise InputError(f"render expects a pandas DataFrame of localizations, got {type(locs).__name__}", source)
    missing = [c for c in ("x", "y") if c not in locs.columns]
    if missing:
        raise InputError(f"localization table has no {' / '.join(missing)} column "
                         f"(columns: {list(locs.columns)})", source)


def _drop_absurd_precision(locs, source):
    """Precisions above MAX_SIGMA_NM become NaN (render then uses the median of the others).

    A few such rows are fit failures and get a warning; when most rows have them the column is
    in the wrong unit (or not a precision) and the table is refused.
    """
    import warnings

    values = locs["uncertainty"].to_numpy(dtype=np.float64)
    if len(values) == 0 or values.max() <= MAX_SIGMA_NM:     # one pass; NaN / inf fail the test
        return locs
    absurd = np.isfinite(values) & (values > MAX_SIGMA_NM)
    n = int(absurd.sum())
    if n == 0:
        return locs
    valid = np.isfinite(values) & (values > 0)
    if n * 2 > int(valid.sum()):
        raise InputError(f"{n} of {len(values)} localization precisions exceed {MAX_SIGMA_NM:g} nm (up to "
                         f"{values[absurd].max():.3g} nm): not a precision in nm; check the unit of the "
                         "'uncertainty' column, or set a fixed blur with render.sigma (nm)", source)
    warnings.warn(f"{source + ': ' if source else ''}{n} localization(s) with a precision above "
                  f"{MAX_SIGMA_NM:g} nm (up to {values[absurd].max():.3g} nm) are rendered with the median "
                  "precision of the others", UserWarning, stacklevel=3)
    locs = locs.copy()
    locs.loc[absurd, "uncertainty"] = np.nan
    return locs


def _snap_fov(span, pixel_size):
    # span = (y min, y max, x min, x max) of the data, snapped outward to whole pixels; +1 pixel
    # at the top so that a point exactly on the max is inside
    y_min = math.floor(span[0] / pixel_size) * pixel_size
    x_min = math.floor(span[2] / pixel_size) * pixel_size
    y_max = (math.floor(span[1] / pixel_size) + 1) * pixel_size
    x_max = (math.floor(span[3] / pixel_size) + 1) * pixel_size
    return y_min, x_min, y_max, x_max


def render(locs, pixel_size: float = 20.0, method: str = "gaussian", sigma: float | None = None,
           fov=None, channel=None) -> Image:
    """Render localizations as a density image (localizations per pixel).

    Parameters
    ----------
    locs : pandas.DataFrame
        Localizations with columns ``x``, ``y`` (nm); optional ``uncertainty`` (localization
        precision, nm) and ``channel``. A ``z`` column is ignored: 3D data are rendered as their
        2D (y, x) projection. ``locs.attrs["source"]`` is used in error messages.
    pixel_size : float
        Pixel edge length in nm.
    method : {"gaussian", "histogram"}
        ``"histogram"``: counts per pixel. ``"gaussian"``: each localization is spread as a 2D
        Gaussian integrated over the pixels (see Notes).
    sigma : float, optional
        Fixed Gaussian standard deviation in nm. When None, each localization uses its own
        ``uncertainty``; without that column :data:`DEFAULT_SIGMA_NM` (20 nm) is used.
        Rows with a missing or non-positive uncertainty get the median of the valid ones. Blurs
        below :data:`MIN_SIGMA_PIXELS` (1e-3) pixel are rendered as that wide (a point).
    fov : tuple of float, optional
        ``(y_min, x_min, y_max, x_max)`` in nm. Pixel ``(i, j)`` covers
        ``y_min + i*pixel_size <= y < y_min + (i+1)*pixel_size`` (same for x); the image has
        ``ceil((y_max - y_min) / pixel_size)`` rows. Only localizations with
        ``y_min <= y < y_max`` and ``x_min <= x < x_max`` are rendered. Default: the bounds of the
        data snapped outward to whole pixels.
    channel : optional
        When given, only rows whose ``channel`` column equals this value are rendered.

    Returns
    -------
    Image
        ``data`` float64 ``(ny, nx)``; ``origin`` = centre of pixel (0, 0) in nm;
        ``data.sum()`` equals the number of localizations inside the fov (float precision).
        ``metadata`` holds ``method``, ``sigma``, ``n_localizations``, ``units``.

    Raises
    ------
    InputError
        No ``x``/``y`` column, no rows, NaN coordinates, ``pixel_size <= 0``, an unknown method,
        a fov that contains no localization, or an image larger than :data:`MAX_PIXELS`.

    Notes
    -----
    Each localization is spread as a 2D Gaussian integrated over every pixel (differences of the
    error function at the pixel edges, separable in y and x), truncated at 4 sigma and
    renormalised to unit sum. Mass that would fall outside the fov is mirrored back at the edge,
    so every localization inside the fov contributes exactly one count.

    To render 10 million localizations in under a second on two cores, localizations are
    grouped by sigma into geometric bins of ratio :data:`SIGMA_BIN_RATIO` (1.25), by a stable
    counting sort (compiled loops, see :mod:`chromflow._render_kernels`). Per bin, one of three
    algorithms runs, whichever is estimated cheaper:

    * *cloud-in-cell* (dense bins): on a grid ``f`` times finer than the pixels (``f`` = 1, 2,
      4 or 8, the smallest with ``f * sigma >= 0.85`` pixel, :data:`CIC_MIN_SIGMA`), each
      localization's mass is split linearly between the 2 x 2 grid nodes around it, which keeps
      its mass and mean position exactly; every node is then spread by the pixel-integrated
      Gaussian of its sub-pixel phase (separable convolutions). The Gaussian's variance is the
      bin's mean square sigma minus the bin's mean variance added by the split, so the bin's
      second moment is kept.
    * *sub-pixel phases* (``u`` phases per axis, ``u = min(8, ceil(3 * pixel_size / sigma))``):
      positions are moved to the centre of their phase (by at most ``pixel_size / (2u)``), and
      each phase is convolved separably with its pixel-integrated kernel.
    * *direct scatter* (sparse bins): each localization's own kernel, at its exact position and
      with its own sigma, is added to the image.

    The first two use the bin's RMS sigma for every localization of the bin (exact when sigma
    is fixed). Measured against exact rendering (``python benchmarks/render_speed.py
    --accuracy``; isolated localizations, so that errors cannot cancel), cloud-in-cell puts
    0.5 % (sigma = 3 pixels) to 5.6 % (sigma = 1 pixel) of a localization's mass in the wrong
    pixel, at most 8.4 % (sigma just above a grid switch, ``f * sigma = 0.85``), against 7.5 to
    11.5 % for the sub-pixel phases. With own uncertainties (gamma-distributed, 0.15-4 pixels)
    the sigma binning adds to this: 8.3 % per isolated localization (phases: 11.3 %); in a
    dense field (10 localizations per pixel) 0.65 % of the image is misplaced. The result does
    not depend on the number of threads. The compiled loops are built on the first call in a
    new installation (~1.5 s) and loaded from their cache afterwards (~0.4 s once per process).

    Examples
    --------
    >>> import pandas as pd
    >>> locs = pd.DataFrame({"x": [10.0, 30.0, 35.0], "y": [5.0, 5.0, 25.0]})
    >>> img = render(locs, pixel_size=20.0, method="histogram")
    >>> img.data
    array([[1., 1.],
           [0., 1.]])
    >>> img.origin
    (10.0, 10.0)
    >>> round(float(render(locs, pixel_size=10.0, sigma=15.0).data.sum()), 6)
    3.0
    """
    source = _source(locs)
    _check_locs(locs, source)
    if pixel_size is None:
        raise InputError("pixel_size must be a number of nm, got None", source)
    pixel_size = check_pixel_size(pixel_size, source)
    if method not in ("gaussian", "histogram"):
        raise InputError(f"unknown render method {method!r}; use 'gaussian' or 'histogram'", source)
    if sigma is not None:
        sigma = float(sigma)
        if not np.isfinite(sigma) or sigma <= 0:
            raise InputError(f"sigma must be a positive number of nm, got {sigma}", source)
        if sigma > MAX_SIGMA_NM:
            raise InputError(f"sigma of {sigma:g} nm is not a localization blur (at most {MAX_SIGMA_NM:g} nm); "
                             "check its unit (nm)", source)
    elif method == "gaussian" and "uncertainty" in getattr(locs, "columns", ()):
        locs = _drop_absurd_precision(locs, source)

    if channel is not None:
        if "channel" not in locs.columns:
            raise InputError(f"channel={channel!r} asked for but the table has no 'channel' column", source)
        locs = locs[locs["channel"].to_numpy() == channel]
        if len(locs) == 0:
            raise InputError(f"no localizations in channel {channel!r}", source)
    if len(locs) == 0:
        raise InputError("no localizations to render (empty table)", source)

    y = locs["y"].to_numpy(dtype=np.float64)
    x = locs["x"].to_numpy(dtype=np.float64)
    # sum, min and max per axis (y and x in two threads); the sums are finite when every
    # coordinate is, and the mask of bad ones is built only otherwise
    (y_sum, *y_span), (x_sum, *x_span) = _in_threads(lambda v: (float(v.sum()), float(v.min()), float(v.max())),
                                                     [y, x])
    if not (np.isfinite(y_sum) and np.isfinite(x_sum)):
        bad = ~(np.isfinite(y) & np.isfinite(x))
        if bad.any():
            raise InputError(f"{int(bad.sum())} localizations have NaN or infinite x/y coordinates", source)
    span = (*y_span, *x_span)

    if fov is None:
        y_min, x_min, y_max, x_max = _snap_fov(span, pixel_size)
    else:
        try:
            y_min, x_min, y_max, x_max = (float(v) for v in fov)
        except (TypeError, ValueError):
            raise InputError(f"fov must be (y_min, x_min, y_max, x_max) in nm, got {fov!r}", source) from None
        if not (y_max > y_min and x_max > x_min):
            raise InputError(f"fov {fov!r} is empty: need y_max > y_min and x_max > x_min", source)
    ny = max(1, math.ceil((y_max - y_min) / pixel_size - 1e-9))
    nx = max(1, math.ceil((x_max - x_min) / pixel_size - 1e-9))
    if ny * nx > MAX_PIXELS:
        fit = pixel_size * math.sqrt(ny * nx / MAX_PIXELS)
        raise InputError(f"image would be {ny} x {nx} pixels (> {MAX_PIXELS:.0e}); use a pixel size of at "
                         f"least {math.ceil(fit * 10) / 10:g} nm or a smaller fov", source)

    # the selection (a copy of every column) is made only when some localization is outside
    inside = None
    if not (span[0] >= y_min and span[1] < y_max and span[2] >= x_min and span[3] < x_max):
        inside = (y >= y_min) & (y < y_max) & (x >= x_min) & (x < x_max)
        y, x = y[inside], x[inside]
    n_in = len(y)
    if n_in == 0:
        raise InputError(f"no localization inside fov (y {y_min:g}..{y_max:g}, x {x_min:g}..{x_max:g} nm); "
                         f"data span y {span[0]:g}..{span[1]:g}, x {span[2]:g}..{span[3]:g} nm", source)
    meta = {"method": method, "n_localizations": n_in, "units": "localizations per pixel",
            "fov": (y_min, x_min, y_max, x_max)}
    if method == "histogram":
        py, px = _to_pixels(y, x, (y_min, x_min), pixel_size)
        del y, x
        index = py.astype(np.intp)
        np.minimum(index, ny - 1, out=index)
        index *= nx
        ix = px.astype(np.intp)
        np.minimum(ix, nx - 1, out=ix)
        index += ix
        del ix
        data = np.bincount(index, minlength=ny * nx).astype(np.float64).reshape(ny, nx)
        meta["sigma"] = None
    else:
        if sigma is not None:
            sig = sigma
            meta["sigma"] = sigma
        elif "uncertainty" in locs.columns:
            sig = locs["uncertainty"].to_numpy(dtype=np.float64)
            if inside is not None:
                sig = sig[inside]
            # all valid when the sum is finite and the minimum positive (the mask only otherwise)
            if not (np.isfinite(sig.sum()) and sig.min() > 0):
                ok = np.isfinite(sig) & (sig > 0)
                n_bad = n_in - int(np.count_nonzero(ok))
                fill = float(np.median(sig[ok])) if n_bad < n_in else DEFAULT_SIGMA_NM
                sig = np.where(ok, sig, fill)
                meta["uncertainty_filled"] = n_bad
            meta["sigma"] = "uncertainty"
        else:
            sig = DEFAULT_SIGMA_NM
            meta["sigma"] = DEFAULT_SIGMA_NM
        # grouped by blur, in pixel units (relative to the edge of pixel 0)
        groups = _sigma_groups(y, x, sig, scale=pixel_size, origin=(y_min, x_min))
        del y, x
        tasks = [lambda: _render_gaussian(None, None, None, ny, nx, groups=groups)]
        if meta["sigma"] == "uncertainty":     # the median is found while the bins render
            tasks.append(lambda: _median_from_groups(groups))
        data, *median = _in_threads(lambda task: task(), tasks)
        if median:
            meta["sigma_median"] = median[0]

    name = Path(source).stem if source else "density"
    return Image(data, pixel_size=pixel_size,
                 origin=(y_min + 0.5 * pixel_size, x_min + 0.5 * pixel_size),
                 name=name, source=source, metadata=meta)


class _SigmaGroups:
    """Localizations grouped by sigma bin (see :func:`_sigma_groups`).

    ``y, x``: the positions (pixels) and ``sig``: the blurs (``sig / scale`` pixels; a number
    when all are equal), bin after bin, each bin in input order; bin ``k`` is
    ``starts[k]:ends[k]``; ``bins``: the non-empty bins, in increasing sigma; ``sum_sq``: per bin,
    the sum of its squared sigmas (pixels^2); ``upper``: per bin, a bound on its sigmas (pixels).
    """

    def __init__(self, y, x, sig, scale, bins, starts, ends, sum_sq, upper):
        self.y, self.x, self.sig, self.scale = y, x, sig, scale
        self.bins, self.starts, self.ends = bins, starts, ends
        self.sum_sq, self.upper = sum_sq, upper

    def sigmas(self, k) -> np.ndarray:
        """The sigmas of bin ``k``, pixels."""
        n = int(self.ends[k] - self.starts[k])
        if np.ndim(self.sig) == 0:
            return np.full(n, self.sig / self.scale)
        part = self.sig[self.starts[k]:self.ends[k]]
        return part / self.scale if self.scale != 1.0 else part


def _to_pixels(y, x, origin, scale):
    """Positions in pixel units, ``(y - origin[0]) / scale`` (y and x in two threads); the
    arrays themselves when that changes nothing."""
    if origin == (0.0, 0.0) and scale == 1.0:
        return y, x

    def convert(values, low):
        values = values - low
        values /= scale
        return values

    return _in_threads(lambda args: convert(*args), [(y, origin[0]), (x, origin[1])])


def _sigma_groups(y, x, sig, scale: float = 1.0, origin=(0.0, 0.0)) -> _SigmaGroups:
    """Group localizations by sigma bin: bin ``k`` holds the sigmas ``s = sig / scale`` (pixels)
    in ``[r^k, r^(k+1))``, r = :data:`SIGMA_BIN_RATIO`, so bins are ordered by sigma. ``sig`` is
    an array, or a number when all localizations have the same blur. The positions are
    converted to pixels on the way, ``(y - origin[0]) / scale``. Sigmas below
    :data:`MIN_SIGMA_PIXELS` are raised to it.

    A stable counting sort in two compiled passes; each pass runs over contiguous chunks of the
    localizations in parallel threads (their number depends only on ``n``, and the chunks'
    counts are combined in chunk order, so the result does not depend on the thread count).
    """
    n = len(y)
    lo, hi = (float(sig), float(sig)) if np.ndim(sig) == 0 else (float(sig.min()), float(sig.max()))
    floor = MIN_SIGMA_PIXELS * scale            # narrower blurs would underflow in the kernels
    if lo < floor:
        sig = max(float(sig), floor) if np.ndim(sig) == 0 else np.maximum(sig, floor)
        lo, hi = max(lo, floor), max(hi, floor)
    if lo == hi:                                # a fixed sigma: one bin, no sort
        s = lo / scale
        py, px = _to_pixels(y, x, origin, scale)
        return _SigmaGroups(py, px, sig, scale, [0], np.array([0]), np.array([n]),
                            np.array([n * s * s]), np.array([s]))
    from ._render_kernels import _bin_of, _count_bins, _place_by_bin

    inv_log_ratio = 1.0 / math.log(SIGMA_BIN_RATIO)
    low = _bin_of(lo / scale, inv_log_ratio)
    n_bins = _bin_of(hi / scale, inv_log_ratio) - low + 1
    bounds = np.linspace(0, n, min(8, n // 1_000_000) + 2).astype(np.intp)
    edges = list(zip(bounds[:-1], bounds[1:]))
    keys = np.empty(n, dtype=np.int8 if n_bins < 128 else np.int16)

    def count(lo_hi):
        a, b = lo_hi
        counts, sum_sq = np.zeros(n_bins, dtype=np.int64), np.zeros(n_bins)
        _count_bins(sig[a:b], scale, inv_log_ratio, low, keys[a:b], counts, sum_sq)
        return counts, sum_sq

    parts = _in_threads(count, edges)
    per_chunk = np.array([c for c, _ in parts])                 # (chunks, bins)
    per_bin = per_chunk.sum(axis=0)
    sum_sq = np.zeros(n_bins)
    for _, part in parts:                       # in chunk order: the same for any thread count
        sum_sq += part
    ends = np.cumsum(per_bin)
    starts = ends - per_bin
    bins = [int(k) for k in np.flatnonzero(per_bin)]
    upper = np.exp((np.arange(n_bins) + low + 1) * math.log(SIGMA_BIN_RATIO)) * 1.001
    if len(bins) == 1:                          # one bin: every localization, in order
        py, px = _to_pixels(y, x, origin, scale)
        return _SigmaGroups(py, px, sig, scale, bins, starts, ends, sum_sq, upper)
    # each chunk's first slot in each bin: the bin's start plus what the earlier chunks put there
    first_slot = starts[None, :] + np.cumsum(per_chunk, axis=0) - per_chunk
    out_y, out_x, out_sig = np.empty(n), np.empty(n), np.empty(n)

    def place(i):
        a, b = edges[i]
        _place_by_bin(keys[a:b], y[a:b], x[a:b], sig[a:b], float(origin[0]), float(origin[1]), float(scale),
                      first_slot[i].copy(), out_y, out_x, out_sig)

    _in_threads(place, range(len(edges)))
    return _SigmaGroups(out_y, out_x, out_sig, scale, bins, starts, ends, sum_sq, upper)


def _in_threads(fn, items) -> list:
    """``[fn(item) for item in items]``, run in up to :func:`_render_threads` threads (numpy's
    loops and the compiled kernels release the GIL); results in the order of ``items``."""
    items = list(items)
    workers = min(len(items), _render_threads())
    if workers <= 1:
        return [fn(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def _median_from_groups(groups) -> float:
    """Median of ``groups.sig`` (as ``np.median``): bins are ordered by sigma, so only the bin(s)
    holding the middle ranks are partially sorted."""
    if np.ndim(groups.sig) == 0:                # a fixed sigma
        return float(groups.sig)
    n = int(groups.ends[-1])
    values = []
    for rank in sorted({(n - 1) // 2, n // 2}):
        k = int(np.searchsorted(groups.ends, rank, side="right"))
        a = int(groups.starts[k])
        part = groups.sig[a:groups.ends[k]]
        values.append(float(np.partition(part, rank - a)[rank - a]))
    return float(np.mean(values))


def _render_gaussian(py, px, s, ny, nx, path: str = "auto", groups=None) -> np.ndarray:
    """Gaussian render; ``py, px`` pixel-unit positions, ``s`` sigmas in pixels (see Notes of render).

    ``path`` ("auto", "direct", "convolve", "cic") forces one algorithm (for tests); "cic" falls
    back to "direct" for bins too narrow for it. ``groups`` is :func:`_sigma_groups` of the
    localizations when the caller has it already (``s`` is then not used). Sigma bins are
    rendered in parallel threads and summed in bin order, so the result does not depend on the
    number of threads.
    """
    from ._render_kernels import _scatter_direct

    groups = _sigma_groups(py, px, s) if groups is None else groups
    bins, starts, ends = groups.bins, groups.starts, groups.ends
    workers = min(len(bins), _render_threads())

    def bin_sigma(k):
        # the bin's sigma keeps the second moment of its mixture of Gaussians (exact when all
        # equal), and a bound on its largest sigma
        return float(np.sqrt(groups.sum_sq[k] / (ends[k] - starts[k]))), float(groups.upper[k])

    def plan(k):
        """The bin's algorithm and its rough cost (ns on one core), from its count and sigma."""
        n = int(ends[k] - starts[k])
        s_b, s_max = bin_sigma(k)
        half = _kernel_half(s_max)
        u = _subpixel_steps(s_b)
        ny_pad, nx_pad = ny + 2 * half, nx + 2 * half
        width = 2 * half + 1
        f = _cic_factor(s_b)
        # rough costs (ns, measured on one core): direct ~800 per localization (its erf
        # weights); the convolve path's y pass scatters (~25 per weight) or convolves u^2 phase
        # images (~1.5 per multiply-add) and its x pass convolves u images; the cic path ~10 per
        # localization, ~3 per node of its fine grid (clear, fold) and convolves f^2 + f images
        costs = {"direct": 800 * n + 2 * ny_pad * nx_pad,
                 "convolve": min(25 * width * n, 1.5 * u * u * ny * nx * width) + 1.5 * u * ny_pad * nx * width}
        if f <= _MAX_CIC_FACTOR:
            cells = (ny_pad + 2) * (nx_pad + 2)
            costs["cic"] = 10 * n + 3 * f * f * cells + 1.5 * (f * f * cells + f * cells) * width
        choice = min(costs, key=costs.get) if path == "auto" else path
        if choice == "cic" and "cic" not in costs:
            choice = "direct"
        return choice, costs.get(choice, costs["direct"])

    def one_bin(k):
        a, b = int(starts[k]), int(ends[k])
        by, bx = groups.y[a:b], groups.x[a:b]
        s_b, _ = bin_sigma(k)
        choice, _ = plan(k)
        if choice == "cic":
            return _cic_bin(by, bx, s_b, ny, nx)
        s_l = groups.sigmas(k)
        # the exact largest sigma sets the kernel size
        half = _kernel_half(float(s_l.max()))
        if choice == "direct":
            padded = np.zeros((ny + 2 * half, nx + 2 * half))
            _scatter_direct(padded, by, bx, s_l, half)
        else:
            padded = _convolve_bin(by, bx, s_b, _subpixel_steps(s_b), half, ny, nx)
        padded = _fold_edges(padded, half, ny, axis=0)
        return _fold_edges(padded, half, nx, axis=1)

    # the costliest bins start first (so the threads finish together; a narrow bin of few
    # localizations can cost more than a wide one of many); the images are summed in bin order:
    # deterministic whatever the scheduling
    largest_first = sorted(bins, key=lambda k: -plan(k)[1]) if workers > 1 else bins
    images = dict(zip(largest_first, _in_threads(one_bin, largest_first)))
    out = np.zeros((ny, nx))
    for k in bins:
        out += images[k]
    return out


def _kernel_half(s_max: float) -> int:
    """Half-width (pixels) of a kernel truncated at :data:`TRUNCATE_SIGMAS` of ``s_max`` pixels."""
    return max(1, math.ceil(TRUNCATE_SIGMAS * s_max + 0.5))


def _subpixel_steps(s_b: float) -> int:
    """Sub-pixel phases per axis for a bin of sigma ``s_b`` pixels (at most :data:`_MAX_SUBPIXEL`)."""
    return int(min(_MAX_SUBPIXEL, max(1, math.ceil(SUBPIXEL_STEPS_PER_SIGMA / s_b))))


def _cic_factor(s_b: float) -> int:
    """Grid refinement of the cic path: the smallest power of two f with f * s_b (pixels) >=
    :data:`CIC_MIN_SIGMA`."""
    return 1 if s_b >= CIC_MIN_SIGMA else 2 ** math.ceil(math.log2(CIC_MIN_SIGMA / s_b) - 1e-12)


def _cic_bin(by, bx, s_b, ny, nx) -> np.ndarray:
    """One sigma bin by cloud-in-cell assignment on a grid f times finer than the pixels.

    Each localization's mass is split linearly between the 2 x 2 grid nodes around it (nodes at
    the centres of the fine cells, :func:`_cic_scatter`), which keeps its mass and its mean
    position exactly and adds the variance ``t (1 - t)`` (t: its fractional position between
    nodes, per axis); the Gaussian then applied has the bin's variance minus the bin's mean of
    that added variance, so that the bin's second moment is kept. Each node is a point mass at a
    known sub-pixel phase, rendered by the phase kernels of :func:`_pixel_weights` (one
    convolution per phase and axis).
    """
    from ._render_kernels import _cic_scatter

    f = _cic_factor(s_b)
    n = len(by)
    half = _kernel_half(s_b)
    pad = half + 1                                # the node below pixel 0 / above the last one
    nyp, nxp = ny + 2 * pad, nx + 2 * pad
    grid = np.zeros((f * nyp, f * nxp))
    added_y, added_x = _cic_scatter(grid, by, bx, f, f * pad)
    var_y, var_x = added_y / n, added_x / n       # bin's mean added variance, grid units^2

    # phase kernels: node phase a sits at (a + 0.5) / f - 0.5 pixel from its pixel's centre
    centres = (np.arange(f) + 0.5) / f - 0.5
    sy = math.sqrt(max(s_b * s_b - var_y / (f * f), 1e-12))
    sx = math.sqrt(max(s_b * s_b - var_x / (f * f), 1e-12))
    wy = _pixel_weights(centres, np.full(f, sy), half)
    wx = _pixel_weights(centres, np.full(f, sx), half)
    rows = grid.reshape(nyp, f, f * nxp)
    cols = ndimage.convolve1d(rows[:, 0], wy[0], axis=0, mode="constant", cval=0.0)
    for a in range(1, f):
        cols += ndimage.convolve1d(rows[:, a], wy[a], axis=0, mode="constant", cval=0.0)
    del grid, rows
    cols = cols.reshape(nyp, nxp, f)
    padded = ndimage.convolve1d(cols[:, :, 0], wx[0], axis=1, mode="constant", cval=0.0)
    for c in range(1, f):
        padded += ndimage.convolve1d(cols[:, :, c], wx[c], axis=1, mode="constant", cval=0.0)
    padded = _fold_edges(padded, pad, ny, axis=0)
    return _fold_edges(padded, pad, nx, axis=1)


def _render_threads() -> int:
    """Threads for the Gaussian render: the cores this process may use, at most 8."""
    import os

    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, n))


def _convolve_bin(by, bx, s_b, u, half, ny, nx, y_pass: str = "auto") -> np.ndarray:
    """One sigma bin by sub-pixel phases: scatter along y, convolve along x (padded image).

    Positions are quantised to ``u`` phases per axis (phase ``a`` at offset ``centres[a]`` in
    its pixel) and every localization gets the bin's sigma ``s_b``. The y pass adds each
    localization's pixel-integrated y kernel (its phase's) into the image of its x phase when the
    bin is sparse (work ~ localizations), or histograms per (y, x) phase and convolves along y
    when it is dense (work ~ image x u**2).
    The x pass convolves each of the ``u`` x-phase images with that phase's kernel.
    ``y_pass`` ("auto", "scatter", "convolve") forces one y pass (for tests).
    """
    ny_pad, nx_pad = ny + 2 * half, nx + 2 * half
    width = 2 * half + 1
    jy = np.minimum(by.astype(np.intp), ny - 1)
    jx = np.minimum(bx.astype(np.intp), nx - 1)
    qy = np.minimum(((by - jy) * u).astype(np.int64), u - 1)
    qx = np.minimum(((bx - jx) * u).astype(np.int64), u - 1)
    centres = (np.arange(u) + 0.5) / u - 0.5
    w = _pixel_weights(centres, np.full(u, s_b), half)   # (u, 2*half+1), same for y and x
    if y_pass == "scatter" or (y_pass == "auto" and 8 * len(by) < u * u * ny * nx):
        # y pass by scatter: image of x phase c, padded row jy + k (k = 0..2 half), column jx
        base = (qx * ny_pad + jy) * nx + jx
        cols = np.zeros(u * ny_pad * nx)
        chunk = max(1, 8_000_000 // width)
        for lo in range(0, len(base), chunk):
            b = base[lo:lo + chunk]
            idx = (b[:, None] + (np.arange(width) * nx)[None, :]).reshape(-1)
            cols += np.bincount(idx, weights=w[qy[lo:lo + chunk]].reshape(-1), minlength=cols.size)
        cols = cols.reshape(u, ny_pad, nx)
    else:
        # y pass by convolution (dense bins): histogram per (y phase, x phase), one call per y phase
        counts = np.bincount(((qy * u + qx) * ny + jy) * nx + jx,
                             minlength=u * u * ny * nx).reshape(u, u, ny, nx)
        cols = np.zeros((u, ny_pad, nx))
        tmp = np.zeros((u, ny_pad, nx))
        for a in range(u):
            tmp[:, half:half + ny] = counts[a]
            cols += ndimage.convolve1d(tmp, w[a], axis=1, mode="constant", cval=0.0)
        del counts, tmp
    # x pass: one convolution per x phase c
    padded = np.zeros((ny_pad, nx_pad))
    tmp = np.zeros_like(padded)
    for c in range(u):
        tmp[:, half:half + nx] = cols[c]
        # convolve1d, mode "constant": out[i] = sum_d w[d] * in[i - d], d = -half..half
        padded += ndimage.convolve1d(tmp, w[c], axis=1, mode="constant", cval=0.0)
    return padded
