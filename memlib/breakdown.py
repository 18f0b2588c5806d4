"""The one result type of memlib: a :class:`Breakdown` of memory into named components.

Every estimate (weights, KV cache, inference, training, measurement) returns a
``Breakdown``.  Components are bytes (ints, or integer numpy arrays for sweeps).
``total`` is their sum.  For a training step the components are what is live *at the
peak*, so ``total`` is the peak; ``phases`` then holds the peak of each phase and
``peak_phase`` names the phase where the overall peak falls (chapter 04).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping

import numpy as np

from .units import GB, GiB, fmt_bytes


def _as_bytes(v):
    if isinstance(v, np.ndarray):
        return v.astype(np.int64)
    return int(v)


@dataclass(frozen=True)
class Breakdown:
    """Memory split into named components, in bytes.

    Attributes:
        components: ordered mapping ``name -> bytes``.
        title: what was estimated (``"Llama-3.1-8B, bf16 weights"``).
        phases: optional mapping ``phase -> peak bytes in that phase`` (training).
        peak_phase: the phase in which ``total`` is reached (training).
        meta: free-form facts about the estimate (model, knobs, attention used, notes).
        unit: ``"bytes"`` for memory; ``"params"`` for a parameter count (chapter 01).
    """

    components: Mapping[str, int]
    title: str = ""
    phases: Mapping[str, int] | None = None
    peak_phase: str | None = None
    meta: Mapping = field(default_factory=dict)
    unit: str = "bytes"

    def __post_init__(self):
        object.__setattr__(self, "components", {k: _as_bytes(v) for k, v in self.components.items()})
        if self.phases is not None:
            object.__setattr__(self, "phases", {k: _as_bytes(v) for k, v in self.phases.items()})

    # -- numbers ---------------------------------------------------------------------
    @property
    def total(self):
        """Sum of the components in bytes (the peak, for a training step)."""
        vals = list(self.components.values())
        if not vals:
            return 0
        out = vals[0]
        for v in vals[1:]:
            out = out + v
        return out

    @property
    def peak(self):
        """The peak in bytes: same as :attr:`total` (kept for readability in training code)."""
        return self.total

    def __getitem__(self, name):
        return self.components[name]

    def __contains__(self, name):
        return name in self.components

    def get(self, name, default=0):
        return self.components.get(name, default)

    def __add__(self, other: "Breakdown") -> "Breakdown":
        """Combine two breakdowns; components with the same name are added."""
        comps = dict(self.components)
        for k, v in other.components.items():
            comps[k] = comps.get(k, 0) + v
        title = " + ".join(t for t in (self.title, other.title) if t)
        return Breakdown(comps, title=title, meta={**self.meta, **other.meta})

    def with_components(self, **extra) -> "Breakdown":
        """A copy with components added or replaced."""
        return replace(self, components={**self.components, **extra})

    def shard(self, n: int, replicated=()) -> "Breakdown":
        """Split across ``n`` devices: every component is divided by ``n`` (rounded up)
        except those named in ``replicated``, which every device holds whole.

        ``shard(n).total * n >= total`` and the difference is below ``n`` bytes per
        sharded component plus ``(n - 1) x`` the replicated ones.
        """
        from .validation import positive_int
        n = positive_int("n", n)
        comps = {k: (v if k in replicated else -(-v // n)) for k, v in self.components.items()}
        return replace(self, components=comps, title=f"{self.title} (1 of {n} devices)".strip(),
                       phases=None if self.phases is None else {k: -(-v // n) for k, v in self.phases.items()})

    # -- display ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready dict: ``{"total", "components", "title", "phases", "peak_phase", "meta"}``."""
        def clean(v):
            return v.tolist() if isinstance(v, np.ndarray) else v
        out = {"title": self.title, "total": clean(self.total),
               "components": {k: clean(v) for k, v in self.components.items()}}
        if self.phases is not None:
            out["phases"] = {k: clean(v) for k, v in self.phases.items()}
            out["peak_phase"] = self.peak_phase
        if self.meta:
            out["meta"] = dict(self.meta)
        return out

    def table(self, units=("GiB", "GB")) -> str:
        """A plain-text table with one row per component and the total, in ``units``."""
        if isinstance(self.total, np.ndarray):
            return f"{self.title}: array-valued breakdown of shape {self.total.shape}"
        if self.unit == "params":
            return self._count_table()
        units = (units,) if isinstance(units, str) else tuple(units)
        rows = [(k, v) for k, v in self.components.items()]
        width = max([len(k) for k, _ in rows] + [len("total"), 9])
        head = f"{'component':<{width}}" + "".join(f"{u:>12}" for u in units) + f"{'bytes':>20}"
        lines = [self.title] if self.title else []
        lines += [head, "-" * len(head)]
        total = self.total or 1

        def row(name, v):
            return f"{name:<{width}}" + "".join(
                f"{v / (GiB if u == 'GiB' else GB if u == 'GB' else 1):>12.3f}" if u in ("GiB", "GB")
                else f"{fmt_bytes(v, u):>12}" for u in units) + f"{v:>20,}"
        lines += [row(k, v) for k, v in rows]
        lines.append("-" * len(head))
        lines.append(row("total", self.total))
        if self.phases:
            lines.append("")
            lines.append("peak by phase:" + "".join(
                f"  {p}={fmt_bytes(v, 'GiB')}" + (" <- peak" if p == self.peak_phase else "")
                for p, v in self.phases.items()))
        del total
        return "\n".join(lines)

    def _count_table(self) -> str:
        rows = list(self.components.items()) + [("total", self.total)]
        width = max(len(k) for k, _ in rows) + 2
        lines = [self.title] if self.title else []
        lines += [f"{'component':<{width}}{'params':>20}{'billions':>12}"]
        lines += [f"{k:<{width}}{v:>20,}{v / 1e9:>12.3f}" for k, v in rows]
        for k, v in self.meta.items():
            if isinstance(v, int):
                lines.append(f"{k:<{width}}{v:>20,}{v / 1e9:>12.3f}")
        return "\n".join(lines)

    def __str__(self):
        return self.table()

    def _repr_pretty_(self, p, cycle):  # IPython: print the table, not the dataclass
        p.text(self.table())

    def plot(self, ax=None, unit: str = "GiB", label: str | None = None, x=0, width=0.6, colors=None):
        """Draw this breakdown as one stacked bar on ``ax`` (created if None); returns ``ax``."""
        from .plotting import stacked_bar
        return stacked_bar([self], ax=ax, unit=unit, labels=[label or self.title], colors=colors)
