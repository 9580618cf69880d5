"""The progress/cancel protocol shared by every long-running function.

``progress(done, total, message)`` is called as work advances; ``cancel`` is either a callable
returning True when the user wants to stop, or a :class:`threading.Event`.
"""
from __future__ import annotations

from typing import Callable, Optional, Union
import threading

from .errors import CancelledError

ProgressCallback = Optional[Callable[[int, int, str], None]]
CancelToken = Optional[Union[Callable[[], bool], threading.Event]]

__all__ = ["ProgressCallback", "CancelToken", "is_cancelled", "check_cancel", "report"]


def is_cancelled(cancel: CancelToken) -> bool:
    """True when ``cancel`` (callable, Event or None) says to stop."""
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def check_cancel(cancel: CancelToken, what: str = "work") -> None:
    """Raise :class:`~chromflow.errors.CancelledError` if ``cancel`` says to stop."""
    if is_cancelled(cancel):
        raise CancelledError(f"{what} cancelled by the user")


def report(progress: ProgressCallback, done: int, total: int, message: str = "") -> None:
    """Call ``progress`` if one was given."""
    if progress is not None:
        progress(int(done), int(total), message)
