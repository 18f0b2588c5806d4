"""The distributed bench: one rank's memory in a training step under DP, ZeRO, TP, SP, PP and EP (chapter 05).

Everything runs in one CPU process as rank ``rank`` (default 0) of a world of ``W``, with
PyTorch's fake process group (:mod:`memlib.measure.fake_dist`): the ``DeviceMesh`` is built
first, then the model is built under ``FakeTensorMode`` and parallelised by PyTorch's (or
transformers') own code.  Collectives move no data but allocate their outputs, so
all-gather buffers, unsharded gradients and redistributions are counted as they are.

**The train step** is the bench's reference step (chapter 04): ``model.train()``, ``AdamW(foreach=False)`` over
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

Each scenario's exact definition is the docstring of its ``setup_*`` function:
:mod:`memlib.measure.data_parallel` (``ddp``, ``zero1``, ``zero2``, ``zero3``),
:mod:`memlib.measure.tp_plan` (``tp``, ``tp_sp``), :mod:`memlib.measure.pipeline` (``pp``)
and :mod:`memlib.measure.expert_parallel` (``ep``).  :func:`measure_parallel_train` is the
entry point; :data:`SCENARIOS` lists the scenarios.
"""
from __future__ import annotations

import contextlib
import gc
import time

import torch

from ..breakdown import Breakdown
from ..validation import choice, positive_int
from .data_parallel import setup_ddp, setup_zero1, setup_zero2, setup_zero3
from .dist_counter import DistStorageCounter, local_tensors
from .fake_dist import cpu_mesh, fake_world
from .scenarios import Session, _opt_state_tensors, attention_kernel
from .tp_plan import setup_tp, setup_tp_sp
from .trackers import tracker_for, tracker_peak

__all__ = ["measure_parallel_train", "SCENARIOS", "PRECISIONS", "SCHEDULES"]

SCENARIOS = ("ddp", "zero1", "zero2", "zero3", "tp", "tp_sp", "pp", "ep")
PRECISIONS = ("bf16", "mixed")
SCHEDULES = ("1f1b", "gpipe")
PHASES = ("forward", "backward", "step")

#: categories the counter can put on a storage, in the order components are reported
CATEGORIES = ("weights", "buffers", "gradients", "optimizer", "unsharded_params", "unsharded_grads",
              "fsdp_all_gather", "fsdp_reduce_scatter", "ddp_buckets", "comm", "pp_buffers", "activations")


_SETUPS = {"ddp": setup_ddp, "zero1": setup_zero1, "zero2": setup_zero2, "zero3": setup_zero3,
           "tp": setup_tp, "tp_sp": setup_tp_sp}


# -- the measured step -----------------------------------------------------------------------------
def _make_optimizer(run, zero1):
    if zero1:
        from torch.distributed.optim import ZeroRedundancyOptimizer
        return ZeroRedundancyOptimizer(run.params, optimizer_class=torch.optim.AdamW, foreach=False)
    return torch.optim.AdamW(run.params, foreach=False)


def _components(counter, t):
    """``{category: bytes}`` live after event ``t``; uncategorised storages are ``activations``."""
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

    ``train_peak = max over the second step of the live bytes of the rank's storages``
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
            label = f"{scenario} W={world_size} rank {rank}"
            if scenario == "pp":
                label += f" {schedule} M={microbatches}"
            result = _drive(s, run, label, batch_size, seq_len, precision, microbatches, crosscheck, timeline_points)
    meta = result.meta
    meta.update({"scenario": scenario, "world_size": world_size, "rank": rank, "batch_size": batch_size,
                 "seq_len": seq_len, "precision": precision, "microbatches": microbatches,
                 "schedule": schedule, "setup_s": round(setup_s, 2),
                 "total_s": round(time.perf_counter() - t_start, 2)})
    return result


def _drive(s, run, label, batch_size, seq_len, precision, microbatches, crosscheck, timeline_points):
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
    peak_of_tracker = None
    end_of_forward = eof_t = None
    t0 = time.perf_counter()
    with counter:
        if run.build_in_window is not None:
            with counter.tagging(run.build_tag):
                run.build_in_window()
        run.opt = run.opt or _make_optimizer(run, run.zero1)
        with run.instrument(counter):
            for step in (1, 2):
                if step == 2:
                    run.after_warmup(counter)
                    gc.collect()
                    counter.reset_peak()
                    if crosscheck:
                        tracker = tracker_for(run)
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
                    peak_of_tracker = tracker_peak(tracker)
            counter.set_phase("end")
    counter.close()
    run_s = time.perf_counter() - t0
    peak = counter.peak - inputs_bytes
    comps = _components(counter, counter.peak_t)
    phases = {p: counter.phase_peaks.get(p, 0) - inputs_bytes for p in PHASES if p in counter.phase_peaks}
    phase_components = {p: _components(counter, counter.phase_peak_t[p])
                        for p in PHASES if p in counter.phase_peak_t}
    kernel, math_path, calls = attention_kernel(counter.ops, s.attention)
    held = _held_bytes(run)
    meta = s.meta(s.attention)
    meta.update(run.meta)
    meta.update({
        "train_peak": peak, "peak_phase": counter.peak_phase, "phase_peak": phases,
        "phase_components": phase_components,
        "end_of_forward": None if end_of_forward is None else end_of_forward - inputs_bytes,
        "end_of_forward_components": None if eof_t is None else _components(counter, eof_t),
        "activations_by_op": counter.by_op(counter.live_at_peak(), cat="other"),
        "held": held, "input_bytes": inputs_bytes,
        "attention_kernel": kernel, "math_path": math_path, "attention_calls": calls,
        "resize_events": counter.resize_events,
        "collectives": {k: v for k, v in counter.ops.items() if "c10d" in k},
        "timeline": counter.timeline(timeline_points), "run_s": round(run_s, 2),
        "autocast": "torch.autocast('cpu', bfloat16) around the forward (CUDA op list emulated)"
                    if run.autocast else None,
    })
    if peak_of_tracker is not None:
        meta["crosscheck"] = {"tracker": type(tracker).__name__, "tracker_peak": peak_of_tracker,
                              "counter_peak": counter.peak, "diff_bytes": counter.peak - peak_of_tracker}
    title = f"{s.name}, {label}, train step b={batch_size} s={seq_len} {precision} (measured)"
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
