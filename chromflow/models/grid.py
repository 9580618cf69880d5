"""Evaluate coordinate networks on regular grids.

A backbone maps coordinates to field values; :func:`evaluate_on_grid` turns it into a
``(channels, *shape)`` image, which is what the mollifier layer consumes. This is how "the
mollifier layer attaches at the output with no architectural change": any coordinate network
becomes a grid field, optionally padded by the kernel half-width so that a ``boundary="valid"``
convolution returns exactly the original grid.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["grid_coordinates", "evaluate_on_grid"]


def grid_coordinates(shape: Sequence[int], spacing: float = 1.0, pad: int = 0, device=None, dtype=None):
    """Cell-centre coordinates of a regular grid, normalised for a network.

    Cell ``i`` along an axis of ``n`` cells (``i = -pad .. n - 1 + pad``) sits at the normalised
    coordinate ``(i - (n - 1) / 2) / half`` with one ``half`` for all axes (the largest
    half-extent, padding included), so the grid spans about [-1, 1] and stays isotropic.

    Parameters
    ----------
    shape : sequence of int
        Grid shape without padding, ``(ny, nx)`` or ``(nz, ny, nx)``.
    spacing : float
        Physical size of one cell (any unit; 1 = grid units).
    pad : int
        Extra cells added on every side.
    device, dtype : optional
        Of the returned tensor (default: CPU, torch's default dtype).

    Returns
    -------
    coords : Tensor, shape (N, ndim)
        Normalised coordinates in row-major order of the padded grid
        (``N = prod(n + 2 pad)``), columns in axis order (y, x).
    scale : float
        Physical length of one normalised unit, ``spacing * half``. A derivative of order ``k``
        with respect to the normalised coordinate divided by ``scale**k`` is the derivative per
        physical unit.

    Examples
    --------
    >>> c, s = grid_coordinates((3, 5))
    >>> c.shape, s
    (torch.Size([15, 2]), 2.0)
    >>> c[0].tolist(), c[-1].tolist()
    ([-0.5, -1.0], [0.5, 1.0])
    """
    shape = tuple(int(n) for n in shape)
    if any(n < 1 for n in shape) or pad < 0:
        raise ValueError(f"shape must be positive and pad >= 0, got shape={shape}, pad={pad}")
    half = max((n - 1) / 2 + pad for n in shape) or 1.0
    axes = [(torch.arange(-pad, n + pad, device=device, dtype=torch.float64) - (n - 1) / 2) / half for n in shape]
    mesh = torch.meshgrid(*axes, indexing="ij")
    coords = torch.stack([m.reshape(-1) for m in mesh], dim=1)
    coords = coords.to(dtype or torch.get_default_dtype())
    return coords, float(spacing) * half


def evaluate_on_grid(model: nn.Module, shape: Sequence[int], pad: int = 0, device=None, dtype=None,
                     coords: torch.Tensor | None = None) -> torch.Tensor:
    """Evaluate a coordinate network on a (padded) grid.

    Parameters
    ----------
    model : nn.Module
        Maps ``(N, ndim)`` coordinates to ``(N, C)`` values.
    shape : sequence of int
        Grid shape without padding.
    pad : int
        Cells added on every side (e.g. the mollifier radius, for ``boundary="valid"``).
    device, dtype : optional
        Default to those of the model's parameters.
    coords : Tensor, optional
        Precomputed :func:`grid_coordinates` of the same grid (saves rebuilding them
        every iteration).

    Returns
    -------
    Tensor, shape (C, *(n + 2 pad for n in shape))

    Examples
    --------
    >>> from chromflow.models import MLP
    >>> evaluate_on_grid(MLP(2, 3, width=8, depth=1), (4, 6), pad=2).shape
    torch.Size([3, 8, 10])
    """
    param = next(iter(model.parameters()), None)
    device = device if device is not None else (param.device if param is not None else None)
    dtype = dtype if dtype is not None else (param.dtype if param is not None else None)
    if coords is None:
        coords, _ = grid_coordinates(shape, pad=pad, device=device, dtype=dtype)
    out = model(coords)
    full = tuple(int(n) + 2 * pad for n in shape)
    return out.T.reshape(out.shape[1], *full)
