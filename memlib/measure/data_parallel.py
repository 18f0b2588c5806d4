"""Data parallelism on one rank: DDP, ZeRO-1 (DDP + ZeroRedundancyOptimizer), ZeRO-2/3 (FSDP2) (chapter 05).

Each ``setup_*`` function takes a model built under ``FakeTensorMode``, the ``DeviceMesh``
(built before fake mode) and the precision, parallelises the model with PyTorch's own code
and returns a :class:`memlib.measure.dist_run.DistRun`.  Its docstring is the scenario's
exact definition.  ``fsdp_instrumentation`` names FSDP2's buffers for the counter.
"""
from __future__ import annotations

import contextlib

import torch

from .dist_run import DistRun
from .tp_plan import decoder_layers

__all__ = ["setup_zero3", "setup_zero2", "setup_ddp", "setup_zero1", "fsdp_groups", "fsdp_instrumentation",
           "hf_loss"]


# -- FSDP2 (zero2, zero3) ----------------------------------------------------------------------------
def fsdp_groups(model):
    from torch.distributed.fsdp import FSDPModule
    out = []
    for m in model.modules():
        if isinstance(m, FSDPModule):
            g = m._get_fsdp_state()._fsdp_param_group
            if g is not None:
                out.append(g)
    return out


def fsdp_instrumentation(run, model):
    """Name FSDP2's memory while the counter runs.

    * ``unshard`` and ``wait_for_unshard`` of every parameter group run under the tag
      ``fsdp_all_gather`` (copy-in casts, the flat all-gather buffer, copy-out);
    * ``post_backward`` runs under ``fsdp_reduce_scatter`` (the reduce-scatter input,
      its dtype casts, the new sharded gradient until it is renamed ``gradients``); on entry
      the group's unsharded gradients are named ``unsharded_grads``;
    * after the warm-up step, every parameter's per-parameter all-gather output (the storage
      of its unsharded parameter, freed and refilled by ``resize_``) is named
      ``unsharded_params``.
    The wrappers are instance attributes, removed on exit.
    """
    @contextlib.contextmanager
    def instrument(counter):
        saved = []
        for g in fsdp_groups(model):
            for name, cat in (("unshard", "fsdp_all_gather"), ("wait_for_unshard", "fsdp_all_gather"),
                              ("post_backward", "fsdp_reduce_scatter")):
                orig = getattr(g, name)

                def wrapper(*a, _orig=orig, _cat=cat, _g=g, _name=name, **k):
                    if _name == "post_backward":
                        grads = []
                        for fp in _g.fsdp_params:
                            up = getattr(fp, "_unsharded_param", None)
                            if up is not None and up.grad is not None:
                                grads.append(up.grad)
                            if getattr(fp, "unsharded_accumulated_grad", None) is not None:
                                grads.append(fp.unsharded_accumulated_grad)
                        counter.categorize(grads, "unsharded_grads")
                    with counter.tagging(_cat):
                        return _orig(*a, **k)
                setattr(g, name, wrapper)
                saved.append((g, name))
        try:
            yield
        finally:
            for g, name in saved:
                if name in vars(g):
                    delattr(g, name)

    def after_warmup(counter):
        for g in fsdp_groups(model):
            for fp in g.fsdp_params:
                counter.categorize(list(fp.all_gather_outputs) + list(getattr(fp, "_unsharded_inner_tensors", [])),
                                   "unsharded_params")

    run.instrument = instrument
    run.after_warmup = after_warmup


def setup_fsdp(model, mesh, precision, reshard_after_forward):
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if precision == "mixed" else MixedPrecisionPolicy())
    layers = decoder_layers(model)
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)   # the root: FSDP2's default, no reshard after forward
    params = [p for p in model.parameters() if p.requires_grad]
    run = DistRun(model, params, forward=hf_loss(model), tracker="fsdp", autocast=False,
               meta={"fsdp_units": len(layers) + 1,
                     "mp_policy": "MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)"
                     if precision == "mixed" else None})
    fsdp_instrumentation(run, model)
    return run


def setup_zero3(model, mesh, precision, **_):
    """zero3 (FSDP2, ``reshard_after_forward=True``).

    ``fully_shard(layer, mesh=mesh, reshard_after_forward=True, mp_policy=mp)`` for every
    decoder layer, then ``fully_shard(model, mesh=mesh, mp_policy=mp)`` for the root
    (embedding, final norm, head) with FSDP2's default ``reshard_after_forward=None``, which
    for the root means *not* resharding after the forward ("the parameters would be freed
    and all-gathered immediately" for the backward, FSDP2's own comment): the root's
    parameters stay unsharded from its pre-forward to its post-backward.  Parameters, gradients and AdamW state are ``Shard(0)`` DTensors: each rank holds
    ``ceil(rows / W)`` rows of every parameter (padded).  ``mp``: ``MixedPrecisionPolicy()``
    for bf16; ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` on an fp32 model
    for mixed (no autocast).  FSDP2's defaults otherwise (implicit forward prefetch, backward
    prefetch of the previous layer, one reduce-scatter buffer kept in flight).
    """
    return setup_fsdp(model, mesh, precision, True)


