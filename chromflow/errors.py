"""Errors raised by chromflow.

Every error a user can cause derives from :class:`ChromflowError`, so a caller (the CLI,
the napari plugin, a batch worker) can report it plainly and treat anything else as a bug.
"""
from __future__ import annotations

import os

__all__ = [
    "ChromflowError",
    "InputError",
    "SegmentationError",
    "GridError",
    "CancelledError",
    "OutputError",
]


class ChromflowError(Exception):
    """Base class of every error chromflow raises on purpose.

    Parameters
    ----------
    reason : str
        What is wrong, in words a user can act on.
    path : str or os.PathLike, optional
        The file the problem is about; it is put in front of the message.
    """

    def __init__(self, reason: str, path: str | os.PathLike | None = None):
        self.reason = str(reason)
        self.path = None if path is None else os.fspath(path)
        msg = self.reason if self.path is None else f"{self.path}: {self.reason}"
        super().__init__(msg)

    def __reduce__(self):
        # keep (reason, path) through pickling: Dask ships errors between processes
        return (type(self), (self.reason, self.path))


class InputError(ChromflowError, ValueError):
    """A file or array that cannot be used as given (missing column, NaN, empty, wrong units...)."""


class SegmentationError(ChromflowError):
    """No usable nucleus was found in an image."""


class GridError(ChromflowError, ValueError):
    """A grid too small, or too coarse, for what was asked of it (e.g. the mollifier kernel)."""


class CancelledError(ChromflowError):
    """Work stopped because the user asked it to."""


class OutputError(ChromflowError):
    """Outputs cannot be written (the output folder is a file, not writable, or the disk is full)."""
