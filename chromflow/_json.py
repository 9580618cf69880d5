"""Plain JSON values from the numbers, arrays and settings chromflow writes (one rule for every file)."""
from __future__ import annotations

import math

import numpy as np

__all__ = ["jsonable"]


def jsonable(value):
    """``value`` as plain, strict JSON data.

    numpy scalars become Python numbers, arrays, tuples and lists become lists, dict keys
    become strings, and anything else that JSON has no type for becomes its ``str``. Floats
    that are not finite (NaN, +-inf) become ``None``: JSON (RFC 8259) has no such numbers, and
    ``json.dumps`` would otherwise write ``NaN`` / ``Infinity``, which most readers outside
    Python reject. Readers of chromflow's files take ``None`` back as NaN
    (:func:`chromflow.inverse.result._number`).

    Examples
    --------
    >>> import numpy as np
    >>> jsonable({"r": np.float32(0.5), "n": np.int64(3), "sd": float("nan"), 1: (np.inf, True)})
    {'r': 0.5, 'n': 3, 'sd': None, '1': [None, True]}
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)
