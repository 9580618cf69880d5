"""Mollified derivatives of a field on a grid: ``d^k (g * eta) = g * d^k eta``.

The kernel in n dimensions is the tensor product of 1D profiles (see
:mod:`chromflow.mollifier.kernels`), ``eta(y, x) = eta_1(y) eta_1(x)``. Every requested
derivative is therefore a sum of separable terms ``K_a(y) K_b(x)`` (``lap`` = ``K_2 K_0 +
K_0 K_2``; ``biharmonic`` = ``K_4 K_0 + 2 K_2 K_2 + K_0 K_4``), and the terms share passes:
along x the field is convolved once with each distinct x-kernel, then each of those results
with the y-kernels it needs. Cost is a handful of 1D convolutions, whatever the derivative
order and whatever produced ``g``. On small CPU grids each 1D convolution is done as a product
with a banded matrix (``method="matmul"``), which BLAS runs faster.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GridError, InputError
from .kernels import DISCRETIZATIONS, KERNELS, MAX_ORDER, halo, kernel_1d

__all__ = ["derivative", "gradient", "MollifierLayer", "BOUNDARIES", "METHODS", "valid_shape", "expand_order"]

BOUNDARIES = ("valid", "reflect", "zeros", "constant", "mask")
METHODS = ("auto", "direct", "fft", "matmul")
#: ``method="auto"`` switches from direct (separable) convolution to FFT when a 1D kernel is
#: wider than this many samples: on CPU FFT wins from ~35 samples, on an H100 direct
#: convolution was as fast up to 99 (benchmarks/derivatives.py, docs/mollifier.md).
FFT_MIN_WIDTH = 40
FFT_MIN_WIDTH_CUDA = 128
#: on CPU, ``method="auto"`` takes the banded-matrix products (``"matmul"``) for narrow
#: kernels on arrays up to this many samples per axis (padding included): a dense product
#: multiplies ~``n / width`` times more numbers than the convolution, but BLAS runs them faster
#: than the grouped 1D convolutions up to ~128 samples; from ~192 the two tie, then the
#: convolutions win (``benchmarks/derivatives.py --parts layer``, second table; inside a rate
#: fit on a rendered nucleus 11 % less time per step than direct, benchmarks/README.md)
MATMUL_MAX_SIZE = 160

_NAMED = {"lap", "laplacian", "biharmonic", "bilap", "u"}
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


# ---------------------------------------------------------------------------------------------
# orders -> separable terms


def expand_order(order, ndim: int) -> tuple:
    """Write a derivative order as a sum of separable terms ``((coef, (k_0, ..., k_{n-1})), ...)``.

    Parameters
    ----------
    order : int, tuple of int, or {"u", "lap", "laplacian", "biharmonic", "bilap"}
        ``0`` or ``"u"`` is the mollified field; an int ``k`` needs ``ndim == 1``; a tuple gives
        the order per spatial axis in array order ((y, x), (t, x), (z, y, x)).
    ndim : int
        Number of spatial axes.

    Examples
    --------
    >>> expand_order("lap", 2)
    ((1.0, (2, 0)), (1.0, (0, 2)))
    >>> expand_order("biharmonic", 2)
    ((1.0, (4, 0)), (1.0, (0, 4)), (2.0, (2, 2)))
    """
    if isinstance(order, str):
        name = order.lower()
        if name not in _NAMED:
            raise InputError(f"unknown derivative order {order!r}; use an int, a tuple per axis, "
                             "'u', 'lap' or 'biharmonic'")
        if name == "u":
            return ((1.0, (0,) * ndim),)
        unit = [tuple(2 if i == a else 0 for i in range(ndim)) for a in range(ndim)]
        if name in ("lap", "laplacian"):
            return tuple((1.0, t) for t in unit)
        quartic = [tuple(4 if i == a else 0 for i in range(ndim)) for a in range(ndim)]
        mixed = [tuple(2 if i in (a, b) else 0 for i in range(ndim))
                 for a in range(ndim) for b in range(a + 1, ndim)]
        return tuple((1.0, t) for t in quartic) + tuple((2.0, t) for t in mixed)
    if isinstance(order, (int, np.integer)) and not isinstance(order, bool):
        if order == 0:
            return ((1.0, (0,) * ndim),)
        if ndim != 1:
            raise InputError(f"an integer order ({order}) is a derivative along one axis; with ndim={ndim} "
                             f"give a tuple of {ndim} orders, one per axis")
        order = (int(order),)
    if isinstance(order, (tuple, list)):
        if len(order) != ndim or not all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in order):
            raise InputError(f"derivative order {order!r} must be {ndim} integers, one per spatial axis")
        if any(k < 0 or k > MAX_ORDER for k in order):
            raise InputError(f"derivative order {tuple(order)!r}: each axis must be 0..{MAX_ORDER}")
        return ((1.0, tuple(int(k) for k in order)),)
    raise InputError(f"derivative order must be an int, a tuple or a name, got {order!r}")


def _default_ndim(order, tensor_dim: int) -> int:
    if isinstance(order, (tuple, list)):
        return len(order)
    if isinstance(order, str) or order == 0:
        return 2 if tensor_dim >= 2 else 1
    return 1


def _per_axis(value, ndim: int, what: str) -> tuple:
    if isinstance(value, (tuple, list, np.ndarray)):
        values = tuple(float(v) for v in value)
        if len(values) != ndim:
            raise InputError(f"{what} has {len(values)} entries but there are {ndim} spatial axes")
    else:
        values = (float(value),) * ndim
    if not all(np.isfinite(v) and v > 0 for v in values):
        raise InputError(f"{what} must be positive and finite, got {value!r}")
    return values


def _key(order):
    """Dictionary key for an order: as given, lists made hashable."""
    return tuple(order) if isinstance(order, list) else order


# ---------------------------------------------------------------------------------------------
# the plan: which 1D kernels, which terms, which passes


class _Plan:
    """Kernel banks and the separable terms for a set of orders (numpy, float64)."""

    def __init__(self, orders: Sequence, ndim: int, radius: tuple, spacing: tuple, kernel: str,
                 discretization: str):
        if kernel not in KERNELS:
            raise InputError(f"unknown mollifier kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
        if discretization not in DISCRETIZATIONS:
            raise InputError(f"unknown discretization {discretization!r}; choose one of {', '.join(DISCRETIZATIONS)}")
        if ndim not in _CONV:
            raise InputError(f"mollifier derivatives support 1, 2 or 3 spatial axes, got ndim={ndim}")
        self.ndim = ndim
        self.keys = [_key(o) for o in orders]
        if len(set(self.keys)) != len(self.keys):
            raise InputError(f"orders contain duplicates: {orders!r}")
        self.combos = {k: expand_order(k, ndim) for k in self.keys}
        self.terms = sorted({t for combo in self.combos.values() for _, t in combo})
        self.halos = tuple(halo(r / h) for r, h in zip(radius, spacing))
        # per axis: the orders used on it and their kernels (rows), scaled to physical units
        self.axis_orders = []
        self.banks = []
        self._bands = {}          # (axis, n, dtype, device) -> banded matrices of method "matmul"
        for a in range(ndim):
            used = sorted({t[a] for t in self.terms})
            self.axis_orders.append(used)
            self.banks.append(np.stack([kernel_1d(k, radius[a], spacing[a], kernel, discretization) for k in used]))

    @property
    def widths(self) -> tuple:
        return tuple(2 * h + 1 for h in self.halos)

    def pick_method(self, method: str, device_type: str = "cpu", sizes=None) -> str:
        if method not in METHODS:
            raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        if method == "auto":
            limit = FFT_MIN_WIDTH_CUDA if device_type == "cuda" else FFT_MIN_WIDTH
            if max(self.widths) > limit:
                return "fft"
            if device_type == "cpu" and sizes is not None and max(sizes) <= MATMUL_MAX_SIZE:
                return "matmul"
            return "direct"
        return method

    # -- matmul: each 1D pass as a product with a banded (Toeplitz) matrix -----------------------
    def band_matrix(self, axis: int, n: int, dtype, device) -> torch.Tensor:
        """(orders on ``axis``, n, n - 2 halo) matrices: ``x @ M[k]`` is the valid correlation of
        the last axis of ``x`` with the k-th kernel of the axis (the convolution)."""
        key = (axis, n, dtype, str(device))
        cached = self._bands.get(key)
        if cached is None:
            bank = np.asarray(self.banks[axis])
            width = bank.shape[1]
            m = n - width + 1
            if m < 1:
                raise GridError(f"axis of {n} samples is narrower than the kernel ({width} samples)")
            mats = np.zeros((bank.shape[0], n, m))
            cols = np.arange(m)
            for t in range(width):
                # output j reads input j + t with the flipped kernel (a convolution)
                mats[:, cols + t, cols] = bank[:, width - 1 - t][:, None]
            cached = torch.as_tensor(mats, dtype=dtype, device=device)
            if len(self._bands) > 32:
                self._bands.clear()
            self._bands[key] = cached
        return cached

    def matmul(self, x: torch.Tensor) -> dict:
        """``x``: (B, 1, *padded spatial) -> {term: (B, *valid spatial)}: the passes of
        :meth:`direct`, each 1D convolution written as a product with a banded matrix (built
        from the plan's own kernels by :meth:`band_matrix`, in ``x``'s dtype and device)."""
        nd = self.ndim
        channels = {(): 0}
        for a in reversed(range(nd)):
            suffixes = sorted({t[a:] for t in self.terms})
            n = x.shape[2 + a]
            mats = self.band_matrix(a, n, x.dtype, x.device)
            outs, order = [], []
            for row, k in enumerate(self.axis_orders[a]):
                group = [s for s in suffixes if s[0] == k]
                if not group:
                    continue
                src = [channels[s[1:]] for s in group]
                part = x if src == list(range(x.shape[1])) else x[:, src]
                if a == nd - 1:
                    y = part @ mats[row]
                else:
                    # (m, n) @ (..., n, rest): the axis in the middle, no transpose copied
                    shape = part.shape
                    lead, rest = shape[:2 + a], int(np.prod(shape[3 + a:], dtype=np.int64))
                    y = (mats[row].T @ part.reshape(*lead, n, rest)).reshape(*lead, -1, *shape[3 + a:])
                outs.append(y)
                order += group
            if a == 0:
                # the last pass: each term straight from its product, no concatenated copy
                parts = [p for y in outs for p in y.unbind(1)]
                return {t: parts[order.index(t)] for t in self.terms}
            x = outs[0] if len(outs) == 1 else torch.cat(outs, 1)
            channels = {s: i for i, s in enumerate(order)}

    # -- direct: separable grouped convolutions, last axis first --------------------------------
    def direct(self, x: torch.Tensor, banks: Sequence[torch.Tensor]) -> dict:
        """``x``: (B, 1, *padded spatial) -> {term: (B, *valid spatial)}."""
        nd = self.ndim
        conv = _CONV[nd]
        channels = {(): 0}  # suffix of a term (orders on axes a..nd-1) -> channel of x
        for a in reversed(range(nd)):
            suffixes = sorted({t[a:] for t in self.terms})
            src = [channels[s[1:]] for s in suffixes]
            rows = [self.axis_orders[a].index(s[0]) for s in suffixes]
            # conv routines cross-correlate: flip the convolution kernel
            w = banks[a][rows].flip(-1)
            shape = [len(suffixes), 1] + [1] * nd
            shape[2 + a] = w.shape[-1]
            w = w.reshape(shape)
            if x.shape[1] == 1:
                x = conv(x, w)
            else:
                x = conv(x.index_select(1, torch.as_tensor(src, device=x.device)), w, groups=len(suffixes))
            channels = {s: i for i, s in enumerate(suffixes)}
        # one unbind, not a select per term: each select's backward zero-fills a tensor of the
        # whole output (8 per biharmonic call; 1.3 ms of a 8.5 ms forward + backward at 128^2)
        parts = x.unbind(1)
        return {t: parts[channels[t]] for t in self.terms}

    # -- fft: product of 1D spectra ----------------------------------------------------------
    def fft(self, x: torch.Tensor, banks: Sequence[torch.Tensor]) -> dict:
        """``x``: (B, 1, *padded spatial) -> {order key: (B, *valid spatial)}, by circular
        convolution of the padded field (equal to the linear one on the valid region); the
        terms of an order are summed in Fourier space, so each order costs one inverse FFT."""
        nd = self.ndim
        dims = tuple(range(-nd, 0))
        sizes = x.shape[-nd:]
        spectrum = torch.fft.rfftn(x[:, 0], dim=dims)
        axis_spectra = []
        for a in range(nd):
            n, h = sizes[a], self.halos[a]
            bank = banks[a]
            circ = bank.new_zeros(bank.shape[0], n)
            # K[j], j = -h..h, sits at index j mod n
            circ[:, : h + 1] = bank[:, h:]
            circ[:, n - h:] = bank[:, :h]
            spec = torch.fft.rfft(circ, dim=-1) if a == nd - 1 else torch.fft.fft(circ, dim=-1)
            axis_spectra.append(spec)
        crop = (slice(None),) + tuple(slice(h, n - h) for h, n in zip(self.halos, sizes))
        out = {}
        for key, combo in self.combos.items():
            total = None
            for coef, t in combo:
                kern = None
                for a in range(nd):
                    spec = axis_spectra[a][self.axis_orders[a].index(t[a])]
                    spec = spec.reshape([-1 if i == a else 1 for i in range(nd)])
                    kern = spec if kern is None else kern * spec
                kern = kern if coef == 1.0 else coef * kern
                total = kern if total is None else total + kern
            out[key] = torch.fft.irfftn(spectrum * total, s=sizes, dim=dims)[crop]
        return out

    def combine(self, terms: dict) -> dict:
        out = {}
        for key, combo in self.combos.items():
            total = None
            for coef, t in combo:
                part = terms[t] if coef == 1.0 else coef * terms[t]
                total = part if total is None else total + part
            out[key] = total
        return out


@lru_cache(maxsize=64)
def _cached_plan(orders: tuple, ndim: int, radius: tuple, spacing: tuple, kernel: str, discretization: str) -> _Plan:
    return _Plan(orders, ndim, radius, spacing, kernel, discretization)


# ---------------------------------------------------------------------------------------------
# boundaries


def mask_extension_indices(mask: np.ndarray, degree: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Gather indices and weights that extend a field across the edge of ``mask``.

    A point ``p`` outside the mask gets the value at ``p`` of the polynomial of the given degree
    through the field at ``b + j (b - p)``, ``j = 0..degree``, where ``b`` is the nearest inside
    pixel: the points march from ``b`` into the domain along the ray from ``p``. With degree 1
    this is the point reflection ``2 g(b) - g(2b - p)``. The extension is exact for polynomial
    fields of that degree wherever the points stay in the domain (sample points that leave it,
    in thin or concave parts, are snapped to their nearest inside pixel). Inside the mask every
    index is the point itself, so the field is unchanged there.

    Parameters
    ----------
    mask : bool ndarray
        The domain (any number of axes).
    degree : int
        1, 2 or 3. Higher degree: smaller bias near the edge, more noise (sum of the absolute
        weights: 3, 7, 15).

    Returns
    -------
    index : ndarray of int64, shape (degree + 1, mask.size)
        Flat indices into the field for each output point.
    weight : ndarray of float64, shape (degree + 1,)
        Extrapolation weights ``(-1)^j C(degree + 1, j + 1)``.

    Examples
    --------
    >>> index, weight = mask_extension_indices(np.array([False, True, True, True]), degree=1)
    >>> index.tolist(), weight.tolist()
    ([[1, 1, 2, 3], [2, 1, 2, 3]], [2.0, -1.0])
    """
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    if degree not in (1, 2, 3):
        raise InputError(f"mask extension degree must be 1, 2 or 3, got {degree!r}")
    if not mask.any():
        raise GridError("the mask has no pixel inside the domain")
    _, near = ndimage.distance_transform_edt(~mask, return_indices=True)
    here = np.indices(mask.shape)
    index = []
    for j in range(degree + 1):
        point = (j + 1) * near - j * here
        for a, n in enumerate(mask.shape):
            np.clip(point[a], 0, n - 1, out=point[a])
        point = near[(slice(None),) + tuple(point)]  # snap points that left the domain back inside
        index.append(np.ravel_multi_index(tuple(point), mask.shape).ravel())
    weight = np.array([(-1) ** j * math.comb(degree + 1, j + 1) for j in range(degree + 1)], dtype=np.float64)
    return np.stack(index).astype(np.int64), weight


