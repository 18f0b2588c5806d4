"""From the moments of an RL iteration to one result, by phase and by role (chapter 06).

An iteration is a list of *moments* ``(phase, label, {role: {part: bytes}})``: what each
role holds at that instant.  Each phase's peak is its largest moment (the first on ties);
each role becomes a :class:`memlib.Breakdown` whose ``phases`` are its bytes at those
moments, and :func:`memlib.breakdown.combine` adds the roles up::

    peak = max over phases (Σ over roles of what the role holds at that phase's peak)

so the result's ``phases``, ``peak_phase`` and ``children`` (the roles) come out of the
one rule every composed result in memlib follows.
"""
from __future__ import annotations

from ..breakdown import Breakdown, combine
from ..validation import as_int

#: The phases of one iteration, in order (the bench's names).
PHASES = ("generate", "score", "train.forward", "train.backward", "train.step")
#: The kind of every part a role can hold.
PART_KINDS = {"weights": "model_state", "adapters": "model_state", "optimizer": "model_state",
              "gradients": "model_state", "activations": "activation", "logprobs": "activation",
              "logps": "activation", "scores": "activation", "values": "activation",
              "autocast_cache": "transient", "logits": "transient", "transient": "transient",
              "kv_cache": "kv", "non_torch": "overhead", "cuda_graphs": "overhead"}


def moment_total(moment) -> int:
    """Bytes live at one moment: ``Σ roles Σ parts`` (chapter 06)."""
    return sum(sum(parts.values()) for parts in moment[2].values())


def phase_peaks(moments, totals=None) -> dict:
    """``{phase: index of its largest moment}`` (the first on ties), in :data:`PHASES` order (chapter 06).

    ``totals``: the moments' :func:`moment_total`, when the caller has them already."""
    if totals is None:
        totals = [moment_total(m) for m in moments]
    best: dict = {}
    for i, m in enumerate(moments):
        j = best.get(m[0])
        if j is None or totals[i] > totals[j]:
            best[m[0]] = i
    return {ph: best[ph] for ph in PHASES if ph in best}


def summarize(moments, roles, title: str, meta: dict, role_titles: dict | None = None) -> Breakdown:
    """The iteration as one phased :class:`memlib.Breakdown` with one child per role (chapter 06).

    ``roles``: the role names in display order.  Each child is labelled with its role; its
    components are ``"<role>.<part>"``; ``meta["timeline"]`` lists every moment as
    ``(phase, label, bytes)`` and ``meta["peak_moment"]`` names the peak's.
    """
    totals = [moment_total(m) for m in moments]
    peaks = phase_peaks(moments, totals)
    if not peaks:
        raise ValueError("summarize: no moments")
    overall = max(peaks, key=lambda ph: (totals[peaks[ph]], -peaks[ph]))
    children = []
    for role in roles:
        at = {ph: {f"{role}.{k}": as_int(v) for k, v in moments[i][2].get(role, {}).items() if v}
              for ph, i in peaks.items()}
        comps = at[overall]
        kinds = {k: PART_KINDS[k.split(".", 1)[1]] for ph in at for k in at[ph]}
        children.append(Breakdown(comps, title=(role_titles or {}).get(role, role),
                                  kinds={k: kinds[k] for k in comps},
                                  phases={ph: sum(c.values()) for ph, c in at.items()}, peak_phase=overall,
                                  peak_at=moments[peaks[overall]][1], phase_components=at, label=role))
    meta = dict(meta, timeline=[(m[0], m[1], t) for m, t in zip(moments, totals)],
                peak_moment=moments[peaks[overall]][1],
                phase_moments={ph: moments[i][1] for ph, i in peaks.items()})
    return combine(children, title=title, meta=meta)
