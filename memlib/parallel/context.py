"""Context parallelism: the sequence split over ranks, with ring attention (chapter 05).

With ``cp`` context-parallel ranks each rank runs every layer on ``S / cp`` of the
sequence's tokens: its activations are those of a ``seq_len / cp`` step
(:func:`memlib.parallel.rank.rank_memory` evaluates the scenario there), so they shrink by
``cp`` — but attention needs every key and value.  PyTorch's ``context_parallel``
(``torch.distributed.tensor.experimental``) rotates them by all-gather by default: inside
each layer's attention the rank holds the K and V of the whole sequence,
``2 · B·S·kv`` bf16 (``kv = n_kv_heads · head_dim``), next to its own packed copy
``2 · B·(S/cp)·kv``; the backward gathers them again and passes the K/V gradients around
the ring (two more ``B·(S/cp)·kv`` blocks for dK and dV, fp32 accumulators).  These are
the ``comm`` component.  Not measured by the bench (no context-parallel scenario): the
buffers follow PyTorch's ``_templated_ring_attention`` as read in torch 2.13.
"""
from __future__ import annotations

from .timeline import RankMark


def ring_buffers(spec, batch_size, seq_len, cp: int, backward: bool = False) -> int:
    """Bytes of ring attention's K/V buffers in one layer (module docstring; chapter 05)."""
    if spec.is_mla:
        kv = spec.num_heads * (spec.qk_nope_head_dim + spec.qk_rope_head_dim + spec.v_head_dim) // 2
    else:
        kv = spec.num_kv_heads * spec.head_dim
    local = batch_size * (seq_len // cp) * kv
    out = 2 * 2 * batch_size * seq_len * kv + 2 * 2 * local
    if backward:
        out += 2 * 4 * local
    return out


def cp_marks(spec, sc, plan, marks, seq_len) -> list[RankMark]:
    """``marks`` with ring attention's buffers where a layer's attention runs (chapter 05)."""
    fwd = ring_buffers(spec, sc.batch_size, seq_len, plan.cp)
    bwd = ring_buffers(spec, sc.batch_size, seq_len, plan.cp, backward=True)
    out = []
    for mk in marks:
        extra = 0
        if mk.layer is not None and mk.phase == "forward" and mk.part is None:
            extra = fwd
        elif mk.layer is not None and mk.phase == "backward" and mk.part == "attention":
            extra = bwd
        if extra:
            mk = mk._replace(parts=dict(mk.parts, comm=mk.parts.get("comm", 0) + extra))
        out.append(mk)
    return out