def _check_size(sizes, halos, boundary):
    for n, h in zip(sizes, halos):
        if boundary == "valid" and n - 2 * h < 1:
            raise GridError(f"grid of {tuple(sizes)} cells leaves no valid region for a kernel of half-width "
                            f"{h} cells (need more than {2 * h} cells per axis); pad the grid or use a smaller radius")
        if boundary in ("reflect", "mask") and n <= h:
            raise GridError(f"grid of {tuple(sizes)} cells is too small to reflect a kernel of half-width "
                            f"{h} cells (need more than {h} cells per axis)")


def _prepare(x: torch.Tensor, halos: tuple, boundary: str, extension=None) -> torch.Tensor:
    """Pad ``x`` (B, 1, *spatial) for the boundary mode so that a valid convolution fits."""
    _check_size(x.shape[2:], halos, boundary)
    if boundary == "valid":
        return x
    if boundary == "mask":
        index, weight = extension
        flat = x.reshape(x.shape[0], 1, -1)
        ext = None
        for j in range(index.shape[0]):
            part = weight[j] * flat.index_select(2, index[j])
            ext = part if ext is None else ext + part
        x = ext.reshape(x.shape)
    pad = []
    for h in reversed(halos):
        pad += [h, h]
    if boundary in ("reflect", "mask"):
        return F.pad(x, pad, mode="reflect")
    return F.pad(x, pad, mode="constant", value=0.0)


