"""Typed, validated access to the fields of a raw ``config.json`` (chapter 01).

Every value a family reader takes from a config goes through :class:`ConfigReader`, which
checks its type, its range and a sane bound, and raises a one-line ``ValueError`` naming
the config, the field and what is allowed.  Nothing is coerced silently: the string
``"false"`` is read as False (a JSON bool or the strings ``"true"``/``"false"`` are the
only booleans), ``NaN``, ``Infinity`` and fractions are refused where a count is due,
and a huge count (``num_hidden_layers: 1e9``) is refused before anything is built.
"""
from __future__ import annotations

import math

from .validation import safe_text

#: Upper bound of any count read from a config (an int32, as the frameworks' shapes).
MAX_COUNT = 2**31 - 1
#: Tighter bounds where memlib builds per-item structures (one entry per layer or expert).
MAX_OF = {"num_hidden_layers": 100_000, "n_layer": 100_000, "num_experts": 1_000_000,
          "num_local_experts": 1_000_000, "n_routed_experts": 1_000_000}
_MISSING = object()
_TRUE, _FALSE = ("true",), ("false",)


class ConfigReader:
    """Read the fields of one config; every error names ``name`` (the file) and the field."""

    def __init__(self, name: str, cfg: dict):
        self.name, self.cfg = name, cfg

    # -- errors --------------------------------------------------------------------------
    def error(self, key: str, message: str) -> ValueError:
        return ValueError(f"config field {key!r} of {safe_text(self.name)}: {message}")

    def missing(self, keys) -> ValueError:
        alt = f" (or {', '.join(map(repr, keys[1:]))})" if len(keys) > 1 else ""
        return ValueError(f"config of {safe_text(self.name)} is missing required field {keys[0]!r}{alt}")

    def _first(self, keys):
        for k in keys:
            if self.cfg.get(k) is not None:
                return k, self.cfg[k]
        return None, None

    def has(self, key: str) -> bool:
        return self.cfg.get(key) is not None

    # -- scalars -------------------------------------------------------------------------
    def count(self, *keys, default=_MISSING, minimum: int = 1, maximum: int | None = None) -> int:
        """A whole number in ``[minimum, maximum]`` from the first key present.

        Accepts JSON integers and integral floats (``4096.0``); refuses booleans, strings,
        fractions, NaN and infinities.  ``maximum`` defaults to :data:`MAX_OF` or
        :data:`MAX_COUNT`.
        """
        key, v = self._first(keys)
        if key is None:
            if default is _MISSING:
                raise self.missing(keys)
            return default
        top = maximum if maximum is not None else MAX_OF.get(key, MAX_COUNT)
        allowed = f"a whole number from {minimum} to {top:,}"
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.error(key, f"must be {allowed}, got {safe_text(repr(v))}")
        if isinstance(v, float):
            if not math.isfinite(v) or not v.is_integer():
                raise self.error(key, f"must be {allowed}, got {safe_text(repr(v))}")
            v = int(v)
        if not minimum <= v <= top:
            raise self.error(key, f"must be {allowed}, got {v:,}")
        return int(v)

    def opt_count(self, key: str, minimum: int = 1) -> int | None:
        """A count, or None when the field is absent or null."""
        return self.count(key, minimum=minimum) if self.has(key) else None

    def number(self, *keys, default: float = 0.0, minimum: float | None = None,
               maximum: float | None = None, open_min: bool = False) -> float:
        """A finite real number in the given range (bounds inclusive unless ``open_min``)."""
        key, v = self._first(keys)
        if key is None:
            return default
        lo = "" if minimum is None else (f"> {minimum}" if open_min else f">= {minimum}")
        hi = "" if maximum is None else f"<= {maximum}"
        allowed = "a finite number" + (f" {lo}" if lo else "") + (f" and {hi}" if lo and hi else f" {hi}" if hi else "")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise self.error(key, f"must be {allowed}, got {safe_text(repr(v))}")
        v = float(v)
        if (minimum is not None and (v <= minimum if open_min else v < minimum)) or \
                (maximum is not None and v > maximum):
            raise self.error(key, f"must be {allowed}, got {v}")
        return v

    def probability(self, *keys, default: float = 0.0) -> float:
        """A dropout probability in ``[0, 1)``."""
        key, _ = self._first(keys)
        v = self.number(*keys, default=default, minimum=0.0, maximum=1.0)
        if v >= 1.0:
            raise self.error(key, f"must be a probability in [0, 1), got {v}")
        return v

    def flag(self, key: str, default: bool = False) -> bool:
        """A JSON bool, or the string ``"true"``/``"false"``; null means ``default``."""
        v = self.cfg.get(key)
        if v is None:
            return default
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.strip().lower() in _TRUE + _FALSE:
            return v.strip().lower() in _TRUE
        raise self.error(key, f"must be true or false, got {safe_text(repr(v))}")

    def text(self, key: str, default: str | None = None, allowed=None) -> str | None:
        """A string field, optionally one of ``allowed``."""
        v = self.cfg.get(key)
        if v is None:
            return default
        if not isinstance(v, str) or (allowed is not None and v not in allowed):
            want = f"one of {', '.join(map(repr, allowed))}" if allowed is not None else "a string"
            raise self.error(key, f"must be {want}, got {safe_text(repr(v))}")
        return v

    # -- lists ---------------------------------------------------------------------------
    def index_list(self, key: str, length: int) -> tuple[int, ...]:
        """A list of layer indices, each in ``[0, length)`` (e.g. ``mlp_only_layers``)."""
        v = self.cfg.get(key)
        if v is None:
            return ()
        if not isinstance(v, list):
            raise self.error(key, f"must be a list of layer indices, got {safe_text(repr(v))}")
        out = []
        for x in v:
            if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < length:
                raise self.error(key, f"must list layer indices from 0 to {length - 1}, "
                                      f"got {safe_text(repr(x))}")
            out.append(x)
        return tuple(out)

    def choice_list(self, key: str, length: int, mapping: dict) -> tuple | None:
        """A list of ``length`` strings, each a key of ``mapping``; returns the mapped values."""
        v = self.cfg.get(key)
        if v is None:
            return None
        if not isinstance(v, list):
            raise self.error(key, f"must be a list of {length} layer kinds, got {safe_text(repr(v))}")
        if len(v) != length:
            raise self.error(key, f"has {len(v)} entries, expected num_hidden_layers={length}")
        for x in v:
            if not isinstance(x, str) or x not in mapping:
                raise self.error(key, f"unknown layer kind {safe_text(repr(x))}; "
                                      f"allowed: {', '.join(sorted(mapping))}")
        return tuple(mapping[x] for x in v)
