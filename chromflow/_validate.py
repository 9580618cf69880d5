"""Checks of user-given values shared by readers, writers and renderers."""
from __future__ import annotations

import math
import os
from pathlib import Path

from .errors import InputError

__all__ = ["check_pixel_size", "check_input_file"]


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


def check_input_file(path, kind: str = "an input file", allow_empty: bool = False) -> Path:
    """``path`` as a :class:`~pathlib.Path` to an existing, non-empty file.

    Raises :class:`~chromflow.errors.InputError` naming ``path`` when it is missing, a folder
    (the message says it is not ``kind``), cannot be opened for reading (permissions, an I/O
    error) or is empty (unless ``allow_empty``).
    """
    path = Path(os.fspath(path))
    if not path.exists():
        raise InputError("file not found", path)
    if path.is_dir():
        raise InputError(f"is a folder, not {kind}", path)
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise InputError(f"cannot read the file ({exc.strerror or exc})", path) from None
    if not allow_empty and path.stat().st_size == 0:
        raise InputError("file is empty", path)
    return path
