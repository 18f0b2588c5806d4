"""The distributed bench: one rank's memory in a training step under DP, ZeRO, TP, SP, PP and EP (chapter 05).

Everything runs in one CPU process as rank ``rank`` (default 0) of a world of ``W``, with
PyTorch's fake process group (:mod:`memlib.measure.fake_dist`): the ``DeviceMesh`` is built
first, then the model is built under ``FakeTensorMode`` and parallelised by PyTorch's (or
transformers') own code.  Collectives move no data but allocate their outputs, so
all-gather buffers, unsharded gradients and redistributions are counted as they are.

**The train step** is DESIGN section 4's: ``model.train()``, ``AdamW(foreach=False)`` over
the parameters this rank holds, a forward with ``labels=input_ids`` (``use_cache=False``),
``loss.backward()``, ``opt.step()``, ``opt.zero_grad(set_to_none=True)``; two steps, the
second measured after ``gc.collect()``.  ``batch_size`` is per rank (the micro-batch).

**Precision.**  ``"bf16"``: a bf16 model, gradients and optimizer state.  ``"mixed"``: an
fp32 model; FSDP2 scenarios (zero2, zero3, ep) use FSDP2's
``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` and no autocast; the others run
the forward only under ``torch.autocast(bfloat16)`` (with the CUDA op list emulated on the
CPU, :mod:`memlib.measure.autocast`), the backward outside it.

**Counting** uses :class:`memlib.measure.dist_counter.DistStorageCounter` (DTensor locals,
FSDP2's storage resizes, fake ``wait_tensor``, DTensor's nested fake mode).  Every run is
cross-checked with PyTorch's own ``torch.distributed._tools`` tracker (``FSDPMemTracker``
for FSDP2 scenarios, ``MemTracker`` otherwise), nested inside the counter over the measured
step; ``meta["crosscheck"]`` holds both peaks and their difference in bytes.  Both trackers
see the input batch (registered with both); the reported ``train_peak`` excludes it, as
:func:`memlib.measure.measure_train` does.

The scenarios and their exact definitions are the docstrings of the ``_setup_*`` functions
below; :data:`SCENARIOS` lists them.  :func:`measure_parallel_train` is the entry point.
"""
from __future__ import annotations

import contextlib
import gc
import time

import torch

from ..breakdown import Breakdown
from ..validation import choice, positive_int
from .dist_counter import DistStorageCounter, local_tensors
from .fake_dist import cpu_mesh, fake_world
from .scenarios import Session, _opt_state_tensors, attention_kernel
from .tp_plan import apply_tp, decoder_layers

__all__ = ["measure_parallel_train", "SCENARIOS", "PRECISIONS", "SCHEDULES"]

SCENARIOS = ("ddp", "zero1", "zero2", "zero3", "tp", "tp_sp", "pp", "ep")
PRECISIONS = ("bf16", "mixed")
SCHEDULES = ("1f1b", "gpipe")
PHASES = ("forward", "backward", "step")

#: categories the counter can put on a storage, in the order components are reported
CATEGORIES = ("weights", "buffers", "gradients", "optimizer", "unsharded_params", "unsharded_grads",
              "fsdp_all_gather", "fsdp_reduce_scatter", "ddp_buckets", "comm", "pp_buffers", "activations")


class _Run:
    """What a scenario built: the module to train, its optimizer and how to instrument it."""

    def __init__(self, module, params, *, forward=None, step_fn=None, tracker="plain", fsdp=False,
                 autocast=False, meta=None, optimizer=None):
        self.module = module
        self.params = params
        self.forward = forward            # ids -> loss (for the standard loop)
        self.step_fn = step_fn            # (ids, counter, autocast_ctx) -> None: runs fwd + bwd itself
        self.tracker = tracker            # "fsdp" or "plain"
        self.fsdp = fsdp
        self.autocast = autocast
        self.meta = meta or {}
        self.opt = optimizer
        self.instrument = lambda counter: contextlib.nullcontext()
        self.after_warmup = lambda counter: None
        self.grads = lambda: [p.grad for p in self.params if p.grad is not None]
        self.external = lambda: []        # tensors made before the measured step, for MemTracker


# -- FSDP2 (zero2, zero3) ----------------------------------------------------------------------
def _fsdp_groups(model):
    from torch.distributed.fsdp import FSDPModule
    out = []
    for m in model.modules():
        if isinstance(m, FSDPModule):
            g = m._get_fsdp_state()._fsdp_param_group
            if g is not None:
                out.append(g)
    return out


