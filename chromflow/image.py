"""The :class:`Image` container: a pixel array that always knows its pixel size."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Image"]


@dataclass
class Image:
    """A 2D ``(y, x)`` or 3D ``(z, y, x)`` image with its physical pixel size.

    Parameters
    ----------
    data : ndarray
        Pixel values, row-major, ``(y, x)`` or ``(z, y, x)``.
    pixel_size : float
        Edge length of one pixel in nanometres (the same along y and x).
    origin : tuple of float
        Position in nm of the centre of pixel ``(0, 0)`` (``(y, x)``, or ``(z, y, x)``), in the
        coordinate frame of the localizations the image was rendered from.
    name : str
        Short name for display (layer names, report titles, output stems).
    source : str, optional
        Path of the file the image came from.
    metadata : dict
        Free-form extra information (render method, units of the values, ...).

    Examples
    --------
    >>> import numpy as np
    >>> img = Image(np.zeros((4, 5)), pixel_size=20.0)
    >>> img.shape, img.extent_nm
    ((4, 5), (80.0, 100.0))
    """

    data: np.ndarray
    pixel_size: float
    origin: tuple = (0.0, 0.0)
    name: str = ""
    source: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.data = np.asarray(self.data)
        self.pixel_size = float(self.pixel_size)
        if not np.isfinite(self.pixel_size) or self.pixel_size <= 0:
            raise ValueError(f"pixel_size must be a positive number of nm, got {self.pixel_size}")
        if len(self.origin) != self.data.ndim:
            self.origin = tuple([0.0] * (self.data.ndim - len(self.origin)) + [float(o) for o in self.origin][-self.data.ndim:])
        self.origin = tuple(float(o) for o in self.origin)

    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def extent_nm(self) -> tuple:
        """Size of the image in nm along each axis."""
        return tuple(float(n * self.pixel_size) for n in self.data.shape)

    @property
    def scale(self) -> tuple:
        """Per-axis pixel size in nm, as napari's ``scale``."""
        return (self.pixel_size,) * self.data.ndim

    @property
    def translate(self) -> tuple:
        """Per-axis offset in nm, as napari's ``translate``."""
        return self.origin

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.data, dtype=dtype)
