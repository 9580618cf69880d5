"""A whole simulated nucleus with a known rate map: the test bed of inference, demo and benchmarks."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..physics.chromatin import ChromatinModel
from .chromatin import chromatin_steady_state
from .localizations import sample_localizations
from .shapes import nucleus_mask, random_rate_map, random_total

__all__ = ["SimulatedNucleus", "simulate_nucleus", "make_sample_data"]


@dataclass
class SimulatedNucleus:
    """Ground truth and simulated data of one nucleus.

    Attributes
    ----------
    rate : (n, n) ndarray
        True ``lambda(y, x)``; NaN outside the nucleus (as ``RateMapResult.rate``).
    phi_h, phi_e : (n, n) ndarray
        Steady-state heterochromatin / euchromatin volume fractions; 0 outside.
    total : (n, n) ndarray
        Total chromatin ``phi_h + phi_e`` used by the solver; 0 outside.
    mask : (n, n) bool ndarray
        The nucleus.
    spacing_nm : float
        Grid cell size in nm.
    origin : (float, float)
        Position in nm of the centre of cell ``(0, 0)``; the grid's outer edge is at 0 nm.
    localizations : pandas.DataFrame
        Two channels (``channel`` 0 ~ ``phi_h``, 1 ~ ``phi_e``), coordinates in nm with the
        grid's outer corner at (0, 0); columns as
        :func:`~chromflow.simulate.sample_localizations`.
    model : ChromatinModel
        Model parameters of the steady state.
    info : dict
        Solver information (steps, residual, ...).
    settings : dict
        The arguments of :func:`simulate_nucleus`, JSON-serialisable.
    """

    rate: np.ndarray
    phi_h: np.ndarray
    phi_e: np.ndarray
    total: np.ndarray
    mask: np.ndarray
    spacing_nm: float
    origin: tuple
    localizations: pd.DataFrame
    model: ChromatinModel = ChromatinModel()
    info: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def spacing_um(self) -> float:
        return self.spacing_nm / 1000.0

    @property
    def phi_d(self) -> np.ndarray:
        return self.phi_h - self.phi_e


def simulate_nucleus(grid: int = 128, nucleus_um: float = 10.0, seed: int = 0, n_localizations=200_000,
                     rate_mean: float = 1.0, rate_amplitude: float = 0.5, rate_length_um: float = 1.0,
                     total_mean: float = 0.5, total_amplitude: float = 0.08, total_length_um: float = 1.5,
                     aspect: float = 0.8, roughness: float = 0.05, margin: float = 1.25,
                     precision=(15.0, 5.0), blinks: float = 3.0, background: float = 0.02,
                     frames: int = 10000, model: ChromatinModel = ChromatinModel(), rate=None, total=None,
                     mask=None) -> SimulatedNucleus:
    """Simulate a nucleus: mask, random rate map and total chromatin, steady state, localizations.

    Parameters
    ----------
    grid : int
        Cells per side of the square grid.
    nucleus_um : float
        Long-axis diameter of the nucleus in micrometres; the grid spans ``margin * nucleus_um``.
    seed : int
        Seed of everything random (shape, rate, total, localizations).
    n_localizations : int or (int, int)
        An int is the total over both channels, split in proportion to the integrals of
        ``phi_h`` and ``phi_e`` (equal labelling density: the merged table then samples total
        chromatin ``phi_h + phi_e``). A pair gives the counts of channel 0 (heterochromatin
        mark) and channel 1 (euchromatin mark) explicitly.
    rate_mean, rate_amplitude, rate_length_um : float
        Rate map ``lambda``: expected value, standard deviation of ``log lambda``, correlation
        length (um). See :func:`random_rate_map`.
    total_mean, total_amplitude, total_length_um : float
        Total chromatin map: mean, standard deviation, correlation length (um).
    aspect : float
        Short over long axis of the nucleus.
    roughness : float
        Relative bumpiness of the outline.
    margin : float
        Field of view over nucleus size.
    precision, blinks, background, frames
        Passed to :func:`sample_localizations`.
    model : ChromatinModel
        Model parameters.
    rate, total, mask : (grid, grid) ndarray, optional
        Use these instead of the random rate map, total chromatin map or nucleus shape (e.g. a
        rate map with a known pattern). Values outside the mask are ignored.

    Returns
    -------
    SimulatedNucleus

    Examples
    --------
    >>> sim = simulate_nucleus(grid=48, n_localizations=2000, seed=1)
    >>> sim.rate.shape, sorted(sim.localizations["channel"].unique().tolist())
    ((48, 48), [0, 1])
    """
    rate_given, total_given, mask_given = rate, total, mask
    grid = int(grid)
    if grid < 16:
        raise InputError(f"grid must be >= 16 cells, got {grid}")
    if not (nucleus_um > 0 and margin >= 1 and 0 < aspect <= 1):
        raise InputError(f"need nucleus_um > 0, margin >= 1, 0 < aspect <= 1; got {nucleus_um}, {margin}, {aspect}")
    settings = dict(grid=grid, nucleus_um=float(nucleus_um), seed=int(seed),
                    n_localizations=(list(n_localizations) if np.ndim(n_localizations) else int(n_localizations)),
                    rate_mean=rate_mean, rate_amplitude=rate_amplitude, rate_length_um=rate_length_um,
                    total_mean=total_mean, total_amplitude=total_amplitude, total_length_um=total_length_um,
                    aspect=aspect, roughness=roughness, margin=margin, precision=list(precision),
                    blinks=blinks, background=background, frames=int(frames),
                    phi_max=model.phi_max, length_um=model.length_um)
    spacing_um = margin * nucleus_um / grid
    spacing_nm = spacing_um * 1000.0
    rng = np.random.default_rng(seed)
    # independent child seeds for each random ingredient
    s_shape, s_rate, s_total, s_locs = (int(s) for s in rng.integers(0, 2**31 - 1, 4))
    radius = 0.5 * nucleus_um / spacing_um
    angle = float(np.random.default_rng(s_shape).uniform(0, np.pi))
    mask = nucleus_mask((grid, grid), radius * aspect, radius, angle=angle, roughness=roughness, seed=s_shape)
    rate = random_rate_map((grid, grid), rate_mean, rate_amplitude, rate_length_um / spacing_um, s_rate)
    total = random_total((grid, grid), total_mean, total_amplitude, total_length_um / spacing_um, s_total)
    given = {"rate": rate_given, "total": total_given, "mask": mask_given}
    for name, value in given.items():
        if value is not None and np.shape(value) != (grid, grid):
            raise InputError(f"{name} must have shape ({grid}, {grid}), got {np.shape(value)}")
    if mask_given is not None:
        mask = np.asarray(mask_given, dtype=bool)
    if rate_given is not None:
        rate = np.asarray(rate_given, dtype=np.float64)
    if total_given is not None:
        total = np.asarray(total_given, dtype=np.float64)
    settings["given"] = sorted(k for k, v in given.items() if v is not None)
    phi_h, phi_e, info = chromatin_steady_state(rate, total, mask, spacing_um=spacing_um, model=model,
                                                return_info=True)
    origin = (0.5 * spacing_nm, 0.5 * spacing_nm)
    if np.ndim(n_localizations):
        counts = tuple(int(c) for c in n_localizations)
    else:
        n_h = int(round(int(n_localizations) * phi_h.sum() / (phi_h.sum() + phi_e.sum())))
        counts = (n_h, int(n_localizations) - n_h)
    locs = sample_localizations([phi_h, phi_e], spacing_nm, counts, precision=precision, blinks=blinks,
                                background=background, frames=frames, seed=s_locs, origin=origin)
    info = {k: v for k, v in info.items() if k != "history"}
    return SimulatedNucleus(rate=np.where(mask, rate, np.nan), phi_h=phi_h, phi_e=phi_e,
                            total=np.where(mask, total, 0.0), mask=mask, spacing_nm=spacing_nm, origin=origin,
                            localizations=locs, model=model, info=info, settings=settings)


# rounding of the written sample tables: real exports carry about this many decimals, and it keeps
# the files small (full float repr would triple them)
_DECIMALS = {"x": 1, "y": 1, "sigma": 1, "photons": 1, "uncertainty": 2}


def _rounded(df: pd.DataFrame, columns) -> pd.DataFrame:
    out = df[list(columns)].copy()
    for c, d in _DECIMALS.items():
        if c in out.columns:
            out[c] = out[c].round(d)
    return out


def make_sample_data(out_dir, seed: int = 0, n_localizations: int = 45_000, grid: int = 128,
                     nucleus_um: float = 10.0, camera_pixel_nm: float = 130.0,
                     render_pixel_nm: float = 50.0) -> dict:
    """Write a simulated nucleus with a known rate map in real file formats.

    Files written into ``out_dir`` (all from one :func:`simulate_nucleus` run):

    ``nucleus_thunderstorm.csv``
        ThunderSTORM CSV of both channels merged (samples total chromatin ``phi_h + phi_e``).
    ``nucleus_two_channel.csv``
        Plain CSV with a ``channel`` column (0 = heterochromatin mark ~ ``phi_h``,
        1 = euchromatin mark ~ ``phi_e``).
    ``nucleus_picasso.hdf5`` + ``nucleus_picasso.yaml``
        Picasso localizations of both channels merged, in camera pixels of ``camera_pixel_nm``,
        frames counted from 0 as Picasso does.
    ``nucleus_density.tif``
        Gaussian rendering of the merged localizations (localizations per pixel), with pixel size.
    ``nucleus_rate_truth.tif``, ``nucleus_phi_h_truth.tif``, ``nucleus_phi_e_truth.tif``, ``nucleus_mask_truth.tif``
        Ground truth on the simulation grid (float32; rate NaN outside the nucleus), with pixel
        size and origin.
    ``nucleus_truth.json``
        Parameters, grid geometry, counts and a description of every file.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Folder to write into (created if needed).
    seed : int
        Seed of the simulation (same seed, same files).
    n_localizations : int
        Localizations over both channels.
    grid : int
        Simulation grid size (cells per side).
    nucleus_um : float
        Nucleus long-axis diameter in micrometres.
    camera_pixel_nm : float
        Camera pixel size recorded in the Picasso file.
    render_pixel_nm : float
        Pixel size of the rendered density TIFF.

    Returns
    -------
    dict
        File role -> ``pathlib.Path``.

    Examples
    --------
    >>> paths = make_sample_data("sample_data", seed=0)          # doctest: +SKIP
    >>> sorted(paths)[:2]                                        # doctest: +SKIP
    ['density', 'mask_truth']
    """
    import json
    from pathlib import Path

    from ..image import Image
    from ..io import atomic_path, write_image, write_localizations
    from ..render import render

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sim = simulate_nucleus(grid=grid, nucleus_um=nucleus_um, seed=seed, n_localizations=n_localizations)
    locs = sim.localizations
    paths = {}
    merged = _rounded(locs, ["id", "frame", "x", "y", "sigma", "photons", "uncertainty"])
    paths["thunderstorm"] = write_localizations(merged, out / "nucleus_thunderstorm.csv", format="thunderstorm")
    two = _rounded(locs, ["x", "y", "frame", "photons", "sigma", "uncertainty", "channel"])
    paths["two_channel"] = write_localizations(two, out / "nucleus_two_channel.csv", format="csv")
    picasso = merged.drop(columns="id")
    picasso["frame"] = picasso["frame"] - 1  # Picasso counts frames from 0
    paths["picasso"] = write_localizations(picasso, out / "nucleus_picasso.hdf5", format="picasso",
                                           pixel_size=camera_pixel_nm)
    paths["picasso_yaml"] = out / "nucleus_picasso.yaml"
    side = grid * sim.spacing_nm
    density = render(locs, pixel_size=render_pixel_nm, method="gaussian", fov=(0.0, 0.0, side, side))
    density = Image(density.data.astype(np.float32), density.pixel_size, density.origin, name="nucleus_density")
    paths["density"] = write_image(density, out / "nucleus_density.tif")
    for role, arr in (("rate_truth", sim.rate), ("phi_h_truth", sim.phi_h), ("phi_e_truth", sim.phi_e)):
        paths[role] = write_image(Image(arr.astype(np.float32), sim.spacing_nm, sim.origin, name=role),
                                  out / f"nucleus_{role}.tif")
    paths["mask_truth"] = write_image(Image(sim.mask, sim.spacing_nm, sim.origin, name="mask_truth"),
                                      out / "nucleus_mask_truth.tif")
    inside = sim.rate[sim.mask]
    truth = {
        "description": "Simulated nucleus with a known epigenetic rate map (chromflow.simulate)",
        "generator": "chromflow.simulate.make_sample_data",
        "seed": int(seed),
        "simulation": sim.settings,
        "grid": {"shape": list(sim.mask.shape), "spacing_nm": sim.spacing_nm, "origin_nm": list(sim.origin),
                 "note": "origin = centre of cell (0, 0); the field of view starts at 0 nm"},
        "model": {"phi_max": sim.model.phi_max, "length_um": sim.model.length_um,
                  "equation": "d phi_d/dt = lap mu_d + 2 (lambda phi_e - phi_h), "
                              "mu_d = -phi_e + F(phi_h) - l^2 lap phi_d; steady state"},
        "solver": {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in sim.info.items()},
        "rate_stats": {"min": float(inside.min()), "max": float(inside.max()), "mean": float(inside.mean())},
        "localizations": {"total": int(len(locs)),
                          "per_channel": {int(k): int(v) for k, v in locs.groupby("channel").size().items()},
                          "channels": {"0": "heterochromatin mark ~ phi_h", "1": "euchromatin mark ~ phi_e"},
                          "camera_pixel_nm": camera_pixel_nm},
        "files": {role: p.name for role, p in paths.items()},
    }
    json_path = out / "nucleus_truth.json"
    with atomic_path(json_path) as tmp:
        Path(tmp).write_text(json.dumps(truth, indent=2) + "\n", encoding="utf-8")
    paths["truth"] = json_path
    return paths