def setup_zero2(model, mesh, precision, **_):
    """zero2 (FSDP2, ``reshard_after_forward=False``).

    As zero3, but every decoder layer is ``fully_shard``-ed with
    ``reshard_after_forward=False`` (the root as in zero3): every FSDP unit keeps its unsharded
    parameters from its forward until its backward (no all-gather in the backward).  Gradients are still reduce-scattered and the
    optimizer state is sharded, which is ZeRO-2's memory plus unsharded parameters held
    through the forward.
    """
    return setup_fsdp(model, mesh, precision, False)


# -- DDP and ZeRO-1 --------------------------------------------------------------------------------
def hf_loss(module):
    """``ids -> module(input_ids=ids, labels=ids, use_cache=False).loss``: the reference forward."""
    def forward(ids):
        return module(input_ids=ids, labels=ids, use_cache=False).loss
    return forward


def setup_ddp(model, mesh, precision, zero1=False, **_):
    """ddp: ``DistributedDataParallel(model)`` with its defaults.

    ``bucket_cap_mb=25``, ``gradient_as_bucket_view=False``: the reducer keeps flat gradient
    buckets (one copy of every gradient, in the parameter dtype) besides ``param.grad``.
    Parameters, gradients and AdamW state are whole on every rank.  Mixed precision: fp32
    model, autocast around the forward.  DDP is built inside the counting window (its
    buckets are allocated by the C++ reducer at construction and rebuilt after step 1).

    Two changes make DDP run under the fake group, neither allocates or frees anything in
    the measured step: ``init_sync=False`` (the construction-time parameter-shape check and
    broadcast read tensor data, which fake tensors have not), and a Python comm hook that
    does what the built-in C++ hook does -- ``bucket.div_(W)`` then an in-place
    ``all_reduce`` of the bucket -- because the fake group's ``Work`` future carries no
    tensor and the built-in hook asserts on it (``comm.cpp``: "expected the hook result is
    either a Tensor or a TensorList found None").  A third changes when buckets are
    allocated, not how many bytes they hold: the reducer's bucket *rebuild* after step 1
    (re-grouping the same gradients in the order they became ready) broadcasts bucket
    indices and reads them back, which fake tensors cannot, so it is skipped; the buckets
    built at construction (first bucket capped at 1 MiB, the others at 25 MiB) hold every
    gradient exactly once, as the rebuilt ones would.
    """
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    holder = {}
    buckets = {}     # the reducer's flat buckets, seen by the hook (no copy: the same tensors)

    def allreduce_in_place(state, bucket):
        t = bucket.buffer()
        buckets[bucket.index()] = t
        t.div_(dist.get_world_size())
        dist.all_reduce(t)
        fut = torch.futures.Future()
        fut.set_result(t)
        return fut

    def build():
        ddp = holder["ddp"] = DDP(model, init_sync=False)
        ddp.register_comm_hook(None, allreduce_in_place)
        ddp.reducer = _NoRebuildReducer(ddp.reducer)
        return ddp

    params = [p for p in model.parameters() if p.requires_grad]
    run = DistRun(model, params, forward=lambda ids: holder["ddp"](input_ids=ids, labels=ids, use_cache=False).loss,
               tracker="plain", autocast=precision == "mixed",
               meta={"ddp": "DistributedDataParallel(model), bucket_cap_mb=25, gradient_as_bucket_view=False"})
    run.build_in_window = build
    run.build_tag = "ddp_buckets"      # what DDP's constructor allocates: the reducer's flat buckets
    # MemTracker only learns of a storage made before it started when an op first returns
    # it; the buckets are first written well into the backward, so it is told of them
    run.external = lambda: list(buckets.values())
    return run


class _NoRebuildReducer:
    """A view of DDP's C++ ``Reducer`` whose ``_rebuild_buckets()`` answers False (see ``setup_ddp``)."""

    def __init__(self, reducer):
        object.__setattr__(self, "_reducer", reducer)

    def _rebuild_buckets(self):
        return False

    def __getattr__(self, name):
        return getattr(self._reducer, name)


def setup_zero1(model, mesh, precision, **_):
    """zero1: DDP (as ``ddp``) with ``ZeroRedundancyOptimizer(params, AdamW, foreach=False)``.

    ZeroRedundancyOptimizer assigns whole parameters to ranks greedily (largest first, to
    the rank with the fewest elements so far) and keeps AdamW state only for its own; after
    its step it broadcasts each parameter from its owner.  Gradients and DDP buckets stay
    whole on every rank.  Rank 0's partition is what is measured; other ranks hold other
    parameters, so their state differs by up to one parameter's size.
    """
    run = setup_ddp(model, mesh, precision)
    run.meta["zero1"] = "torch.distributed.optim.ZeroRedundancyOptimizer(optimizer_class=AdamW, foreach=False)"
    run.zero1 = True
    return run
