"""A held-out simulator of chromatin steady states and STORM data, independent of ``chromflow.simulate``.

Why a second simulator: ``chromflow.simulate`` (5-point finite volumes + Newton on a masked grid,
no-flux faces on the mask outline) shares its assumptions with the inference (a sharp nucleus
edge with no flux, cell-centred fields). Benchmarks that only ever see its output cannot show
what breaks on data that do not share them. This module solves the same continuum model by a
different method, on a finer grid, with a different nucleus edge, and has its own labelling
model. Nothing here imports ``chromflow.simulate``; the inference is only ever given what an
experiment would give.

Model (Kant et al. 2024; lengths in um, time in 1 / Gamma_ac)::

    d phi_d / dt = lap mu_d + 2 (lambda phi_e - phi_h),
    mu_d = -phi_e + F(phi_h) - l^2 lap phi_d,   F(p) = p (phi_max - p)(phi_max - 2 p)

with ``phi_h = (phi_t + phi_d) / 2``, ``phi_e = (phi_t - phi_d) / 2`` and total chromatin
``phi_t`` fixed (``phi_max = 0.7``, ``l = 0.03`` um).

Solver (pseudo-spectral, preconditioned fixed point)
----------------------------------------------------
Derivatives are spectral on a uniform fine grid (default 10 nm): FFT for a periodic box, the
orthonormal DCT-II for a box with no-flux walls (cosine series: zero normal derivative on the
box faces, which lie half a cell outside the first and last samples). The steady equation
``G(phi_d) = 0`` is solved by the iteration::

    phi_d <- phi_d + P^{-1} G(phi_d),   P(k) = A k^2 + l^2 k^4 + B

accelerated by Anderson mixing (depth 10). ``P`` is a constant-coefficient model of
``-dG/dphi_d`` (symbol ``c k^2 + l^2 k^4 + lambda + 1`` with ``c = 1/2 + F'(phi_h)/2``), diagonal in the spectral basis; ``A`` and ``B`` are the
mid-ranges of ``c`` and ``lambda + 1``, which minimise the worst contraction factor
``max(|c - A| / A, |lambda + 1 - B| / B) < 1`` (``c`` stays in [0.38, 0.75] for ``phi_h`` in
[0, 0.7]: the model is linearly stable). It stops when the max-norm of ``G`` (same units as
``d phi_d / dt``) is below ``tol`` (default 1e-8), evaluated with the same spectral operators.

Geometry
--------
* ``"nucleus"`` (no-flux box): a star-shaped nucleus with a smooth random outline; total
  chromatin ``phi_t = phi_t_in(x) * (1 - tanh(s / w)) / 2 + floor`` with ``s`` the (first-order)
  signed distance to the outline in um, so ``phi_t`` falls from its nuclear level to ``floor``
  (0.005) over about ``2.2 w`` (10 %-90 %; ``w = 0.02`` um gives 44 nm). No sharp edge anywhere.
  Chromatin cannot cross the nuclear envelope: ``edge="closed"`` (default) imposes this the
  diffuse-domain way, with a mobility ``M`` in ``div(M grad mu_d)`` that is 1 inside and
  falls to 0.01 outside, its tanh edge ``2 w`` inside the chromatin edge (so ``M = 1`` to
  within 2 % from 80 nm inside the outline and to within 2e-5 from 150 nm: deeper inside, the
  model is exactly chromflow's). ``edge="open"`` keeps ``M = 1`` everywhere: the order parameter then
  leaks into the chromatin-free outside, which makes a ~0.5 um boundary layer (``phi_h/phi_e``
  up to 2 ``lambda``) and ``phi_h < 0`` outside; kept to show that effect, not used by default.
  With either edge the bulk free energy has no entropy term, so ``phi_h`` dips below 0 in the
  thin band where ``phi_t`` falls (to about -0.08 at worst with the defaults); the labelling
  clips it at 0.
* ``"tissue"`` (periodic box): ``lambda`` and ``phi_t`` vary everywhere; a nucleus-shaped
  region is *cut out* for inference. The physics continues across its outline, which is
  therefore not a no-flux boundary.

Rate maps: log-normal ``lambda = m exp(a g - a^2 / 2)`` with ``g`` a unit Gaussian random field
of Gaussian covariance ``exp(-r^2 / (2 L^2))``: ``"smooth"`` (``L = 1`` um) and ``"domain"``
(``L = 0.3`` um, the reaction-diffusion length, where transport matters).

Labelling model (end to end)
----------------------------
Molecules of each mark are placed with probability proportional to ``phi_h`` (channel 0) or
``phi_e`` (channel 1) on the fine grid, uniformly inside a fine cell, with one labelling
density per unit volume fraction for both marks. Each molecule gives ``K`` localizations, ``K``
geometric with mean ``blinks`` (>= 1), in a run of frames from a uniform first frame with
geometric gaps (mean 1.5). With ``bursts`` > 1 (returning dyes, as in dSTORM or DNA-PAINT) a
molecule gives a geometric number of such runs (mean ``bursts``), each from its own uniform
first frame, so its localizations are spread over the whole acquisition; the number of molecules
shrinks by the same factor (the expected number of localizations is kept). Each localization has its own photon count ``N`` (log-normal,
median ``photons``, log-sd 0.7) and precision ``sigma_loc = psf * sqrt(2 / N)`` (the leading
Thompson term with the EMCCD excess-noise factor 2); its position is the molecule's plus
Gaussian noise of that sd. A share ``background`` of all localizations is uniform over the
field of view, in either channel at random. The table is written as a ThunderSTORM CSV
(quoted header with units, one row per localization, sorted by frame) with a ``channel``
column (0 heterochromatin mark, 1 euchromatin mark).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import fft as sfft
from scipy import ndimage

PHI_MAX = 0.7
LENGTH_UM = 0.03
#: correlation lengths (um) of the two rate-map families
RATE_LENGTHS_UM = {"smooth": 1.0, "domain": 0.3}


# ----------------------------------------------------------------------------------------------
# spectral operators
# ----------------------------------------------------------------------------------------------
class Spectral:
    """Forward/inverse transform and the Laplacian symbol ``-k^2`` of a box.

    Parameters
    ----------
    shape : (ny, nx)
        Samples.
    spacing_um : float
        Sample spacing.
    boundary : {"periodic", "noflux"}
        FFT (periodic) or orthonormal DCT-II (zero normal derivative at the box faces).
    """

    def __init__(self, shape, spacing_um: float, boundary: str):
        ny, nx = (int(s) for s in shape)
        self.shape, self.h, self.boundary = (ny, nx), float(spacing_um), boundary
        if boundary == "periodic":
            ky = 2 * np.pi * np.fft.fftfreq(ny, self.h)[:, None]
            kx = 2 * np.pi * np.fft.rfftfreq(nx, self.h)[None, :]
        elif boundary == "noflux":
            ky = np.pi * np.arange(ny)[:, None] / (ny * self.h)
            kx = np.pi * np.arange(nx)[None, :] / (nx * self.h)
        else:
            raise ValueError(f"boundary must be 'periodic' or 'noflux', got {boundary!r}")
        self.k2 = ky ** 2 + kx ** 2

    def forward(self, a):
        if self.boundary == "periodic":
            return sfft.rfft2(a)
        return sfft.dctn(a, type=2, norm="ortho")

    def inverse(self, a_hat):
        if self.boundary == "periodic":
            return sfft.irfft2(a_hat, s=self.shape)
        return sfft.idctn(a_hat, type=2, norm="ortho")

    def laplacian(self, a):
        return self.inverse(-self.k2 * self.forward(a))


def bulk(p, derivative: int = 0):
    """``F(p) = p (phi_max - p)(phi_max - 2 p)`` and its first derivative."""
    m = PHI_MAX
    if derivative == 0:
        return p * (m - p) * (m - 2 * p)
    return m * m - 6 * m * p + 6 * p * p


def steady_residual(phi_d, total, rate, op: Spectral, length_um: float = LENGTH_UM, mobility=None,
                    lap_mobility=None):
    """``G = div(M grad mu_d) + 2 (lambda phi_e - phi_h)`` with spectral derivatives (0 at steady state).

    ``M = 1`` (``mobility=None``) is the chromflow model, ``lap mu_d``. A variable mobility is
    applied through Laplacians only, ``div(M grad mu) = (lap(M mu) + M lap mu - mu lap M) / 2``.
    """
    mu = -0.5 * (total - phi_d) + bulk(0.5 * (total + phi_d)) - length_um ** 2 * op.laplacian(phi_d)
    if mobility is None:
        transport = op.laplacian(mu)
    else:
        if lap_mobility is None:
            lap_mobility = op.laplacian(mobility)
        transport = 0.5 * (op.laplacian(mobility * mu) + mobility * op.laplacian(mu) - mu * lap_mobility)
    return transport + (rate - 1.0) * total - (rate + 1.0) * phi_d


def solve_steady(rate, total, spacing_um: float, boundary: str = "noflux", tol: float = 1e-8,
                 max_iter: int = 3000, length_um: float = LENGTH_UM, mobility=None, memory: int = 10):
    """Steady ``phi_h, phi_e`` for a rate map by a preconditioned, Anderson-accelerated fixed point.

    The fixed-point map is ``phi_d -> phi_d + P^{-1} G(phi_d)`` (module docstring); Anderson
    acceleration (type II, ``memory`` last iterates, Walker & Ni 2011) speeds it up where the
    mobility varies (the contraction factor of the plain map is then close to 1 outside the
    nucleus).

    Parameters
    ----------
    rate, total : (ny, nx) ndarray
        ``lambda > 0`` and ``phi_t`` in [0, 1] on every sample of the box.
    spacing_um : float
        Sample spacing.
    boundary : {"noflux", "periodic"}
    tol : float
        Stop when ``max |G| < tol``.
    max_iter : int
    mobility : (ny, nx) ndarray, optional
        ``M`` in ``div(M grad mu_d)``; None: 1 everywhere.
    memory : int
        Anderson depth (0: plain fixed point).

    Returns
    -------
    phi_h, phi_e : ndarray
    info : dict
        ``residual`` (max-norm of ``G`` at the end), ``iterations``, ``seconds``, ``history``,
        ``converged``.
    """
    rate = np.asarray(rate, dtype=np.float64)
    total = np.asarray(total, dtype=np.float64)
    if np.any(rate <= 0) or not np.all(np.isfinite(rate)):
        raise ValueError("rate must be finite and > 0 everywhere in the box")
    op = Spectral(rate.shape, spacing_um, boundary)
    start = time.perf_counter()
    p = np.linspace(0.0, float(total.max()), 513)
    c = 0.5 + 0.5 * bulk(p, 1)
    A = 0.5 * (c.min() + c.max())
    B = 0.5 * (rate.min() + rate.max()) + 1.0
    precond = A * op.k2 + length_um ** 2 * op.k2 ** 2 + B
    lap_m = None if mobility is None else op.laplacian(mobility)
    d = total * (rate - 1.0) / (rate + 1.0)  # local reaction equilibrium
    history = []
    dx_hist, df_hist = [], []
    f_old = d_old = None
    for it in range(max_iter + 1):
        g = steady_residual(d, total, rate, op, length_um, mobility, lap_m)
        history.append(float(np.abs(g).max()))
        if history[-1] < tol or not np.isfinite(history[-1]) or it == max_iter:
            break
        if it > 200 and min(history[-200:]) >= min(history[:-200]):
            break  # no new best in 200 iterations: stagnation (round-off floor)
        f = op.inverse(op.forward(g) / precond)  # fixed-point step
        if memory and f_old is not None:
            dx_hist.append((d - d_old).ravel())
            df_hist.append((f - f_old).ravel())
            if len(dx_hist) > memory:
                dx_hist.pop(0)
                df_hist.pop(0)
        d_old, f_old = d, f
        if memory and dx_hist:
            dF = np.stack(df_hist, axis=1)
            gamma = np.linalg.lstsq(dF, f.ravel(), rcond=None)[0]
            step = f.ravel() - (np.stack(dx_hist, axis=1) + dF) @ gamma
            d = d + step.reshape(d.shape)
        else:
            d = d + f
    info = {"residual": history[-1], "iterations": len(history) - 1, "seconds": time.perf_counter() - start,
            "history": history, "converged": history[-1] < tol}
    return 0.5 * (total + d), 0.5 * (total - d), info


# ----------------------------------------------------------------------------------------------
# random inputs
# ----------------------------------------------------------------------------------------------
def gaussian_field(shape, spacing_um: float, length_um: float, rng) -> np.ndarray:
    """Zero-mean, unit-sd periodic Gaussian random field, covariance ``exp(-r^2 / (2 L^2))``."""
    ny, nx = shape
    noise = rng.standard_normal(shape)
    ky = 2 * np.pi * np.fft.fftfreq(ny, spacing_um)[:, None]
    kx = 2 * np.pi * np.fft.rfftfreq(nx, spacing_um)[None, :]
    g = np.fft.irfft2(np.fft.rfft2(noise) * np.exp(-0.25 * length_um ** 2 * (ky ** 2 + kx ** 2)), s=shape)
    g -= g.mean()
    return g / g.std()


def outline(shape, spacing_um: float, semi_axes_um=(2.2, 2.8), rng=None, roughness: float = 0.06):
    """Signed distance (um, < 0 inside) to a smooth random star-shaped outline at the box centre.

    ``r(t) = R(t) (1 + roughness * s(t))``, ``R`` the ellipse of ``semi_axes_um`` (y, x) rotated
    by a random angle and ``s`` a sum of Fourier modes 2-6 (amplitude ~ 1/k) scaled to max 1.
    The distance is ``(rho - r(t)) / sqrt(1 + (r'(t) / r)^2)``, exact to first order near the
    outline (and smooth everywhere but the centre).
    """
    ny, nx = shape
    y = (np.arange(ny) - (ny - 1) / 2) * spacing_um
    x = (np.arange(nx) - (nx - 1) / 2) * spacing_um
    yy, xx = np.meshgrid(y, x, indexing="ij")
    rho = np.hypot(yy, xx)
    t = np.arctan2(yy, xx)
    angle = rng.uniform(0, np.pi)
    ks = np.arange(2, 7)
    amp = rng.standard_normal(ks.size) / ks
    phase = rng.uniform(0, 2 * np.pi, ks.size)
    tt = np.linspace(0, 2 * np.pi, 2048, endpoint=False)
    scale = np.abs((amp[:, None] * np.cos(ks[:, None] * tt + phase[:, None])).sum(0)).max()
    amp = amp / scale
    ay, ax = semi_axes_um

    def radius(theta):
        phi = theta - angle
        ell = 1.0 / np.sqrt((np.cos(phi) / ax) ** 2 + (np.sin(phi) / ay) ** 2)
        mod = (amp[:, None] * np.cos(ks[:, None] * theta.ravel() + phase[:, None])).sum(0).reshape(theta.shape)
        return ell * (1 + roughness * mod)

    r = radius(t)
    eps = 1e-4
    dr = (radius(t + eps) - radius(t - eps)) / (2 * eps)
    return (rho - r) / np.sqrt(1 + (dr / r) ** 2)


@dataclass
class HeldoutNucleus:
    """One simulated steady state on the fine grid (lengths in nm at this interface).

    Attributes
    ----------
    phi_h, phi_e, rate, total : ndarray
        Fine-grid fields (``rate`` everywhere in the box).
    inside : ndarray of bool
        The nucleus (signed distance < 0): the region the truth is defined on.
    spacing_nm : float
        Fine-grid spacing.
    geometry : {"nucleus", "tissue"}
    info : dict
        Solver report (``residual``, ``iterations``, ``seconds``) and the parameters.
    """

    phi_h: np.ndarray
    phi_e: np.ndarray
    rate: np.ndarray
    total: np.ndarray
    inside: np.ndarray
    spacing_nm: float
    geometry: str
    info: dict = field(default_factory=dict)

    def truth_image(self):
        """The true rate as a ``chromflow.Image`` (NaN outside the nucleus), origin at the first sample."""
        from chromflow import Image

        h = self.spacing_nm
        return Image(np.where(self.inside, self.rate, np.nan), pixel_size=h, origin=(h / 2, h / 2))

    def cell_fields(self, cell_nm: float):
        """Block averages on cells of ``cell_nm`` (an integer multiple of the fine spacing).

        Returns ``phi_h, phi_e, rate, mask, spacing_nm, origin_nm``; a cell is in the mask when
        more than half of it is inside the nucleus (the partial-volume cells of the outline are
        averages across it, like real data).
        """
        f = cell_nm / self.spacing_nm
        if abs(f - round(f)) > 1e-9 or round(f) < 1:
            raise ValueError(f"cell {cell_nm} nm is not a multiple of the fine spacing {self.spacing_nm} nm")
        f = int(round(f))
        ny, nx = (s // f for s in self.phi_h.shape)

        def block(a):
            return a[:ny * f, :nx * f].reshape(ny, f, nx, f).mean(axis=(1, 3))

        origin = ((f - 1) / 2 * self.spacing_nm + self.spacing_nm / 2,) * 2
        return (block(self.phi_h), block(self.phi_e), block(self.rate), block(self.inside.astype(float)) > 0.5,
                float(cell_nm), origin)

    def save(self, path):
        # a temporary name of this process's own: two benchmark processes may simulate the same
        # nucleus at once (a field case and an end-to-end case share it)
        tmp = Path(f"{path}.{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, phi_h=self.phi_h, phi_e=self.phi_e, rate=self.rate, total=self.total,
                            inside=self.inside, spacing_nm=self.spacing_nm, geometry=self.geometry,
                            info=json.dumps(self.info))
        tmp.replace(path)

    @classmethod
    def load(cls, path):
        with np.load(path, allow_pickle=False) as z:
            return cls(z["phi_h"], z["phi_e"], z["rate"], z["total"], z["inside"], float(z["spacing_nm"]),
                       str(z["geometry"]), json.loads(str(z["info"])))


def simulate(geometry: str = "nucleus", rate_kind: str = "smooth", seed: int = 0, box_um: float = 6.4,
             spacing_nm: float = 10.0, semi_axes_um=(2.2, 2.8), rate_mean: float = 1.2,
             rate_amplitude: float = 0.4, total_mean: float = 0.5, total_amplitude: float = 0.08,
             total_length_um: float = 1.5, edge_width_um: float = 0.02, floor: float = 0.005,
             edge: str = "closed", mobility_floor: float = 1e-2, tol: float = 1e-8,
             cache_dir=None) -> HeldoutNucleus:
    """A steady state with a known rate map: ``"nucleus"`` (no-flux box, diffuse edge) or ``"tissue"``.

    Parameters
    ----------
    geometry : {"nucleus", "tissue"}
    rate_kind : {"smooth", "domain"}
        Correlation length of ``log lambda``: 1 um or 0.3 um.
    seed : int
        Seed of the outline, the rate map and the total-chromatin map.
    box_um, spacing_nm : float
        Square box side and fine-grid spacing.
    semi_axes_um : (float, float)
        Nucleus semi-axes before the random outline (the default gives ~20 um^2).
    rate_mean, rate_amplitude : float
        Mean of ``lambda`` and sd of ``log lambda``.
    total_mean, total_amplitude, total_length_um : float
        Nuclear total chromatin: mean, relative sd, correlation length.
    edge_width_um, floor : float
        Diffuse edge: ``tanh`` width and the outside level of ``phi_t`` (geometry "nucleus").
    tol : float
        Target steady residual.
    cache_dir : path, optional
        Reuse a result saved there under a key of all parameters.
    """
    params = dict(geometry=geometry, rate_kind=rate_kind, seed=int(seed), box_um=box_um, spacing_nm=spacing_nm,
                  semi_axes_um=list(semi_axes_um), rate_mean=rate_mean, rate_amplitude=rate_amplitude,
                  total_mean=total_mean, total_amplitude=total_amplitude, total_length_um=total_length_um,
                  edge_width_um=edge_width_um, floor=floor, edge=edge, mobility_floor=mobility_floor, tol=tol,
                  version=1)
    path = None
    if cache_dir is not None:
        key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
        path = Path(cache_dir) / f"heldout_{geometry}_{rate_kind}_s{seed}_{key}.npz"
        if path.is_file():
            return HeldoutNucleus.load(path)
    if rate_kind not in RATE_LENGTHS_UM:
        raise ValueError(f"rate_kind must be one of {sorted(RATE_LENGTHS_UM)}, got {rate_kind!r}")
    rng = np.random.default_rng([int(seed), 7919])
    n = int(round(box_um * 1000 / spacing_nm))
    h_um = spacing_nm / 1000.0
    shape = (n, n)
    sdist = outline(shape, h_um, semi_axes_um, rng)
    g_rate = gaussian_field(shape, h_um, RATE_LENGTHS_UM[rate_kind], rng)
    g_total = gaussian_field(shape, h_um, total_length_um, rng)
    a = rate_amplitude
    rate = rate_mean * np.exp(a * g_rate - a * a / 2)
    nuclear_total = total_mean * (1 + total_amplitude * g_total)
    mobility = None
    if geometry == "nucleus":
        step = 0.5 * (1 - np.tanh(sdist / edge_width_um))
        total = nuclear_total * step + floor
        boundary = "noflux"
        if edge == "closed":
            # the mobility falls before the chromatin does (its edge 2 w inside): most of the drop
            # of phi_t then sits where transport is nearly off, so phi_h, phi_e there stay close to
            # the local reaction balance instead of being pushed far below 0 by the bulk free energy
            inner = 0.5 * (1 - np.tanh((sdist + 2 * edge_width_um) / edge_width_um))
            mobility = mobility_floor + (1 - mobility_floor) * inner
        elif edge != "open":
            raise ValueError(f"edge must be 'closed' or 'open', got {edge!r}")
    elif geometry == "tissue":
        total = nuclear_total
        boundary = "periodic"
    else:
        raise ValueError(f"geometry must be 'nucleus' or 'tissue', got {geometry!r}")
    phi_h, phi_e, info = solve_steady(rate, total, h_um, boundary, tol=tol, mobility=mobility)
    info = {**{k: v for k, v in info.items() if k != "history"}, "params": params}
    out = HeldoutNucleus(phi_h, phi_e, rate, total, sdist < 0, float(spacing_nm), geometry, info)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        out.save(path)
    return out


# ----------------------------------------------------------------------------------------------
# labelling model -> ThunderSTORM CSV
# ----------------------------------------------------------------------------------------------
THUNDERSTORM_COLUMNS = ["id", "frame", "x [nm]", "y [nm]", "sigma [nm]", "intensity [photon]", "offset [photon]",
                        "bkgstd [photon]", "uncertainty [nm]", "channel"]


def _molecules(rng, density, spacing_nm, n_molecules):
    p = np.clip(density, 0.0, None).ravel()
    cdf = np.cumsum(p)
    flat = np.minimum(np.searchsorted(cdf, rng.random(n_molecules) * cdf[-1], side="right"), p.size - 1)
    iy, ix = np.divmod(flat, density.shape[1])
    return (iy + rng.random(n_molecules)) * spacing_nm, (ix + rng.random(n_molecules)) * spacing_nm


def label(nucleus: HeldoutNucleus, n_localizations: float, seed: int = 0, blinks: float = 3.0,
          photons: float = 500.0, psf_nm: float = 130.0, background: float = 0.05,
          frames: int = 20000, bursts: float = 1.0) -> pd.DataFrame:
    """Two-channel localizations of a simulated nucleus (see the module docstring).

    Returns a DataFrame with the ThunderSTORM columns (:data:`THUNDERSTORM_COLUMNS`); coordinates
    in nm with the fine grid's first sample centred at ``(h/2, h/2)`` (the frame of
    :meth:`HeldoutNucleus.truth_image`). The number of rows is ``n_localizations`` in
    expectation (the blink counts are random).
    """
    rng = np.random.default_rng([int(seed), 104729])
    h = nucleus.spacing_nm
    n = float(n_localizations)
    n_signal = n * (1 - background)
    ints = np.array([np.clip(nucleus.phi_h, 0, None).sum(), np.clip(nucleus.phi_e, 0, None).sum()])
    ys, xs, chans, frame_list = [], [], [], []
    for channel, density in enumerate((nucleus.phi_h, nucleus.phi_e)):
        n_mol = int(rng.poisson(n_signal * ints[channel] / ints.sum() / blinks / bursts))
        my, mx = _molecules(rng, density, h, n_mol)
        if bursts > 1:
            # runs of blinks; each run belongs to one molecule and starts anywhere in the acquisition
            owner = np.repeat(np.arange(n_mol), rng.geometric(1.0 / bursts, n_mol))
            my, mx = my[owner], mx[owner]
        n_run = my.size
        counts = rng.geometric(1.0 / blinks, n_run)
        idx = np.repeat(np.arange(n_run), counts)
        first = rng.integers(1, frames + 1, n_run)
        gaps = rng.geometric(1 / 1.5, idx.size)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        gaps[starts] = 0
        csum = np.cumsum(gaps)
        offset = csum - np.repeat(csum[starts], counts)
        frame_list.append((first[idx] - 1 + offset) % frames + 1)
        ys.append(my[idx])
        xs.append(mx[idx])
        chans.append(np.full(idx.size, channel))
    n_sig = sum(a.size for a in ys)
    n_bg = int(rng.poisson(n * background))
    side_y, side_x = (s * h for s in nucleus.phi_h.shape)
    ys.append(rng.random(n_bg) * side_y)
    xs.append(rng.random(n_bg) * side_x)
    chans.append(rng.integers(0, 2, n_bg))
    frame_list.append(rng.integers(1, frames + 1, n_bg))
    total = n_sig + n_bg
    n_photons = photons * np.exp(0.7 * rng.standard_normal(total))
    precision = psf_nm * np.sqrt(2.0 / n_photons)
    y = np.concatenate(ys) + precision * rng.standard_normal(total)
    x = np.concatenate(xs) + precision * rng.standard_normal(total)
    table = pd.DataFrame({
        "frame": np.concatenate(frame_list).astype(np.int64),
        "x [nm]": np.round(x, 2), "y [nm]": np.round(y, 2),
        "sigma [nm]": np.round(psf_nm * (1 + 0.05 * rng.standard_normal(total)), 2),
        "intensity [photon]": np.round(n_photons, 1),
        "offset [photon]": np.round(100 + 5 * rng.standard_normal(total), 1),
        "bkgstd [photon]": np.round(10 + rng.random(total), 2),
        "uncertainty [nm]": np.round(precision, 3),
        "channel": np.concatenate(chans).astype(np.int64),
    })
    table = table.sort_values("frame", kind="stable").reset_index(drop=True)
    table.insert(0, "id", np.arange(1, total + 1))
    return table[THUNDERSTORM_COLUMNS]


def write_thunderstorm(table: pd.DataFrame, path) -> Path:
    """Write as ThunderSTORM does: quoted header names with units, plain numbers (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(",".join(f'"{c}"' for c in table.columns) + "\n")
        table.to_csv(fh, header=False, index=False)
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------------------------
# rendered images -> TIFF (what a user of the napari plugin or a TIFF batch starts from)
# ----------------------------------------------------------------------------------------------
def render_ash(table: pd.DataFrame, channel: int, shape, pixel_nm: float = 20.0, shifts: int = 2) -> np.ndarray:
    """An averaged shifted histogram of one channel's localizations, as ThunderSTORM renders.

    Every localization is counted (no merging of a molecule's blinks), in a histogram of
    ``pixel_nm`` bins averaged over ``shifts`` shifts of one pixel per axis: the histogram
    convolved with a triangular kernel ``(shifts - |k|) / shifts^2`` per axis, so the total is
    the number of localizations. Pixel ``(i, j)`` is centred at ``(i, j) * pixel_nm`` (a TIFF
    read without an origin puts its first pixel's centre at 0). Written independently of
    ``chromflow.render``, which blurs each localization by its own precision instead.

    Returns
    -------
    ndarray of float32, ``shape``: localizations per pixel.
    """
    rows = table[table["channel"] == channel]
    iy = np.floor(rows["y [nm]"].to_numpy() / pixel_nm + 0.5).astype(np.int64)
    ix = np.floor(rows["x [nm]"].to_numpy() / pixel_nm + 0.5).astype(np.int64)
    keep = (iy >= 0) & (iy < shape[0]) & (ix >= 0) & (ix < shape[1])
    counts = np.bincount(iy[keep] * shape[1] + ix[keep], minlength=shape[0] * shape[1]).reshape(shape).astype(float)
    m = int(shifts)
    tri = (m - np.abs(np.arange(-m + 1, m))) / m ** 2
    image = ndimage.convolve1d(ndimage.convolve1d(counts, tri, axis=0, mode="constant"), tri, axis=1, mode="constant")
    return image.astype(np.float32)


def write_imagej_tiff(image: np.ndarray, path, pixel_nm: float) -> Path:
    """Write a 32-bit float TIFF as ImageJ saves a rendered image (unit micron, resolution in
    pixels per micron, no origin), atomically."""
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    per_um = 1000.0 / float(pixel_nm)
    tifffile.imwrite(tmp, np.asarray(image, dtype=np.float32), imagej=True, resolution=(per_um, per_um),
                     metadata={"unit": "micron"})
    tmp.replace(path)
    return path