def _fsdp_instrumentation(run, model):
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
        for g in _fsdp_groups(model):
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
        for g in _fsdp_groups(model):
            for fp in g.fsdp_params:
                counter.categorize(list(fp.all_gather_outputs) + list(getattr(fp, "_unsharded_inner_tensors", [])),
                                   "unsharded_params")

    run.instrument = instrument
    run.after_warmup = after_warmup


def _setup_fsdp(model, mesh, precision, reshard_after_forward):
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if precision == "mixed" else MixedPrecisionPolicy())
    layers = decoder_layers(model)
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)   # the root: FSDP2's default, no reshard after forward
    params = [p for p in model.parameters() if p.requires_grad]
    run = _Run(model, params, forward=_hf_loss(model), tracker="fsdp", fsdp=True, autocast=False,
               meta={"fsdp_units": len(layers) + 1,
                     "mp_policy": "MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)"
                     if precision == "mixed" else None})
    _fsdp_instrumentation(run, model)
    return run


def _setup_zero3(model, mesh, precision, **_):
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
    return _setup_fsdp(model, mesh, precision, True)


def _setup_zero2(model, mesh, precision, **_):
    """zero2 (FSDP2, ``reshard_after_forward=False``).

    As zero3, but every decoder layer is ``fully_shard``-ed with
    ``reshard_after_forward=False`` (the root as in zero3): every FSDP unit keeps its unsharded
    parameters from its forward until its backward (no all-gather in the backward).  Gradients are still reduce-scattered and the
    optimizer state is sharded, which is ZeRO-2's memory plus unsharded parameters held
    through the forward.
    """
    return _setup_fsdp(model, mesh, precision, False)


# -- DDP and ZeRO-1 ------------------------------------------------------------------------------
def _hf_loss(module):
    def forward(ids):
        return module(input_ids=ids, labels=ids, use_cache=False).loss
    return forward


def _setup_ddp(model, mesh, precision, zero1=False, **_):
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

    def allreduce_in_place(state, bucket):
        t = bucket.buffer()
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
    run = _Run(model, params, forward=lambda ids: holder["ddp"](input_ids=ids, labels=ids, use_cache=False).loss,
               tracker="plain", autocast=precision == "mixed",
               meta={"ddp": "DistributedDataParallel(model), bucket_cap_mb=25, gradient_as_bucket_view=False"})
    run.build_in_window = build
    run.build_tag = "ddp_buckets"      # what DDP's constructor allocates: the reducer's flat buckets
    return run


class _NoRebuildReducer:
    """A view of DDP's C++ ``Reducer`` whose ``_rebuild_buckets()`` answers False (see ``_setup_ddp``)."""

    def __init__(self, reducer):
        object.__setattr__(self, "_reducer", reducer)

    def _rebuild_buckets(self):
        return False

    def __getattr__(self, name):
        return getattr(self._reducer, name)


def _setup_zero1(model, mesh, precision, **_):
    """zero1: DDP (as ``ddp``) with ``ZeroRedundancyOptimizer(params, AdamW, foreach=False)``.

    ZeroRedundancyOptimizer assigns whole parameters to ranks greedily (largest first, to
    the rank with the fewest elements so far) and keeps AdamW state only for its own; after
    its step it broadcasts each parameter from its owner.  Gradients and DDP buckets stay
    whole on every rank.  Rank 0's partition is what is measured; other ranks hold other
    parameters, so their state differs by up to one parameter's size.
    """
    run = _setup_ddp(model, mesh, precision)
    run.meta["zero1"] = "torch.distributed.optim.ZeroRedundancyOptimizer(optimizer_class=AdamW, foreach=False)"
    run.zero1 = True
    return run


