"""Expert parallelism: experts split over ranks, tokens dispatched by all-to-all (chapter 05).

With ``ep`` expert-parallel ranks, rank ``r`` holds experts ``[r·E/ep, (r+1)·E/ep)``
whole (:func:`memlib.parallel.state.rank_tensors` divides the expert tensors' first
dimension by ``ep``; FSDP2 shards them further over ``dp / ep`` ranks, transformers'
``efsdp`` mesh).  In each MoE layer the ``T·k`` (token, expert) pairs of the rank are
sorted by expert and sent to the experts' ranks with an all-to-all; the results come
back with a second one.  Under uniform routing a rank receives as many pairs as it
sends, so its experts process ``T·k`` rows, as on one GPU, and the saved activations are
chapter 03's.  What expert parallelism adds are the dispatch buffers (``comm``): the
sorted copy of the tokens to send and the received ones, ``2 · T·k·H`` bf16 while a
layer dispatches, and the same pair when the outputs come back.  Real routing is uneven:
a rank that receives more pairs holds proportionally larger buffers and activations.
"""
from __future__ import annotations

from .timeline import RankMark


def dispatch_bytes(spec, sc) -> object:
    """Bytes of one MoE layer's all-to-all buffers under uniform routing: the sorted tokens
    sent and the tokens received, ``2 · 2·T·k·H`` (chapter 05)."""
    return 2 * 2 * sc.tokens * spec.experts_per_token * spec.hidden_size


def ep_marks(spec, sc, plan, marks) -> list[RankMark]:
    """``marks`` with the dispatch buffers added where an MoE layer runs (forward) or is
    differentiated (its MLP half in the backward)."""
    extra = dispatch_bytes(spec, sc)
    out = []
    for mk in marks:
        i = mk.layer
        moe = i is not None and spec.moe_layers[i]
        if moe and ((mk.phase == "forward" and mk.part is None) or (mk.phase == "backward" and mk.part == "mlp")):
            mk = mk._replace(parts=dict(mk.parts, comm=mk.parts.get("comm", 0) + extra))
        out.append(mk)
    return out
