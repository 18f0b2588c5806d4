"""Input checks shared by every estimate: each error names the field and what is allowed."""
from __future__ import annotations

import numbers

import numpy as np


def positive_int(field: str, value, minimum: int = 1):
    """Return ``value`` if it is an integer >= ``minimum`` (or an integer array of such).

    Raises ``ValueError`` naming ``field`` otherwise: negative, zero, non-integer,
    boolean or non-numeric values are all rejected.
    """
    if isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.integer):
            if np.issubdtype(value.dtype, np.floating) and np.all(np.mod(value, 1) == 0):
                value = value.astype(np.int64)
            else:
                raise ValueError(f"{field}: must hold whole numbers, got dtype {value.dtype}")
        if value.size and value.min() < minimum:
            raise ValueError(f"{field}: every value must be >= {minimum}, got {value.min()}")
        return value.astype(np.int64)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
            value = int(value)
        else:
            raise ValueError(f"{field}: must be a whole number >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{field}: must be >= {minimum}, got {value}")
    return int(value)


def choice(field: str, value, allowed):
    """Return ``value`` if it is one of ``allowed``; else a ``ValueError`` listing them."""
    if value not in allowed:
        raise ValueError(f"{field}: unknown value {value!r}; allowed: {', '.join(map(str, allowed))}")
    return value


def fraction(field: str, value, low: float = 0.0, high: float = 1.0, inclusive_low=False):
    """Return ``value`` as a float in (low, high]; else a ``ValueError`` naming ``field``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{field}: must be a number in ({low}, {high}], got {value!r}") from None
    ok = (v >= low if inclusive_low else v > low) and v <= high
    if not ok:
        raise ValueError(f"{field}: must be in {'[' if inclusive_low else '('}{low}, {high}], got {v}")
    return v
