"""One rank's step as a list of moments, and its peak (chapter 05).

Chapter 04's step timeline (:func:`memlib.training.step_timeline`) gives, for one rank's
inputs, the activations, transients and autocast cache at every moment of the step.  A
parallel plan adds its own components at those moments (FSDP2's gathered parameters and
reduce-scatter buffers, DDP's buckets, a pipeline's other micro-batches...) and a few
moments of its own (FSDP2's unshard before a layer, its reduce-scatter after one).
:class:`RankMark` is such a moment; :func:`summarize` turns them into the one result type.
"""
from __future__ import annotations

from typing import NamedTuple

from ..breakdown import Breakdown
from ..scenario import PHASES
from ..validation import as_int

#: Every component a rank can hold, bottom to top, with its kind.
COMPONENT_KINDS = {
    "weights": "model_state", "gradients": "model_state", "optimizer": "model_state",
    "unsharded_params": "transient", "unsharded_grads": "transient",
    "fsdp_all_gather": "overhead", "fsdp_reduce_scatter": "overhead", "ddp_buckets": "overhead",
    "pp_buffers": "overhead", "comm": "overhead",
    "autocast_cache": "transient", "in_flight_activations": "activation", "activations": "activation",
    "transient": "transient",
}
COMPONENTS = tuple(COMPONENT_KINDS)

#: What each component is, in one line (the chapter's table and the CLI's ``--explain``).
COMPONENT_DOCS = {
    "weights": "the parameters this rank stores (its shard, its TP slice, its stage)",
    "gradients": "their gradients (sharded ones under FSDP2)",
    "optimizer": "the optimizer state of the parameters this rank updates",
    "unsharded_params": "FSDP2: layers' parameters gathered whole (root + current layer; all layers under zero=2)",
    "unsharded_grads": "FSDP2: whole gradients of the layer being differentiated (and of the root) before "
                       "the reduce-scatter",
    "fsdp_all_gather": "FSDP2: the flat all-gather buffers of the layer gathered next (prefetch)",
    "fsdp_reduce_scatter": "FSDP2: the reduce-scatter input of the last layer reduced (one kept in flight)",
    "ddp_buckets": "DDP: the flat gradient buckets (one more copy of every gradient)",
    "pp_buffers": "pipeline: receive buffers, one per micro-batch (activations in, gradients back)",
    "comm": "collective outputs: ring-attention K/V blocks, all-to-all dispatch buffers",
    "autocast_cache": "bf16 weight copies autocast keeps (mixed precision without FSDP2)",
    "in_flight_activations": "pipeline: what the other in-flight micro-batches saved for their backward",
    "activations": "what this micro-batch saved for the backward",
    "transient": "temporaries: the loss's buffers, gradients of activations, optimizer temporaries",
}


class RankMark(NamedTuple):
    """The live bytes of one rank at one moment: ``parts`` maps components to bytes (chapter 05)."""

    phase: str
    label: str
    parts: dict
    layer: int | None = None
    part: str | None = None

    @property
    def total(self) -> int:
        return sum(self.parts.values())


def from_step_mark(mk, extra: dict | None = None, **replace) -> RankMark:
    """A :class:`RankMark` from a :class:`memlib.training.Mark`, plus ``extra`` components."""
    parts = {k: getattr(mk, k) for k in ("weights", "optimizer", "gradients", "autocast_cache", "activations",
                                         "transient")}
    parts.update(replace)
    for k, v in (extra or {}).items():
        parts[k] = parts.get(k, 0) + v
    return RankMark(mk.phase, mk.label, parts, mk.layer, mk.part)


def summarize(marks: list[RankMark], title: str, meta: dict, label: str = "") -> Breakdown:
    """The peak of a rank's moments as a Breakdown (chapter 05): components live at the
    peak (every component that is ever non-zero is listed, in :data:`COMPONENTS` order),
    each phase's peak and what is live then, the peak phase and the moment."""
    best_of: dict = {}
    for i, mk in enumerate(marks):
        j = best_of.get(mk.phase)
        if j is None or mk.total > marks[j].total:
            best_of[mk.phase] = i
    best = max(best_of.values(), key=lambda i: (marks[i].total, -i))
    used = [c for c in COMPONENTS if any(mk.parts.get(c, 0) for mk in marks) or c in ("weights", "optimizer")]

    def comps(mk):
        return {c: as_int(mk.parts.get(c, 0)) for c in used}
    phases = {ph: as_int(marks[best_of[ph]].total) for ph in PHASES if ph in best_of}
    meta = dict(meta, marks=marks, timeline=[(mk.phase, mk.label, as_int(mk.total)) for mk in marks])
    return Breakdown(comps(marks[best]), title=title, kinds={c: COMPONENT_KINDS[c] for c in used},
                     phases=phases, phase_components={ph: comps(marks[best_of[ph]]) for ph in phases},
                     peak_phase=marks[best].phase, peak_at=marks[best].label, meta=meta, label=label)


def interpolate_layers(marks, want) -> list:
    """Chapter 04's step marks with the backward marks of the layers in ``want`` added where
    they fall strictly inside a run of identical layers (chapter 05).

    The step timeline marks only the two ends of a run, because on one GPU every
    component changes by the same amount from one layer to the next; a plan's own
    buffers can change at a run's second layer (FSDP2 prefetches the previous layer
    except before the first), so those layers get marks too, interpolated exactly
    between the ends.
    """
    want = set(want)
    out = list(marks)
    k = 0
    while k + 1 < len(out):
        hi_a, lo_m = out[k], out[k + 1]
        if (hi_a.phase == "backward" and lo_m.phase == "backward" and hi_a.part == "attention"
                and lo_m.part == "mlp" and hi_a.layer is not None and lo_m.layer is not None
                and hi_a.layer - lo_m.layer > 1 and k >= 1 and k + 2 < len(out)):
            hi_m, lo_a = out[k - 1], out[k + 2]
            hi, lo = hi_a.layer, lo_m.layer
            new = []
            for j in sorted((j for j in want if lo < j < hi), reverse=True):
                for top, bottom in ((hi_m, lo_m), (hi_a, lo_a)):
                    new.append(_between(top, bottom, hi, lo, j))
            out[k + 1:k + 1] = new
            k += len(new)
        k += 1
    return out


def _between(top, bottom, hi: int, lo: int, j: int):
    """The mark of layer ``j`` on the straight line from layer ``hi``'s mark to layer ``lo``'s."""
    vals = {}
    for f in ("weights", "optimizer", "gradients", "autocast_cache", "activations", "transient"):
        a, b = getattr(top, f), getattr(bottom, f)
        vals[f] = a + (b - a) * (hi - j) // (hi - lo)
    return top._replace(label=top.label.replace(f"layer {hi}", f"layer {j}"), layer=j, **vals)
