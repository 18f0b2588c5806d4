"""Input checks shared by every estimate: each error names the field and what is allowed."""
from __future__ import annotations

import functools
import inspect
import numbers
import sys

import numpy as np

#: The largest byte count an int64 numpy array holds exactly.
INT64_MAX = 2**63 - 1


def positive_int(field: str, value, minimum: int = 1):
    """Return ``value`` if it is an integer >= ``minimum`` (or an integer array of such); every chapter's inputs.

    Raises ``ValueError`` naming ``field`` otherwise: negative, zero, non-integer,
    boolean or non-numeric values are all rejected.
    """
    if type(value) is int and value >= minimum:   # the common case, checked first: it is fast
        return value
    if traced(value):                             # an estimate being compiled: the check is a guard
        if value < minimum:
            raise ValueError(f"{field}: must be >= {minimum}")
        return value
    if isinstance(value, np.ndarray):
        if value.size == 0:
            raise ValueError(f"{field}: an empty array; give at least one value >= {minimum}")
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


def traced(value) -> bool:
    """True for a value :mod:`memlib.symbolic` is tracing (chapter 08).  None exists before that
    module is loaded, which ``import memlib`` alone does not do: it stays light."""
    sym = sys.modules.get("memlib.symbolic")
    return sym is not None and isinstance(value, sym.Sym)


def as_int(value):
    """``int(value)``, keeping a traced value traced (``int()`` itself must return a number)."""
    if type(value) is int:
        return value
    return value.as_int() if traced(value) else int(value)


def as_float(value):
    """``float(value)``, keeping a traced value traced."""
    return value.as_float() if traced(value) else float(value)


def choice(field: str, value, allowed):
    """Return ``value`` if it is one of ``allowed``; else a ``ValueError`` listing them (every chapter's knobs)."""
    if value not in allowed:
        raise ValueError(f"{field}: unknown value {value!r}; allowed: {', '.join(map(str, allowed))}")
    return value


def fraction(field: str, value, low: float = 0.0, high: float = 1.0, inclusive_low=False):
    """Return ``value`` as a float in (low, high]; else a ``ValueError`` naming ``field`` (every chapter)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{field}: must be a number in ({low}, {high}], got {value!r}") from None
    ok = (v >= low if inclusive_low else v > low) and v <= high
    if not ok:
        raise ValueError(f"{field}: must be in {'[' if inclusive_low else '('}{low}, {high}], got {v}")
    return v


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0, 32), 127)}
_CONTROL.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})
_CONTROL.update({c: f"\\x{c:02x}" for c in range(0x80, 0xA0)})   # C1 controls (CSI, OSC...)


def safe_text(text, limit: int = 200) -> str:
    """``text`` made safe to print on one terminal line: control characters (ESC, BEL,
    newlines, C1 controls) are escaped as ``\\x1b``, ``\\n``...; long text is cut.  Used for
    everything memlib prints from a config (chapter 01)."""
    s = str(text).translate(_CONTROL)
    return s if len(s) <= limit else s[:limit - 3] + "..."


def _has_array(values) -> bool:
    for v in values:
        if isinstance(v, np.ndarray):
            return True
    return False


def exact_sweeps(*fields):
    """Decorator for estimates that accept numpy arrays in ``fields`` (chapters 02–04).

    Array results are int64.  Memory never decreases with batch size, sequence length or
    beams, so the largest result of a sweep is the one at the largest inputs: that corner
    is first computed with Python ints (exact at any size), and a sweep whose corner
    exceeds ``2**63 - 1`` bytes is refused with a ``ValueError`` naming the fields, instead
    of wrapping around silently.  Scalar calls are untouched (Python ints, exact).
    """
    def decorate(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if not _has_array(args) and not _has_array(kwargs.values()):
                return fn(*args, **kwargs)           # scalars: exact Python ints, nothing to check
            bound = sig.bind(*args, **kwargs)
            arrays = {f: bound.arguments[f] for f in fields if isinstance(bound.arguments.get(f), np.ndarray)}
            if arrays:
                corner = dict(bound.arguments)
                for f, a in arrays.items():
                    corner[f] = int(np.max(positive_int(f, a)))
                top = fn(**corner)
                total = getattr(top, "total", top)
                if abs(int(total)) > INT64_MAX:
                    at = ", ".join(f"{f}={corner[f]:,}" for f in arrays)
                    raise ValueError(f"{' x '.join(arrays)}: at {at} the result is {int(total):,} bytes, beyond "
                                     f"what an int64 array holds (2**63 - 1); pass Python ints for exact big numbers")
            return fn(*args, **kwargs)
        return wrapper
    return decorate
