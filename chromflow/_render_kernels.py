"""Compiled loops of :mod:`chromflow.render` (numba), imported on first use.

The per-localization work of the Gaussian render (sorting by blur, cloud-in-cell weights,
direct scatter) is a loop over localizations with a few arithmetic operations each: numpy
makes a full temporary array per operation and one random-access pass per scatter, a compiled
loop makes one pass. The functions release the GIL, so :mod:`chromflow.render` runs them in
parallel threads. They are compiled on first use and cached next to this file.
"""
from __future__ import annotations

import math

import numba
import numpy as np


def _jit(fn):
    """``numba.njit(nogil=True)``, cached on disk when numba finds a writable cache folder
    (next to this file, else the user's cache folder); otherwise compiled once per process."""
    try:
        return numba.njit(nogil=True, cache=True)(fn)
    except RuntimeError:        # numba: "cannot cache function ...: no locator available"
        return numba.njit(nogil=True)(fn)


@_jit
def _bin_of(s, inv_log_ratio):
    """Sigma bin of ``s`` (pixels): floor(log(s) / log(SIGMA_BIN_RATIO)); non-decreasing in s."""
    return int(math.floor(math.log(s) * inv_log_ratio))


@_jit
def _count_bins(sig, scale, inv_log_ratio, low, keys, counts, sum_sq):
    """Pass 1 of the grouping: each localization's bin (``keys``), and per bin the count and the
    sum of squared sigmas (pixels^2); ``sig / scale`` is sigma in pixels."""
    n_bins = counts.shape[0]
    for i in range(sig.shape[0]):
        s = sig[i] / scale
        k = _bin_of(s, inv_log_ratio) - low
        # rounding can only move a value at the very ends of the range: clamped, still monotone
        k = min(max(k, 0), n_bins - 1)
        keys[i] = k
        counts[k] += 1
        sum_sq[k] += s * s


@_jit
def _place_by_bin(keys, y, x, sig, y0, x0, scale, next_slot, out_y, out_x, out_sig):
    """Pass 2 of the grouping (a stable counting sort): localization i goes to the next free
    slot of its bin, its position converted to pixels, ``(y - y0) / scale``."""
    for i in range(keys.shape[0]):
        k = keys[i]
        j = next_slot[k]
        next_slot[k] = j + 1
        out_y[j] = (y[i] - y0) / scale
        out_x[j] = (x[i] - x0) / scale
        out_sig[j] = sig[i]


@_jit
def _cic_scatter(grid, by, bx, f, shift):
    """Cloud-in-cell: split each localization's unit mass linearly between the 2 x 2 nodes of a
    grid ``f`` times finer than the pixels around it (node t at pixel coordinate (t + 0.5) / f,
    stored at row / column t + ``shift``). Returns the sums of the variance ``t (1 - t)`` the
    split adds, per axis (grid units^2)."""
    added_y = 0.0
    added_x = 0.0
    for i in range(by.shape[0]):
        # grid coordinate relative to the node centres, plus 1 (>= 0: int() is the floor)
        gy = by[i] * f + 0.5
        gx = bx[i] * f + 0.5
        ry = int(gy)
        rx = int(gx)
        ty = gy - ry
        tx = gx - rx
        ry += shift - 1
        rx += shift - 1
        w11 = ty * tx
        w10 = ty - w11
        w01 = tx - w11
        grid[ry, rx] += 1.0 - ty - w01
        grid[ry, rx + 1] += w01
        grid[ry + 1, rx] += w10
        grid[ry + 1, rx + 1] += w11
        added_y += ty - ty * ty
        added_x += tx - tx * tx
    return added_y, added_x


@_jit
def _pixel_weights_into(out, offset, s, half):
    """The 1D pixel-integrated Gaussian of one source (offset from its pixel's centre and sigma in
    pixels) over pixels ``-half..half``, renormalised to unit sum, into ``out``."""
    scale = -1.0 / (s * math.sqrt(2.0))
    low = 0.5 * math.erfc((-half - 0.5 - offset) * scale)
    first = low
    for m in range(2 * half + 1):
        high = 0.5 * math.erfc((m - half + 0.5 - offset) * scale)
        out[m] = high - low
        low = high
    total = low - first
    for m in range(2 * half + 1):
        out[m] /= total


@_jit
def _scatter_direct(padded, by, bx, s, half):
    """Add each localization's own pixel-integrated Gaussian (exact position and sigma, kernel
    ``2 half + 1`` pixels wide) to ``padded`` (the image with ``half`` pixels of margin)."""
    width = 2 * half + 1
    ny = padded.shape[0] - 2 * half
    nx = padded.shape[1] - 2 * half
    wy = np.empty(width)
    wx = np.empty(width)
    for i in range(by.shape[0]):
        jy = min(int(by[i]), ny - 1)
        jx = min(int(bx[i]), nx - 1)
        _pixel_weights_into(wy, by[i] - jy - 0.5, s[i], half)
        _pixel_weights_into(wx, bx[i] - jx - 0.5, s[i], half)
        for a in range(width):
            wa = wy[a]
            for b in range(width):
                padded[jy + a, jx + b] += wa * wx[b]
