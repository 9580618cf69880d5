"""Checks of user-given values shared by readers, writers and renderers."""
from __future__ import annotations

import math

from .errors import InputError

__all__ = ["check_pixel_size"]


def check_pixel_size(pixel_size, path=None):
    """``pixel_size`` as a positive finite float (nm), or None when it is None.

    Raises :class:`~chromflow.errors.InputError` naming ``path`` otherwise.

    Examples
    --------
    >>> check_pixel_size("20")
    20.0
    """
    if pixel_size is None:
        return None
    try:
        value = float(pixel_size)
    except (TypeError, ValueError):
        raise InputError(f"pixel_size must be a number of nm, got {pixel_size!r}", path) from None
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"pixel_size must be a positive number of nm, got {pixel_size!r}", path)
    return value