# -- tensor parallelism --------------------------------------------------------------------------
def _setup_tp(model, mesh, precision, sp=False, **_):
    """tp: the architecture's ``base_model_tp_plan`` with ``parallelize_module`` (no SP).

    Per decoder layer: ``colwise`` -> ``ColwiseParallel()``, ``rowwise`` ->
    ``RowwiseParallel()`` (``colwise_gather_output`` / ``rowwise_split_input``, the fused-QKV
    styles, -> ``ColwiseParallel(output_layouts=Replicate())`` /
    ``RowwiseParallel(input_layouts=Replicate())``); every other entry and every norm stays
    replicated.  ``embed_tokens``: ``RowwiseParallel(input_layouts=Replicate())`` (vocabulary
    rows sharded, output all-reduced); ``lm_head``: ``ColwiseParallel(output_layouts=Replicate())``
    (vocabulary rows sharded, logits all-gathered whole); a tied head keeps sharing the
    embedding's shard.  Activations between blocks are whole (b, s, h) on every rank.
    Mixed precision: fp32 model, autocast around the forward.  ``position_ids`` are passed
    explicitly (``arange(s)``).  See :mod:`memlib.measure.tp_plan`.
    """
    plan = apply_tp(model, mesh, sp=sp)
    params = [p for p in model.parameters() if p.requires_grad]

    def forward(ids):
        pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        return model(input_ids=ids, labels=ids, position_ids=pos, use_cache=False).loss
    return _Run(model, params, forward=forward, tracker="plain", autocast=precision == "mixed",
                meta={"tp_plan": plan})


def _setup_tp_sp(model, mesh, precision, **_):
    """tp_sp: tp plus sequence parallelism (torchtitan's layout).

    As tp, plus: ``SequenceParallel()`` on every norm that is a direct child of a decoder
    layer and on the final norm; ``PrepareModuleInput`` ``Shard(1) -> Replicate()`` (an
    all-gather over the sequence) on the attention block (its ``hidden_states`` keyword) and on
    the MLP; ``rowwise`` layers ``RowwiseParallel(output_layouts=Shard(1))`` (reduce-scatter);
    ``embed_tokens`` ``RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1))``;
    ``lm_head`` ``ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate())`` (no
    loss parallelism: the logits are whole).  The residual stream and the norms' inputs and
    outputs are ``(b, s / W, h)``.
    """
    run = _setup_tp(model, mesh, precision, sp=True)
    return run


_SETUPS = {"ddp": _setup_ddp, "zero1": _setup_zero1, "zero2": _setup_zero2, "zero3": _setup_zero3,
           "tp": _setup_tp, "tp_sp": _setup_tp_sp}


# -- the measured step -----------------------------------------------------------------------------
def _tracker(run):
    if run.tracker == "fsdp":
        from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
        return _global_peak_only(FSDPMemTracker)(run.module, run.opt)
    from torch.distributed._tools.mem_tracker import MemTracker
    mt = _global_peak_only(MemTracker)()
    mt.track_external(run.module, _inner_opt(run.opt), *run.external())
    return mt


def _global_peak_only(tracker_cls):
    """PyTorch's tracker class, keeping its counting and its global peak, minus per-module peaks.

    * ``_update_peak_stats`` runs after every op; besides the global peak (kept as is) it
      walks every tracked module to update per-module peaks, which makes tensor-parallel
      steps about ten times slower.  The bench compares the global peak only, so the
      per-module walk is skipped.  Storage tracking, resizes, DTensor handling and the
      global peak are PyTorch's own code, unchanged.
    * Under DDP, ``MemTracker``'s module pre-forward hook fires a second time for the
      ``DistributedDataParallel`` wrapper at the end of its forward and raises
      ``NotImplementedError`` ("multiple iterative calls"); that check guards per-module
      snapshots only, so it is skipped.
    """
    from torch.distributed._tools.mem_tracker import _TOTAL_KEY

    class GlobalPeak(tracker_cls):
        def _update_peak_stats(self, peak_state):
            for dev, dev_snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < dev_snap[_TOTAL_KEY]:
                    self._peak_mem[dev] = dev_snap[_TOTAL_KEY]
                    self._peak_mem_snap[dev] = dict(dev_snap)

        def _pre_fw_hook(self, module, inputs):
            try:
                return super()._pre_fw_hook(module, inputs)
            except NotImplementedError:
                return None
    GlobalPeak.__name__ = GlobalPeak.__qualname__ = f"{tracker_cls.__name__}(global peak)"
    return GlobalPeak


def _tracker_peak(mt) -> int:
    snap = mt.get_tracker_snapshot("peak")
    return int(sum(dev.get("Total", 0) for dev in snap.values()))


def _make_optimizer(run, zero1):
    if zero1:
        from torch.distributed.optim import ZeroRedundancyOptimizer
        return ZeroRedundancyOptimizer(run.params, optimizer_class=torch.optim.AdamW, foreach=False)
    return torch.optim.AdamW(run.params, foreach=False)


def _components(counter, t, inputs_bytes):
    cats = counter.by_category(counter.live_records(t))
    out = {}
    for c in CATEGORIES:
        if c == "activations":
            continue
        v = cats.pop(c, 0)
        if v:
            out[c] = v
    cats.pop("inputs", None)
    other = sum(cats.values())
    out["activations"] = other
    return out


