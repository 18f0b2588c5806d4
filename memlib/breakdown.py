"""The one result type of memlib: a :class:`Breakdown` of memory into named components.

Every estimate (weights, KV cache, inference, training, measurement) returns a
``Breakdown``.  Components are bytes (ints, or integer numpy arrays for sweeps), each
with a *kind*: model state, activation, KV, transient or overhead (:data:`KINDS`).
``total`` is their sum.

A result may happen over *phases* (a training step: forward, backward, step; an RL
iteration: generate, score, train).  Then ``phases`` holds the peak of each phase,
``phase_components`` what is live at each phase's peak, ``peak_phase`` the phase where
the overall peak falls and ``peak_at`` the moment inside it; the components are those
live at the peak, so ``total`` is the peak (chapter 04).

Results compose (:func:`combine`): a budget of several parts (roles of an RL step, ranks
of a parallel plan) keeps them as ``children``, and its peak is the maximum over phases of
the sum across parts, not the sum of the parts' peaks.  Adding two results never drops
phases.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping

import numpy as np

from .units import GB, GiB, fmt_bytes
from .validation import as_int

#: The kinds of memory a component can be.
KINDS = ("model_state", "activation", "kv", "transient", "overhead")
_KIND_SET = frozenset(KINDS)


def _as_bytes(v):
    if isinstance(v, np.ndarray):
        return v.astype(np.int64)
    return as_int(v)


def _sum(values):
    out = 0
    for v in values:
        out = out + v
    return out


@dataclass(frozen=True)
class Breakdown:
    """Memory split into named components, in bytes.

    Attributes:
        components: ordered mapping ``name -> bytes`` (at the peak, for a phased result).
        title: what was estimated (``"Llama-3.1-8B, bf16 weights"``).
        kinds: ``name -> kind`` (one of :data:`KINDS`) for every component; a single
            kind given as a string applies to all of them.
        phases: optional mapping ``phase -> peak bytes in that phase``.
        peak_phase: the phase in which ``total`` is reached.
        peak_at: where inside ``peak_phase`` the peak falls (``"layer 31 mlp"``).
        phase_components: optional ``phase -> {component: bytes}`` live at each phase's peak.
        children: the parts this result combines (roles, ranks), each a Breakdown.
        label: this result's name as a part of a parent (``"policy"``, ``"rank 0"``).
        meta: free-form facts about the estimate (model, knobs, attention used, notes).
        unit: ``"bytes"`` for memory; ``"params"`` for a parameter count (chapter 01).
    """

    components: Mapping[str, int]
    title: str = ""
    kinds: Mapping[str, str] | str = "model_state"
    phases: Mapping[str, int] | None = None
    peak_phase: str | None = None
    peak_at: str | None = None
    phase_components: Mapping[str, Mapping[str, int]] | None = None
    children: tuple = ()
    label: str = ""
    meta: Mapping = field(default_factory=dict)
    unit: str = "bytes"

    def __post_init__(self):
        # (a plain int is kept as is without a call: most values are, and results are built often)
        comps = {k: v if type(v) is int else _as_bytes(v) for k, v in self.components.items()}
        object.__setattr__(self, "components", comps)
        kinds = self.kinds
        if isinstance(kinds, str):
            if kinds not in _KIND_SET:
                raise ValueError(f"Breakdown: kind {kinds!r} is not one of {', '.join(KINDS)}")
            kinds = dict.fromkeys(comps, kinds)
        else:
            missing = [k for k in comps if k not in kinds]
            if missing:
                raise ValueError(f"Breakdown: components without a kind: {missing}; kinds: {', '.join(KINDS)}")
            kinds = {k: kinds[k] for k in comps}
            bad = [k for k, kind in kinds.items() if kind not in _KIND_SET]
            if bad:
                raise ValueError(f"Breakdown: kind {kinds[bad[0]]!r} of {bad[0]!r} is not one of {', '.join(KINDS)}")
        object.__setattr__(self, "kinds", kinds)
        if self.phases is not None:
            object.__setattr__(self, "phases", {k: v if type(v) is int else _as_bytes(v)
                                                for k, v in self.phases.items()})
        if self.phase_components is not None:
            object.__setattr__(self, "phase_components", {
                p: {k: v if type(v) is int else _as_bytes(v) for k, v in c.items()}
                for p, c in self.phase_components.items()})
        object.__setattr__(self, "children", tuple(self.children))

    # -- numbers ---------------------------------------------------------------------
    @property
    def total(self):
        """Sum of the components in bytes (the peak, for a phased result)."""
        return _sum(self.components.values())

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

    def by_kind(self) -> dict:
        """``{kind: bytes}`` of the components, in the order of :data:`KINDS`."""
        out = {}
        for kind in KINDS:
            vals = [v for k, v in self.components.items() if self.kinds[k] == kind]
            if vals:
                out[kind] = _sum(vals)
        return out

    def at(self, phase: str):
        """Bytes live at ``phase``'s peak: ``phases[phase]``, or ``total`` for an unphased
        result (the same at every moment).  ``ValueError`` for a phase a phased result lacks."""
        if self.phases is None:
            return self.total
        if phase not in self.phases:
            raise ValueError(f"{self.label or self.title or 'result'} has no phase {phase!r}; "
                             f"its phases: {', '.join(self.phases)}")
        return self.phases[phase]

    def components_at(self, phase: str) -> dict:
        """``{component: bytes}`` live at ``phase``'s peak (see :meth:`at`)."""
        return dict(self._live_at(phase))

    def _live_at(self, phase: str) -> Mapping:
        """:meth:`components_at` without the copy (read-only: :func:`combine` reads many)."""
        if self.phases is None:
            return self.components
        self.at(phase)
        if self.phase_components is not None and phase in self.phase_components:
            return self.phase_components[phase]
        if phase == self.peak_phase:
            return self.components
        raise ValueError(f"{self.label or self.title or 'result'} does not record its components "
                         f"at phase {phase!r}")

    def __add__(self, other: "Breakdown") -> "Breakdown":
        """Combine two breakdowns.  Without phases, components with the same name are added;
        with phases on either side, the two are combined over time (:func:`combine`)."""
        if not isinstance(other, Breakdown):
            return NotImplemented
        if self.phases is not None or other.phases is not None:
            return combine([self, other])
        comps = dict(self.components)
        kinds = dict(self.kinds)
        for k, v in other.components.items():
            if k in kinds and kinds[k] != other.kinds[k]:
                raise ValueError(f"cannot add {k!r}: it is {kinds[k]} on one side, {other.kinds[k]} on the other")
            comps[k] = comps.get(k, 0) + v
            kinds[k] = other.kinds[k]
        title = " + ".join(t for t in (self.title, other.title) if t)
        return Breakdown(comps, title=title, kinds=kinds, meta={**self.meta, **other.meta}, unit=self.unit)

    def with_components(self, kind: str | None = None, **extra) -> "Breakdown":
        """A copy with components added or replaced (new ones need ``kind``)."""
        kinds = dict(self.kinds)
        for k in extra:
            if k not in kinds:
                if kind is None:
                    raise ValueError(f"with_components: new component {k!r} needs a kind; kinds: {', '.join(KINDS)}")
                kinds[k] = kind
        return replace(self, components={**self.components, **extra}, kinds=kinds)

    def relabel(self, label: str) -> "Breakdown":
        """This result named as a part of a parent (a role, a rank)."""
        return replace(self, label=label)

    # -- display ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready dict: ``title, total, components, kinds`` and, when present,
        ``phases, peak_phase, peak_at, phase_components, children, meta``."""
        def clean(v):
            if isinstance(v, np.ndarray):
                return v.tolist()
            if isinstance(v, (np.integer, np.floating, np.bool_)):
                return v.item()
            return v
        out = {"title": self.title, "total": clean(self.total),
               "components": {k: clean(v) for k, v in self.components.items()},
               "kinds": dict(self.kinds)}
        if self.label:
            out["label"] = self.label
        if self.phases is not None:
            out["phases"] = {k: clean(v) for k, v in self.phases.items()}
            out["peak_phase"] = clean(self.peak_phase)
            if self.peak_at is not None:
                out["peak_at"] = clean(self.peak_at)
            if self.phase_components is not None:
                out["phase_components"] = {p: {k: clean(v) for k, v in c.items()}
                                           for p, c in self.phase_components.items()}
        if self.children:
            out["children"] = [c.to_dict() for c in self.children]
        if self.meta:
            out["meta"] = {k: clean(v) for k, v in self.meta.items()}
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
        if self.children:
            lines.append("")
            lines.append("parts:" + "".join(
                f"  {c.label or c.title}={fmt_bytes(c.at(self.peak_phase) if self.peak_phase else c.total, 'GiB')}"
                for c in self.children))
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
        """Draw this breakdown as one stacked bar at ``x`` (of ``width``) on ``ax`` (created
        if None); returns ``ax``."""
        from .plotting import stacked_bar
        return stacked_bar([self], ax=ax, unit=unit, labels=[label or self.title], colors=colors,
                           positions=[x], width=width)


def combine(parts, title: str = "", meta: Mapping | None = None) -> Breakdown:
    """Several results that share one device over time, as one result with ``children``.

    The phases are the union of the parts' phases (in order of appearance); a part
    without phases is live, unchanged, in every phase (weights, say); a part with phases
    must have every phase of the union (else ``ValueError``: no phase is dropped
    silently).  In each phase the parts add up; the peak is the largest phase total
    (``max over phases of the sum across parts``), and the components are the parts'
    components at that phase, added by name.  Without phases anywhere the parts are
    simply added.  Chapters 05 (ranks) and 06 (RL roles) build on this.
    """
    parts = list(parts)
    if not parts:
        raise ValueError("combine: no parts")
    if any(isinstance(p.total, np.ndarray) for p in parts):
        raise ValueError("combine: parts must be scalar results, not array sweeps")
    order: list[str] = []
    for p in parts:
        for ph in p.phases or ():
            if ph not in order:
                order.append(ph)
    kinds: dict = {}
    for p in parts:
        for k, kind in p.kinds.items():
            if kinds.setdefault(k, kind) != kind:
                raise ValueError(f"combine: component {k!r} is {kinds[k]} in one part and {kind} in another")
    title = title or " + ".join(p.label or p.title for p in parts if p.label or p.title)
    meta = dict(meta or {})
    if not order:
        comps: dict = {}
        for p in parts:
            for k, v in p.components.items():
                comps[k] = comps.get(k, 0) + v
        return Breakdown(comps, title=title, kinds=kinds, children=tuple(parts), meta=meta)
    phase_totals = {ph: sum(p.at(ph) for p in parts) for ph in order}
    phase_comps = {}
    for ph in order:
        c: dict = {}
        for p in parts:
            for k, v in p._live_at(ph).items():
                c[k] = c.get(k, 0) + v
        phase_comps[ph] = c
    peak_phase = max(order, key=lambda ph: phase_totals[ph])
    peak_at = next((p.peak_at for p in parts if p.phases is not None and p.peak_phase == peak_phase
                    and p.peak_at), None)
    comps = phase_comps[peak_phase]
    return Breakdown(comps, title=title, kinds={k: kinds[k] for k in comps}, phases=phase_totals,
                     peak_phase=peak_phase, peak_at=peak_at, phase_components=phase_comps,
                     children=tuple(parts), meta=meta)
