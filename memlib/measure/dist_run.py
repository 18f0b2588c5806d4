"""What a parallel scenario hands the bench's train step: the module, its parameters, its hooks (chapter 05).

Every scenario of :mod:`memlib.measure.parallel` builds one :class:`DistRun`; the measured
step (:func:`memlib.measure.parallel.measure_parallel_train`) only talks to this object.
"""
from __future__ import annotations

import contextlib

__all__ = ["DistRun"]


class DistRun:
    """What a scenario built: the module to train, its optimizer and how to instrument it.

    ``forward(ids) -> loss`` (the standard loop) or ``step_fn(ids, counter, autocast)``
    (a scenario that runs its own forward and backward, e.g. a pipeline schedule);
    ``tracker``: ``"fsdp"`` (cross-check with ``FSDPMemTracker``) or ``"plain"``
    (``MemTracker``); ``autocast``: run the forward under autocast (mixed precision);
    ``instrument(counter)``: a context manager active for both steps (names a scenario's
    buffers); ``after_warmup(counter)``: called before the measured step; ``grads()``: the
    gradients to name ``gradients``; ``external()``: tensors made before the measured step
    that PyTorch's tracker must be told about; ``build_in_window()``: a constructor to run
    inside the counting window, its allocations named ``build_tag`` (DDP's buckets);
    ``zero1``: shard the optimizer with ``ZeroRedundancyOptimizer``.
    """

    def __init__(self, module, params, *, forward=None, step_fn=None, tracker="plain",
                 autocast=False, meta=None, optimizer=None):
        self.module = module
        self.params = params
        self.forward = forward            # ids -> loss (for the standard loop)
        self.step_fn = step_fn            # (ids, counter, autocast_ctx) -> None: runs fwd + bwd itself
        self.tracker = tracker            # "fsdp" or "plain"
        self.autocast = autocast
        self.meta = meta or {}
        self.opt = optimizer
        self.instrument = lambda counter: contextlib.nullcontext()
        self.after_warmup = lambda counter: None
        self.grads = lambda: [p.grad for p in self.params if p.grad is not None]
        self.external = lambda: []        # tensors made before the measured step, for MemTracker
        self.build_in_window = None
        self.build_tag = None
        self.zero1 = False