def measure_parallel_train(model, scenario: str, world_size: int, batch_size: int = 1, seq_len: int = 512,
                           precision: str = "bf16", *, microbatches: int | None = None,
                           schedule: str | None = None, rank: int = 0, attention: str = "sdpa",
                           crosscheck: bool = True, verbose: bool = False,
                           timeline_points: int = 200) -> Breakdown:
    """Measured training step of one rank under a parallel scenario (chapter 05).

    ``peak = max over the second step of the live bytes of rank ``rank``'s storages``
    (the input batch excluded).  ``scenario`` is one of :data:`SCENARIOS` (definitions in
    :mod:`memlib.measure.parallel`); ``world_size`` is the number of ranks it spans;
    ``batch_size`` is per rank (per micro-batch for ``pp``).  ``pp`` also takes
    ``microbatches`` and ``schedule`` (``"1f1b"`` or ``"gpipe"``) and measures stage
    ``rank``.  Components are what is live at the peak (:data:`CATEGORIES`); ``phases`` the
    peak of ``forward``, ``backward`` and ``step``; ``meta["crosscheck"]`` PyTorch's
    ``MemTracker`` / ``FSDPMemTracker`` peak over the same step.
    """
    choice("scenario", scenario, SCENARIOS)
    world_size = positive_int("world_size", world_size)
    if world_size < 2:
        raise ValueError(f"world_size: must be >= 2 for a parallel scenario, got {world_size}")
    batch_size = positive_int("batch_size", batch_size)
    seq_len = positive_int("seq_len", seq_len)
    choice("precision", precision, PRECISIONS)
    choice("attention", attention, ("sdpa", "eager"))
    if scenario == "pp":
        microbatches = positive_int("microbatches", microbatches if microbatches is not None else world_size)
        choice("schedule", schedule or "1f1b", SCHEDULES)
        schedule = schedule or "1f1b"
    elif microbatches not in (None, 1) or schedule is not None:
        raise ValueError(f"microbatches/schedule: only for scenario 'pp', got scenario {scenario!r}")
    if scenario != "pp" and rank != 0:
        raise ValueError(f"rank: only rank 0 is measured for scenario {scenario!r} (got {rank})")
    tdt = torch.bfloat16 if precision == "bf16" else torch.float32
    t_start = time.perf_counter()
    with fake_world(world_size, rank):
        if scenario == "ep":
            from .expert_parallel import ep_mesh
            mesh = ep_mesh(world_size)
        else:
            mesh = cpu_mesh(world_size)
        with Session(model, tdt, attention, device="cpu", fake=True, verbose=verbose) as s:
            m = s.model
            m.train()
            if scenario == "pp":
                from .pipeline import setup_pp
                run = setup_pp(m, world_size, rank, precision, microbatches=microbatches, schedule=schedule,
                               batch_size=batch_size, seq_len=seq_len)
            elif scenario == "ep":
                from .expert_parallel import setup_ep
                run = setup_ep(m, mesh, precision)
            else:
                run = _SETUPS[scenario](m, mesh, precision)
            setup_s = time.perf_counter() - t_start
            result = _drive(s, run, scenario, world_size, batch_size, seq_len, precision, microbatches,
                            crosscheck, timeline_points)
    meta = result.meta
    meta.update({"scenario": scenario, "world_size": world_size, "rank": rank, "batch_size": batch_size,
                 "seq_len": seq_len, "precision": precision, "microbatches": microbatches,
                 "schedule": schedule, "setup_s": round(setup_s, 2),
                 "total_s": round(time.perf_counter() - t_start, 2)})
    return result


