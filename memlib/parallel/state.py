"""The model state one rank holds: parameters, gradients, optimizer state (chapter 05).

For a rank of a :class:`~memlib.parallel.plan.Plan`, every tensor of
:func:`~memlib.parallel.tensors.param_table` is first cut by tensor parallelism
(:func:`~memlib.parallel.tensors.tp_local`), by expert parallelism (experts ``E / ep``),
by the pipeline (only the stage's layers; the embedding on the first stage, the final
norm and ``lm_head`` on the last, a tied head copied there), then sharded:

* FSDP2 (``zero`` 2, 3) shards each tensor along its first dimension over the ``dp``
  ranks: rank 0 holds ``⌈rows / dp⌉`` rows (the tensor is padded to a multiple of
  ``dp``), for parameters, gradients and optimizer state alike;
* ZeRO-1 hands whole tensors to ranks (PyTorch's ``ZeroRedundancyOptimizer``: largest
  first, each to the rank with the fewest elements so far): rank 0's optimizer state is
  that of its tensors only (:func:`zero1_partition`);
* DDP (``zero`` 0) keeps everything whole, plus its gradient buckets.

:class:`RankState` holds the numbers the step timeline needs, in bytes.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ..optimizers import tensor_state_bytes
from ..spec import ModelSpec
from .tensors import Param, ceil_div, layer_table, param_table, tp_local


@dataclass(frozen=True)
class Local:
    """One tensor as rank 0 holds it: ``rows × cols`` after TP/EP, ``shard_rows`` after FSDP2."""

    p: Param
    layer: int | None      # the layer index for a layer tensor
    rows: int
    cols: int
    shard_rows: int        # rows after FSDP2 sharding (== rows without it)
    dp: int                # ranks FSDP2 shards it over (1: not sharded)

    @property
    def numel(self) -> int:
        return self.rows * self.cols

    @property
    def padded(self) -> int:
        """Elements of the padded unsharded tensor FSDP2 all-gathers: ``⌈rows/dp⌉·dp·cols``."""
        return self.shard_rows * self.dp * self.cols

    @property
    def held(self) -> int:
        """Elements this rank stores between steps (its shard, or the whole tensor)."""
        return self.shard_rows * self.cols


def stage_layers(spec: ModelSpec, pp: int, stage: int) -> tuple[int, int]:
    """``(first, end)``: the decoder layers of pipeline stage ``stage`` of ``pp``, ``[s·L/pp, (s+1)·L/pp)``
    (PyTorch's pipelining bench splits contiguous runs the same way; chapter 05)."""
    L = spec.num_layers
    return stage * L // pp, (stage + 1) * L // pp


@lru_cache(maxsize=512)
def rank_tensors(spec: ModelSpec, tp: int = 1, ep: int = 1, fsdp_dp: int = 1, pp: int = 1,
                 stage: int = 0) -> tuple[Local, ...]:
    """The tensors rank 0 of pipeline stage ``stage`` holds, in registration order (chapter 05).

    ``fsdp_dp``: the ranks FSDP2 shards over (1 without FSDP2); experts are sharded over
    ``fsdp_dp / ep`` ranks (transformers' ``efsdp`` mesh), the other tensors over
    ``fsdp_dp``.  A tied ``lm_head`` on a last stage that is not the first is a copy of
    the embedding (the tie cannot span two ranks).
    """
    first, end = stage_layers(spec, pp, stage)
    is_first, is_last = stage == 0, stage == pp - 1
    table = param_table(spec)
    head = [_local(spec, p, None, tp, ep, fsdp_dp) for p in table if p.unit == "root" and p.part == "embed"
            and is_first]
    layers = [_local(spec, p, i, tp, ep, fsdp_dp) for i in range(first, end)
              for p in layer_table(spec, spec.moe_layers[i])]
    tail = [_local(spec, p, None, tp, ep, fsdp_dp) for p in table if p.unit == "root" and p.part != "embed"
            and is_last]
    if spec.tie_word_embeddings and is_last and not is_first:
        emb = next(p for p in table if p.name == "embed")
        tail.append(_local(spec, emb._replace(name="lm_head", part="head"), None, tp, ep, fsdp_dp))
    return tuple(head + layers + tail)


def _local(spec: ModelSpec, p: Param, layer, tp: int, ep: int, fsdp_dp: int) -> Local:
    rows, cols = tp_local(spec, p, tp)
    dp = fsdp_dp
    if p.name.startswith("experts."):
        rows = ceil_div(rows, ep)
        dp = max(fsdp_dp // ep, 1)
    shard = ceil_div(rows, dp) if dp > 1 else rows
    return Local(p, layer, rows, cols, shard, dp)


def zero1_partition(sizes, world: int, rank: int = 0) -> list[int]:
    """Indices of the tensors ``ZeroRedundancyOptimizer`` gives ``rank`` (chapter 05).

    PyTorch sorts the tensors by size, largest first (a stable sort), and gives each to the
    rank with the fewest elements so far (the lowest rank on ties).  Returns ``rank``'s
    indices in that sorted order (the order its local optimizer walks them).
    """
    return list(_partition(tuple(sizes), world)[rank])


@lru_cache(maxsize=64)
def _partition(sizes: tuple, world: int) -> tuple:
    import heapq
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    heap = [(0, r) for r in range(world)]          # (elements so far, rank): the lowest rank on ties
    out = [[] for _ in range(world)]
    for i in order:
        total, r = heapq.heappop(heap)
        out[r].append(i)
        heapq.heappush(heap, (total + sizes[i], r))
    return tuple(tuple(x) for x in out)


def optimizer_bytes(tensors, optimizer: str, state_bytes: int) -> int:
    """Optimizer state of ``tensors`` (:class:`Local` or ``(rows, cols)`` pairs) in
    ``state_bytes`` per value: chapter 04's formulas on the rank's own shapes."""
    mats, vectors = [], 0
    for t in tensors:
        r, c = (t.shard_rows, t.cols) if isinstance(t, Local) else t
        if c == 1 or r == 1:
            vectors += r * c
        else:
            mats.append((r, c, 1))
    return tensor_state_bytes(mats, vectors, optimizer, state_bytes)


@lru_cache(maxsize=1024)
def split_tensors(spec: ModelSpec, tp: int = 1, ep: int = 1, fsdp_dp: int = 1, pp: int = 1,
                  stage: int = 0) -> tuple[dict, tuple]:
    """``({moe: the tensors of one layer of that kind}, the root tensors)`` of pipeline
    stage ``stage``'s rank 0, in registration order (chapter 05).  Identical layers hold
    identical tensors, so one layer of each kind stands for all (``layer`` is the stage's
    first layer of the kind)."""
    first, end = stage_layers(spec, pp, stage)
    is_first, is_last = stage == 0, stage == pp - 1
    table = param_table(spec)
    per = {}
    for i in range(first, end):
        moe = spec.moe_layers[i]
        if moe not in per:
            per[moe] = tuple(_local(spec, p, i, tp, ep, fsdp_dp) for p in layer_table(spec, moe))
    head = [_local(spec, p, None, tp, ep, fsdp_dp) for p in table if p.unit == "root" and p.part == "embed"
            and is_first]
    tail = [_local(spec, p, None, tp, ep, fsdp_dp) for p in table if p.unit == "root" and p.part != "embed"
            and is_last]
    if spec.tie_word_embeddings and is_last and not is_first:
        emb = next(p for p in table if p.name == "embed")
        tail.append(_local(spec, emb._replace(name="lm_head", part="head"), None, tp, ep, fsdp_dp))
    return per, tuple(head + tail)


def _counts(spec: ModelSpec, pp: int, stage: int) -> dict:
    first, end = stage_layers(spec, pp, stage)
    out: dict = {}
    for i in range(first, end):
        out[spec.moe_layers[i]] = out.get(spec.moe_layers[i], 0) + 1
    return out


@lru_cache(maxsize=1024)
def held_elements(spec: ModelSpec, tp: int, ep: int, fsdp_dp: int, pp: int, stage: int) -> tuple[int, int]:
    """``(elements held between steps, elements of the unsharded tensors)`` of this rank (chapter 05)."""
    per, root = split_tensors(spec, tp, ep, fsdp_dp, pp, stage)
    counts = _counts(spec, pp, stage)
    held = sum(t.held for t in root) + sum(n * sum(t.held for t in per[k]) for k, n in counts.items())
    numel = sum(t.numel for t in root) + sum(n * sum(t.numel for t in per[k]) for k, n in counts.items())
    return held, numel


def _order_sample(spec: ModelSpec, per: dict, root: tuple, pp: int, stage: int) -> list:
    """The rank's tensors in registration order with each run of identical layers cut to its
    first two: every pair of neighbours of the full order appears in it (for AdamW's loop)."""
    first, end = stage_layers(spec, pp, stage)
    out = [t for t in root if t.p.part == "embed"]
    i = first
    while i < end:
        j = i
        while j < end and spec.moe_layers[j] == spec.moe_layers[i]:
            j += 1
        out += list(per[spec.moe_layers[i]]) * min(j - i, 2)
        i = j
    return out + [t for t in root if t.p.part != "embed"]


@lru_cache(maxsize=1024)
def optimizer_state(spec: ModelSpec, tp: int, ep: int, fsdp_dp: int, pp: int, stage: int, optimizer: str,
                    optimizer_impl: str, state_bytes: int, zero1_dp: int = 1, rank: int = 0) -> tuple[int, int]:
    """``(optimizer state, step temporaries)`` in bytes for the tensors this rank updates
    (all it holds; under ZeRO-1 over ``zero1_dp`` ranks, its own whole tensors), chapter 05."""
    from ..training import step_temporaries
    if zero1_dp > 1:
        tensors = rank_tensors(spec, tp, ep, fsdp_dp, pp, stage)
        tensors = [tensors[i] for i in zero1_partition([t.numel for t in tensors], zero1_dp, rank)]
        return (optimizer_bytes(tensors, optimizer, state_bytes),
                step_temporaries(optimizer, optimizer_impl, [t.held for t in tensors], state_bytes))
    per, root = split_tensors(spec, tp, ep, fsdp_dp, pp, stage)
    counts = _counts(spec, pp, stage)
    opt = optimizer_bytes(root, optimizer, state_bytes) + sum(
        n * optimizer_bytes(per[k], optimizer, state_bytes) for k, n in counts.items())
    if optimizer_impl == "foreach" and optimizer == "adamw":
        extra = held_elements(spec, tp, ep, fsdp_dp, pp, stage)[0] * state_bytes
    else:
        extra = step_temporaries(optimizer, optimizer_impl, [t.held for t in _order_sample(spec, per, root, pp, stage)],
                                 state_bytes)
    return opt, extra
