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


def zero1_partition(sizes: list[int], world: int, rank: int = 0) -> list[int]:
    """Indices of the tensors ``ZeroRedundancyOptimizer`` gives ``rank`` (chapter 05).

    PyTorch sorts the tensors by size, largest first (a stable sort), and gives each to the
    rank with the fewest elements so far (the lowest rank on ties).  Returns ``rank``'s
    indices in that sorted order (the order its local optimizer walks them).
    """
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    totals = [0] * world
    mine = []
    for i in order:
        r = min(range(world), key=lambda k: (totals[k], k))
        totals[r] += sizes[i]
        if r == rank:
            mine.append(i)
    return mine


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