def _drive(s, run, scenario, world_size, batch_size, seq_len, precision, microbatches, crosscheck,
           timeline_points):
    """Two train steps; the second is measured by the counter and by PyTorch's tracker."""
    rows = batch_size * (microbatches or 1)
    ids = s.input_ids(rows, seq_len)                  # allocated before counting
    counter = DistStorageCounter(device_type="cpu")
    inputs_bytes = counter.register([ids], "inputs")
    counter.register(run.params, "weights")
    counter.register([p for p in run.module.parameters()], "weights")
    counter.register(list(run.module.buffers()), "buffers")
    policy = None
    if run.autocast:
        from .autocast import CudaAutocastPolicy
        policy = CudaAutocastPolicy("cpu")

    @contextlib.contextmanager
    def autocast():
        if not run.autocast:
            yield
            return
        with torch.autocast("cpu", dtype=torch.bfloat16), policy:
            yield

    tracker = None
    tracker_peak = None
    end_of_forward = eof_t = None
    t0 = time.perf_counter()
    with counter:
        if getattr(run, "build_in_window", None):
            with counter.tagging(run.build_tag):
                run.build_in_window()
        run.opt = run.opt or _make_optimizer(run, getattr(run, "zero1", False))
        with run.instrument(counter):
            for step in (1, 2):
                if step == 2:
                    run.after_warmup(counter)
                    gc.collect()
                    counter.reset_peak()
                    if crosscheck:
                        tracker = _tracker(run)
                        if run.tracker == "fsdp":
                            tracker.track_inputs((ids,))
                        else:
                            tracker.track_external(ids)
                        tracker.__enter__()
                if run.step_fn is not None:
                    info = run.step_fn(ids, counter, autocast)
                    if step == 2:
                        end_of_forward, eof_t = info.get("end_of_forward", (None, None))
                else:
                    counter.set_phase("forward")
                    with autocast():
                        loss = run.forward(ids)
                    if step == 2:
                        end_of_forward, eof_t = counter.live_bytes, counter.t
                    counter.set_phase("backward")
                    loss.backward()
                    del loss
                counter.categorize(run.grads(), "gradients")
                counter.set_phase("step")
                run.opt.step()
                counter.categorize(_opt_state_tensors(_inner_opt(run.opt)), "optimizer")
                counter.categorize(run.grads(), "gradients")
                run.opt.zero_grad(set_to_none=True)
                if step == 2 and tracker is not None:
                    tracker.__exit__(None, None, None)
                    tracker_peak = _tracker_peak(tracker)
            counter.set_phase("end")
    counter.close()
    run_s = time.perf_counter() - t0
    peak = counter.peak - inputs_bytes
    comps = _components(counter, counter.peak_t, inputs_bytes)
    phases = {p: counter.phase_peaks.get(p, 0) - inputs_bytes for p in PHASES if p in counter.phase_peaks}
    phase_components = {p: _components(counter, counter.phase_peak_t[p], inputs_bytes)
                        for p in PHASES if p in counter.phase_peak_t}
    kernel, math_path, calls = attention_kernel(counter.ops, s.attention)
    held = _held_bytes(run)
    meta = s.meta(s.attention)
    meta.update(run.meta)
    meta.update({
        "train_peak": peak, "peak_phase": counter.peak_phase, "phase_peak": phases,
        "phase_components": phase_components,
        "end_of_forward": None if end_of_forward is None else end_of_forward - inputs_bytes,
        "end_of_forward_components": None if eof_t is None else _components(counter, eof_t, inputs_bytes),
        "activations_by_op": counter.by_op(counter.live_at_peak(), cat="other"),
        "held": held, "input_bytes": inputs_bytes,
        "attention_kernel": kernel, "math_path": math_path, "attention_calls": calls,
        "resize_events": counter.resize_events,
        "collectives": {k: v for k, v in counter.ops.items() if "c10d" in k},
        "timeline": counter.timeline(timeline_points), "run_s": round(run_s, 2),
        "autocast": "torch.autocast('cpu', bfloat16) around the forward (CUDA op list emulated)"
                    if run.autocast else None,
    })
    if tracker_peak is not None:
        meta["crosscheck"] = {"tracker": type(tracker).__name__, "tracker_peak": tracker_peak,
                              "counter_peak": counter.peak, "diff_bytes": counter.peak - tracker_peak}
    title = (f"{s.name}, {run.meta.get('label', '')}train step rank {run.meta.get('rank', 0)} "
             f"b={batch_size} s={seq_len} {precision} (measured)")
    return Breakdown(comps, title=title, phases=phases, peak_phase=counter.peak_phase, meta=meta)


def _inner_opt(opt):
    return getattr(opt, "optim", opt)    # ZeroRedundancyOptimizer keeps its local optimizer in .optim


def _held_bytes(run) -> dict:
    """Bytes this rank holds after the step: its parameters, and its optimizer state."""
    from .counter import unique_storage_bytes
    params = local_tensors(run.params)
    state = local_tensors(_opt_state_tensors(_inner_opt(run.opt)))
    return {"params": unique_storage_bytes(params), "optimizer": unique_storage_bytes(state),
            "params_numel": sum(t.numel() for t in params)}


__all__ += ["CATEGORIES"]