def _check_boundary(boundary: str, mask, spatial_shape) -> None:
    if boundary not in BOUNDARIES:
        raise InputError(f"unknown boundary {boundary!r}; choose one of {', '.join(BOUNDARIES)}")
    if boundary == "mask":
        if mask is None:
            raise InputError("boundary='mask' needs a mask (bool array of the spatial shape)")
        if tuple(np.shape(mask)) != tuple(spatial_shape):
            raise InputError(f"mask of shape {tuple(np.shape(mask))} does not match the spatial shape "
                             f"{tuple(spatial_shape)}")


def valid_shape(shape: Sequence[int], radius, spacing=1.0) -> tuple:
    """Spatial shape left by ``boundary="valid"``: each axis loses ``halo`` cells on both sides.

    Examples
    --------
    >>> valid_shape((64, 64), radius=5)
    (52, 52)
    """
    nd = len(shape)
    radius = _per_axis(radius, nd, "radius")
    spacing = _per_axis(spacing, nd, "spacing")
    return tuple(n - 2 * halo(r / h) for n, r, h in zip(shape, radius, spacing))


def _mask_array(mask) -> np.ndarray:
    """A bool numpy copy of a mask given as an array or a (possibly CUDA) tensor."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    return np.asarray(mask, dtype=bool)


def _as_float(u) -> torch.Tensor:
    if not isinstance(u, torch.Tensor):
        u = torch.as_tensor(np.asarray(u))
    if not u.is_floating_point():
        u = u.to(torch.get_default_dtype())
    return u


def _run(plan: _Plan, u: torch.Tensor, banks, boundary: str, method: str, extension, mask_t) -> dict:
    nd = plan.ndim
    if u.dim() < nd:
        raise InputError(f"field of shape {tuple(u.shape)} has fewer than {nd} spatial axes")
    lead, spatial = u.shape[:-nd], u.shape[-nd:]
    x = u.reshape((-1, 1) + tuple(spatial))
    x = _prepare(x, plan.halos, boundary, extension)
    how = plan.pick_method(method, u.device.type, tuple(x.shape[2:]))
    if how == "fft":
        out = plan.fft(x, banks)
    else:
        out = plan.combine(plan.direct(x, banks) if how == "direct" else plan.matmul(x))
    result = {}
    for key, val in out.items():
        if mask_t is not None:
            val = val * mask_t
        result[key] = val.reshape(tuple(lead) + tuple(val.shape[1:]))
    return result


# ---------------------------------------------------------------------------------------------
# public functions


def derivative(u, order, radius, spacing=1.0, kernel: str = "bump", boundary: str = "reflect", mask=None,
               method: str = "auto", ndim: int | None = None, discretization: str = "auto",
               mask_degree: int = 2) -> torch.Tensor:
    """Mollified derivative ``d^order (u * eta_delta)`` of a field on a regular grid.

    Parameters
    ----------
    u : torch.Tensor or array_like, shape (..., *spatial)
        Field samples; the last ``ndim`` axes are spatial, in array order ((y, x), (t, x),
        (z, y, x)). Device and floating dtype follow ``u``; autograd flows through.
    order : int, tuple of int, or {"u", "lap", "biharmonic"}
        ``k`` (int): k-th derivative along the last axis (``ndim`` 1). A tuple: order per spatial
        axis, e.g. ``(2, 0)`` is d2/dy2 and ``(1, 1)`` d2/dydx in 2D. ``0`` or ``"u"``: the
        mollified field. ``"lap"``: Laplacian; ``"biharmonic"``: ``lap(lap(.))``. Each axis 0..4.
    radius : float or tuple of float
        Kernel support radius ``delta``, in the units of ``spacing`` (grid cells when ``spacing``
        is 1), per axis if a tuple. At least 2 grid cells.
    spacing : float or tuple of float
        Grid spacing per axis (e.g. nm per pixel). Derivatives are per unit of ``spacing``
        (scaled by ``spacing**-k``).
    kernel : {"bump", "polynomial", "gaussian"}
        1D profile of the tensor-product kernel.
    boundary : {"reflect", "valid", "zeros", "constant", "mask"}
        ``"valid"``: no padding, each spatial axis shrinks by ``2 * halo`` (see
        :func:`valid_shape`). ``"reflect"``: mirror the field at the array edges (odd derivatives
        are biased towards 0 within ``radius`` of an edge). ``"zeros"``/``"constant"``: zero
        padding. ``"mask"``: the field outside ``mask`` is replaced by its point reflection
        ``2 u(b) - u(2b - p)`` through the nearest inside pixel ``b`` (exact for linear fields),
        and the result is set to 0 outside the mask.
    mask : bool array of the spatial shape, optional
        Domain for ``boundary="mask"``.
    method : {"auto", "direct", "fft", "matmul"}
        Separable direct convolution, FFT, or the direct passes as products with banded
        matrices; ``"auto"`` takes FFT for kernels wider than ``FFT_MIN_WIDTH`` (40) samples on
        CPU, ``FFT_MIN_WIDTH_CUDA`` (128) on CUDA, else on CPU ``"matmul"`` for arrays of at
        most ``MATMUL_MAX_SIZE`` (160) samples per axis, else direct. All agree to rounding.
    ndim : int, optional
        Number of spatial axes. Default: ``len(order)`` for a tuple; 1 for a nonzero int; for
        ``0``, ``"u"``, ``"lap"``, ``"biharmonic"`` it is 2 (1 for a 1D tensor): pass ``ndim=3``
        for volumes.
    discretization : {"auto", "analytic", "difference"}
        Sampling of derivative kernels (see :mod:`chromflow.mollifier.kernels`).

    Returns
    -------
    torch.Tensor
        Shape ``(..., *spatial)``, or the valid shape for ``boundary="valid"``.

    Raises
    ------
    GridError
        Radius under 2 grid cells, or a grid too small for the kernel.
    InputError
        Unknown order, kernel, boundary or method; a mask of the wrong shape.

    Examples
    --------
    The second derivative of ``x^2 / 2`` is 1 (exactly: the kernels have exact moments):

    >>> x = torch.arange(40, dtype=torch.float64)
    >>> d2 = derivative(0.5 * x**2, 2, radius=5, boundary="valid")
    >>> bool(torch.allclose(d2, torch.ones_like(d2)))
    True

    Physical units: a Laplacian in 1/nm^2 on a 50 nm grid with a 300 nm kernel:

    >>> u = torch.rand(64, 64, dtype=torch.float64)
    >>> derivative(u, "lap", radius=300.0, spacing=50.0).shape
    torch.Size([64, 64])
    """
    u = _as_float(u)
    if ndim is None:
        ndim = _default_ndim(order, u.dim())
    ndim = int(ndim)
    if u.dim() < ndim:
        raise InputError(f"field of shape {tuple(u.shape)} has fewer than {ndim} spatial axes")
    spatial = tuple(u.shape[-ndim:])
    _check_boundary(boundary, mask, spatial)
    radius_t = _per_axis(radius, ndim, "radius")
    spacing_t = _per_axis(spacing, ndim, "spacing")
    key = _key(order)
    plan = _cached_plan((key,), ndim, radius_t, spacing_t, kernel, discretization)
    banks = [torch.as_tensor(b, dtype=u.dtype, device=u.device) for b in plan.banks]
    extension = mask_t = None
    if boundary == "mask":
        mask_np = _mask_array(mask)
        index, weight = mask_extension_indices(mask_np, mask_degree)
        extension = (torch.as_tensor(index, device=u.device), tuple(float(w) for w in weight))
        mask_t = torch.as_tensor(mask_np, dtype=u.dtype, device=u.device)
    return _run(plan, u, banks, boundary, method, extension, mask_t)[key]


def gradient(u, radius, spacing=1.0, ndim: int | None = None, **options) -> tuple:
    """Mollified gradient: one tensor per spatial axis, in array order ((d/dy, d/dx) in 2D).

    ``ndim`` defaults to 2 (1 for a 1D tensor); ``options`` are those of :func:`derivative`.

    Examples
    --------
    >>> y, x = torch.meshgrid(torch.arange(30.0), torch.arange(30.0), indexing="ij")
    >>> dy, dx = gradient(3 * y + 2 * x, radius=4, boundary="valid")
    >>> bool(torch.allclose(dy, torch.tensor(3.0))), bool(torch.allclose(dx, torch.tensor(2.0)))
    (True, True)
    """
    u = _as_float(u)
    if ndim is None:
        ndim = 2 if u.dim() >= 2 else 1
    orders = [tuple(1 if i == a else 0 for i in range(ndim)) for a in range(ndim)]
    layer = MollifierLayer(radius, orders=orders, ndim=ndim, spacing=spacing, **options)
    layer = layer.to(u.device)
    out = layer(u)
    return tuple(out[o] for o in orders)


class MollifierLayer(nn.Module):
    """Mollified field and derivatives of a grid field in one pass: ``g -> {order: g * d^order eta}``.

    The 1D kernel banks are computed once (float64 buffers, cast to the input's dtype in
    ``forward``); separable terms share passes (along x each distinct x-kernel is applied
    once, then the y-kernels to those results), so ``("u", "lap", "biharmonic")`` costs 3 x-passes
    and 5 y-passes of 1D kernels, whatever network produced ``g``.

    Parameters
    ----------
    radius : float or tuple of float
        Kernel support radius in the units of ``spacing`` (grid cells when ``spacing`` is 1).
    orders : sequence
        Orders as in :func:`derivative` (``"u"``, ``"lap"``, ``"biharmonic"``, tuples per
        axis, ints for ``ndim=1``). They are the keys of the output dict.
    ndim : int
        Number of spatial axes (the last ``ndim`` axes of the input).
    spacing : float or tuple of float
        Grid spacing per axis; derivatives per unit of spacing.
    kernel : {"bump", "polynomial", "gaussian"}
    boundary : {"valid", "reflect", "zeros", "constant", "mask"}
        ``"valid"`` (default) shrinks each axis by ``2 * halo`` cells: evaluate the network on
        a grid padded by ``self.halo`` cells to get derivatives on the grid you care about.
    method : {"auto", "direct", "fft", "matmul"}
        See :func:`derivative`.
    mask : bool array, optional
        Domain for ``boundary="mask"`` (its shape fixes the spatial shape).
    discretization : {"auto", "analytic", "difference"}

    Examples
    --------
    >>> layer = MollifierLayer(radius=4, orders=("u", "lap", "biharmonic"))
    >>> layer.halo
    (5, 5)
    >>> out = layer(torch.zeros(2, 1, 32, 32))
    >>> sorted(out), tuple(out["lap"].shape)
    (['biharmonic', 'lap', 'u'], (2, 1, 22, 22))
    """

    def __init__(self, radius, orders: Iterable = ("u", "lap", "biharmonic"), ndim: int = 2, spacing=1.0,
                 kernel: str = "bump", boundary: str = "valid", method: str = "auto", mask=None,
                 discretization: str = "auto", mask_degree: int = 2):
        super().__init__()
        ndim = int(ndim)
        orders = tuple(_key(o) for o in orders)
        if not orders:
            raise InputError("MollifierLayer needs at least one order")
        if boundary not in BOUNDARIES:
            raise InputError(f"unknown boundary {boundary!r}; choose one of {', '.join(BOUNDARIES)}")
        if method not in METHODS:
            raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        self.radius = _per_axis(radius, ndim, "radius")
        self.spacing = _per_axis(spacing, ndim, "spacing")
        self.ndim = ndim
        self.orders = orders
        self.kernel = kernel
        self.boundary = boundary
        self.method = method
        self.discretization = discretization
        self.mask_degree = mask_degree
        self._gradient_layer = None
        self._plan = _Plan(orders, ndim, self.radius, self.spacing, kernel, discretization)
        for a, bank in enumerate(self._plan.banks):
            self.register_buffer(f"bank{a}", torch.as_tensor(bank, dtype=torch.float64), persistent=False)
        self._mask_shape = None
        if boundary == "mask":
            if mask is None:
                raise InputError("boundary='mask' needs a mask (bool array of the spatial shape)")
            mask_np = _mask_array(mask)
            if mask_np.ndim != ndim:
                raise InputError(f"mask of shape {mask_np.shape} does not have {ndim} spatial axes")
            index, weight = mask_extension_indices(mask_np, mask_degree)
            self._mask_shape = mask_np.shape
            self._mask_weight = tuple(float(w) for w in weight)
            self.register_buffer("mask_index", torch.as_tensor(index), persistent=False)
            self.register_buffer("mask", torch.as_tensor(mask_np), persistent=False)

    @property
    def halo(self) -> tuple:
        """Kernel half-width per axis in cells (cells lost per side with ``boundary="valid"``)."""
        return self._plan.halos

    def output_shape(self, spatial_shape: Sequence[int]) -> tuple:
        """Spatial shape of the outputs for an input of ``spatial_shape``."""
        if self.boundary != "valid":
            return tuple(spatial_shape)
        return tuple(n - 2 * h for n, h in zip(spatial_shape, self.halo))

    def forward(self, g) -> dict:
        g = _as_float(g)
        if g.dim() < self.ndim:
            raise InputError(f"field of shape {tuple(g.shape)} has fewer than {self.ndim} spatial axes")
        spatial = tuple(g.shape[-self.ndim:])
        extension = mask_t = None
        if self.boundary == "mask":
            if spatial != tuple(self._mask_shape):
                raise InputError(f"field of spatial shape {spatial} does not match the mask {tuple(self._mask_shape)}")
            extension = (self.mask_index, self._mask_weight)
            mask_t = self.mask.to(g.dtype)
        banks = [getattr(self, f"bank{a}").to(g.dtype) for a in range(self.ndim)]
        return _run(self._plan, g, banks, self.boundary, self.method, extension, mask_t)

    def gradient(self, g) -> tuple:
        """Gradient of the mollified field, one tensor per axis (array order), same settings."""
        orders = [tuple(1 if i == a else 0 for i in range(self.ndim)) for a in range(self.ndim)]
        if all(o in self._plan.keys for o in orders):
            out = self(g)
        else:
            if self._gradient_layer is None:
                mask = None if self.boundary != "mask" else self.mask.cpu().numpy()
                sub = MollifierLayer(self.radius, orders, self.ndim, self.spacing, self.kernel, self.boundary,
                                     self.method, mask, self.discretization, self.mask_degree)
                # built once and kept out of the module tree (no duplicate entries in repr or .modules())
                object.__setattr__(self, "_gradient_layer", sub)
            sub = self._gradient_layer
            if sub.bank0.device != self.bank0.device:
                sub.to(self.bank0.device)
            out = sub(g)
        return tuple(out[o] for o in orders)

    def extra_repr(self) -> str:
        return (f"radius={self.radius}, orders={self.orders}, ndim={self.ndim}, spacing={self.spacing}, "
                f"kernel={self.kernel!r}, boundary={self.boundary!r}, method={self.method!r}")
