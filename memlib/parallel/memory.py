"""``parallel_train_memory``: the training step of one rank, and how the other ranks differ (chapter 05).

The entry point of :mod:`memlib.parallel` at the level of :func:`memlib.train_memory`:
the same knobs (``batch_size`` per rank and per micro-batch, ``seq_len``, ``precision``,
``optimizer``, ``recompute``, ``attention``, ``optimizer_impl``, ``grad_accum``) plus a
:class:`~memlib.parallel.plan.Plan` (or its fields as keywords).  It returns the one
result type: rank 0's peak, phase and components (:func:`memlib.parallel.rank.rank_memory`),
with ``children`` where ranks differ:

* a pipeline's stages (``"stage 0"`` ... ``"stage pp-1"``): the first holds the
  embedding and the most micro-batches, the last the head and the logits;
* ZeRO-1's ranks, whose optimizer shares differ by whole tensors (the heaviest one is
  added when it is not rank 0).

Ranks of FSDP2, tensor, context and expert parallelism are alike (FSDP2 pads every
rank's shard to the same size; a vocabulary that ``tp`` does not divide leaves the last
rank a few rows fewer), so they have no children.  ``meta["max_peak"]`` is the largest
peak over the rank kinds (what must fit), ``meta["global_batch"]`` the sequences per
optimizer step, ``batch_size × microbatches × grad_accum × dp``.
"""
from __future__ import annotations

from dataclasses import fields
from functools import lru_cache

from ..breakdown import Breakdown
from ..scenario import DEFAULT_OPTIMIZER_IMPL
from ..spec import load_spec
from ..symbolic import evaluate
from ..validation import as_int
from .plan import Plan
from .rank import BenchSettings, rank_memory
from .state import rank_tensors

PLAN_FIELDS = tuple(f.name for f in fields(Plan))


def make_plan(plan: Plan | None = None, **fields_) -> Plan:
    """A :class:`Plan` from a Plan and/or its fields as keywords (chapter 05); unknown
    keywords raise a ``ValueError`` naming them."""
    bad = [k for k in fields_ if k not in PLAN_FIELDS]
    if bad:
        raise ValueError(f"plan: unknown field {bad[0]!r}; fields: {', '.join(PLAN_FIELDS)}")
    if plan is None:
        return Plan(**fields_)
    if not isinstance(plan, Plan):
        raise ValueError(f"plan: must be a memlib.parallel.Plan, got {type(plan).__name__}")
    return plan.with_(**fields_) if fields_ else plan


def parallel_train_memory(model, batch_size, seq_len, precision: str = "bf16", optimizer: str = "adamw",
                          recompute: str = "none", attention: str = "sdpa",
                          optimizer_impl: str = DEFAULT_OPTIMIZER_IMPL, grad_accum: int = 1,
                          plan: Plan | None = None, _bench: BenchSettings | None = None, **plan_fields) -> Breakdown:
    """Peak memory of rank 0 of a parallel training step, with children where ranks differ (chapter 05).

    ``peak = max over the step's moments of Σ rank 0's components``: its share of the
    model state (:mod:`memlib.parallel.state`), what it saves (:mod:`memlib.parallel.activations`)
    and what the plan adds (FSDP2's gathered layers and buffers, DDP's buckets, a pipeline's
    micro-batches in flight, ring attention's and expert dispatch buffers); offloaded bytes
    in ``meta["host"]``.  ``batch_size`` is per rank and per micro-batch.  Plan fields
    (``dp``, ``tp``, ``pp``, ``cp``, ``ep``, ``zero``, ``reshard_after_forward``, ``sp``,
    ``microbatches``, ``schedule``, ``offload``) may be given as keywords.
    """
    spec = load_spec(model)
    try:                                     # the same layout again (an explorer, a sweep): checked once
        plan = _checked_plan(spec, plan, tuple(plan_fields.items()))
    except TypeError:                        # a field value that cannot be hashed: checked here
        plan = make_plan(plan, **plan_fields).check(spec)
    return evaluate(_parallel_result, (batch_size, seq_len), spec, plan, precision, optimizer, recompute, attention,
                    optimizer_impl, grad_accum, _bench)


def _parallel_result(batch_size, seq_len, spec, plan: Plan, precision, optimizer, recompute, attention, optimizer_impl,
                     grad_accum, _bench) -> Breakdown:
    """:func:`parallel_train_memory` for a checked plan (evaluated through :mod:`memlib.symbolic`:
    compiled once per model, plan and knobs)."""
    kw = dict(precision=precision, optimizer=optimizer, recompute=recompute, attention=attention,
              optimizer_impl=optimizer_impl, grad_accum=grad_accum, _bench=_bench)
    main = rank_memory(spec, batch_size, seq_len, plan, stage=0, **kw)
    children = []
    if plan.pp > 1:
        children = [main] + [rank_memory(spec, batch_size, seq_len, plan, stage=s, **kw) for s in range(1, plan.pp)]
    elif plan.zero == 1:
        heavy = _heaviest_zero1_rank(spec, plan)
        if heavy:
            children = [main, rank_memory(spec, batch_size, seq_len, plan, rank=heavy, **kw)]
    meta = dict(main.meta)
    meta["global_batch"] = batch_size * plan.microbatches * grad_accum * plan.dp
    meta["max_peak"] = max([as_int(main.total)] + [as_int(c.total) for c in children])
    return Breakdown(main.components, title=main.title, kinds=main.kinds, phases=main.phases,
                     peak_phase=main.peak_phase, peak_at=main.peak_at, phase_components=main.phase_components,
                     children=tuple(children), label=main.label, meta=meta)


@lru_cache(maxsize=256)
def _checked_plan(spec, plan: Plan | None, fields: tuple) -> Plan:
    """:func:`make_plan` of ``plan`` and ``fields`` (``(name, value)`` pairs), checked against ``spec``."""
    return make_plan(plan, **dict(fields)).check(spec)


def _heaviest_zero1_rank(spec, plan: Plan) -> int:
    """The rank whose ZeroRedundancyOptimizer share is the largest (0 when it is rank 0)."""
    return _heaviest(spec, plan.tp, plan.ep, plan.pp, plan.dp)


@lru_cache(maxsize=256)
def _heaviest(spec, tp: int, ep: int, pp: int, dp: int) -> int:
    from .state import _partition
    sizes = tuple(t.numel for t in rank_tensors(spec, tp, ep, 1, pp, 0))
    totals = [sum(sizes[i] for i in part) for part in _partition(sizes, dp)]
    return max(range(dp), key=lambda r: (totals[r], -r))
