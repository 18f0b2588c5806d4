"""Units and dtypes: bytes are ints; GiB = 2**30, GB = 10**9 (chapter 00).

Every size in memlib is an integer number of bytes.  Display helpers turn bytes into
GiB (binary, what ``nvidia-smi`` and PyTorch report) or GB (decimal, what spec sheets
and most articles use).  The difference is 7.4 % at the giga scale.
"""
from __future__ import annotations

import numpy as np

KiB, MiB, GiB, TiB = 2**10, 2**20, 2**30, 2**40
KB, MB, GB, TB = 10**3, 10**6, 10**9, 10**12

UNITS = {"B": 1, "KiB": KiB, "MiB": MiB, "GiB": GiB, "TiB": TiB,
         "KB": KB, "MB": MB, "GB": GB, "TB": TB}

#: Bits per element of every plain dtype memlib knows.  Quantised formats with
#: scales and zero points live in :mod:`memlib.weights`.
DTYPE_BITS = {
    "fp32": 32, "fp16": 16, "bf16": 16, "fp8": 8, "int8": 8, "int4": 4,
}
_ALIASES = {
    "float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16",
    "bfloat16": "bf16", "float8": "fp8", "float8_e4m3fn": "fp8", "fp8_e4m3": "fp8",
    "float8_e5m2": "fp8", "fp8_e5m2": "fp8",
}


def canonical_dtype(dtype: str, field: str = "dtype", allowed=None) -> str:
    """Return the canonical name of ``dtype`` ('bfloat16' -> 'bf16'; chapter 01).

    Raises ``ValueError`` naming ``field`` and the allowed values for anything else.
    """
    if allowed is None and type(dtype) is str and dtype in DTYPE_BITS:
        return dtype                                 # already canonical: the common case, checked first
    allowed = tuple(allowed or DTYPE_BITS)
    name = _ALIASES.get(str(dtype).lower(), str(dtype).lower()) if isinstance(dtype, str) else None
    if name not in allowed:
        raise ValueError(f"{field}: unknown dtype {dtype!r}; allowed: {', '.join(allowed)}")
    return name


def dtype_bytes(dtype: str, field: str = "dtype") -> float:
    """Bytes per element of a plain dtype, ``bits / 8`` (0.5 for int4; chapter 01)."""
    return DTYPE_BITS[canonical_dtype(dtype, field)] / 8


def bits_to_bytes(n_elements, bits):
    """Bytes to store ``n_elements`` values of ``bits`` bits each, ``⌈n·bits/8⌉`` (chapter 01).

    Works elementwise on numpy arrays.
    """
    return -(-(np.asarray(n_elements, dtype=np.int64) * int(bits)) // 8) if isinstance(
        n_elements, np.ndarray) else -(-(int(n_elements) * int(bits)) // 8)


def to_unit(n_bytes, unit: str = "GiB") -> float:
    """Convert bytes to ``unit`` (one of :data:`UNITS`): ``bytes / 2**30`` for GiB, ``/ 10**9`` for GB (chapter 00)."""
    if unit not in UNITS:
        raise ValueError(f"unit: unknown unit {unit!r}; allowed: {', '.join(UNITS)}")
    return n_bytes / UNITS[unit]


def fmt_bytes(n_bytes, unit: str | None = None, digits: int = 2) -> str:
    """Format bytes for people (chapter 00): ``fmt_bytes(15_000_000_000) == '13.97 GiB'``.

    With ``unit=None`` the largest binary unit that keeps the number >= 1 is used.
    """
    n = int(n_bytes)
    if unit is None:
        unit = "B"
        for u in ("KiB", "MiB", "GiB", "TiB"):
            if abs(n) >= UNITS[u]:
                unit = u
    if unit == "B":
        return f"{n:,} B"
    return f"{to_unit(n, unit):,.{digits}f} {unit}"
