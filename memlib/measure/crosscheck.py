"""A second instrument on the bench's training step: PyTorch's own MemTracker (chapter 08).

``torch.distributed._tools.mem_tracker.MemTracker`` is a ``TorchDispatchMode`` written
by the PyTorch team.  Like the bench's :class:`~memlib.measure.counter.StorageCounter` it
counts the bytes of every tensor storage an op returns, once per storage, until the
storage dies; it also sorts them into parameters, buffers, gradients, activations,
temporaries and optimizer state.  On the CPU it counts exact bytes (on CUDA it rounds
each storage up to 512 bytes, as the caching allocator does).

:func:`crosscheck_train` runs the bench's training scenario
(:func:`memlib.measure.scenarios.measure_train`, the very same code) with MemTracker
watching the measured window:

* MemTracker is given the model and the optimizer (``track_external(model, opt)``) and
  entered at the start of the second step, right when the bench opens its window;
* at every phase switch (forward -> backward -> step -> end) its peak is read and
  restarted from the live bytes of that moment, which is what the bench does
  (``StorageCounter.set_phase``).  MemTracker has no public "restart the peak" call; its
  ``__enter__`` does it by setting ``_peak_mem`` / ``_peak_mem_snap`` to the current
  snapshot, and :class:`PhasedMemTracker` does the same at each switch;
* with ``standalone=True`` the bench also runs alone, and the result asserts that
  MemTracker's presence changed nothing the bench measures.

Both instruments see the same program, so they must agree to the byte, phase by phase.
Where they cannot, the difference is named in ``explained`` with its exact size and the
check fails on any byte not explained.  One systematic difference exists by design:

* **the input batch.**  ``input_ids`` is allocated before either instrument starts.  The
  bench never counts it (chapter 08).  MemTracker counts a storage as soon as an op
  returns a tensor on it, so the first *view* of ``input_ids`` an op returns (GPT-2's
  ``input_ids.view(-1, seq)``, a ``labels[..., 1:]`` slice) adds its ``8 * b * s`` bytes
  (int64) to MemTracker's total from then on.  The check reads whether MemTracker holds
  that storage and subtracts exactly its bytes.
"""
from __future__ import annotations

import copy
import contextlib

from .counter import storage_key

__all__ = ["PhasedMemTracker", "crosscheck_train", "CATEGORY_NAMES"]

#: MemTracker's reference-type names -> the names this module reports.
CATEGORY_NAMES = {"Parameter": "parameters", "Buffer": "buffers", "Gradient": "gradients",
                  "Activation": "activations", "Temp": "temporaries", "Optstate": "optimizer_state",
                  "Other": "other"}
PHASES = ("forward", "backward", "step")


def _memtracker(module_stats: bool = False):
    """MemTracker (``module_stats=True``: unchanged) or MemTracker minus its per-module peak bookkeeping (the device totals are untouched).

    ``MemTracker._update_peak_stats`` runs after every op: it walks every module seen so
    far to update module-wise peaks, then updates the device peak.  The walk makes a
    catalog model's step take many minutes and plays no part in the device totals, so the
    subclass keeps only the device part, the same lines as MemTracker's own second loop.
    """
    from torch.distributed._tools.mem_tracker import _TOTAL_KEY, MemTracker
    if module_stats:
        return MemTracker

    class DeviceMemTracker(MemTracker):
        def _update_peak_stats(self, peak_state) -> None:
            for dev, dev_snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < dev_snap[_TOTAL_KEY]:
                    self._peak_mem[dev] = dev_snap[_TOTAL_KEY]
                    self._peak_mem_snap[dev] = copy.deepcopy(dev_snap)

    return DeviceMemTracker


def _device_snap(snap: dict) -> dict:
    """The one device's ``{category: bytes}`` of a MemTracker snapshot (``{}`` if empty)."""
    if not snap:
        return {}
    if len(snap) != 1:
        raise ValueError(f"memtracker: expected one device, got {sorted(map(str, snap))}")
    (dev_snap,) = snap.values()
    return {CATEGORY_NAMES.get(str(getattr(k, "value", k)), str(getattr(k, "value", k))): int(v)
            for k, v in dev_snap.items()}


class PhasedMemTracker:
    """MemTracker with one peak per phase of the bench's training step.

    ``window(model, opt)`` tracks the model's parameters and buffers and the optimizer's
    state and enters MemTracker; ``phase(name)`` closes the current phase (its peak and
    MemTracker's categories at that peak) and restarts the peak from the current live
    bytes.  After the window: ``peaks[phase]`` and ``categories[phase]``.
    """

    def __init__(self, module_stats: bool = False):
        self.mt = _memtracker(module_stats)()
        self.peaks: dict[str, int] = {}
        self.categories: dict[str, dict] = {}
        self.current_phase = None
        self.tracked_storages: set = set()

    @contextlib.contextmanager
    def window(self, model, opt):
        self.mt.track_external(model, opt)
        with self.mt:
            yield
            self._close()
        self.current_phase = None

    def _restart_peak(self):
        mt = self.mt
        if not (hasattr(mt, "_peak_mem") and hasattr(mt, "_peak_mem_snap")):  # pragma: no cover
            raise RuntimeError("memtracker: this torch's MemTracker has no _peak_mem/_peak_mem_snap; "
                               "the per-phase restart must be adapted")
        snap = mt.get_tracker_snapshot()
        mt._peak_mem_snap = copy.deepcopy(snap)
        mt._peak_mem = {dev: dev_snap["Total"] for dev, dev_snap in snap.items()}

    def _close(self):
        if self.current_phase is None:
            return
        cats = _device_snap(self.mt.get_tracker_snapshot("peak"))
        total = cats.pop("Total", 0)
        if total >= self.peaks.get(self.current_phase, -1):
            self.peaks[self.current_phase] = total
            self.categories[self.current_phase] = cats

    def phase(self, name):
        self._close()
        self.current_phase = name
        self._restart_peak()

    def holds(self, tensor) -> bool:
        """Whether MemTracker counts the storage of ``tensor`` right now."""
        try:
            st = tensor.untyped_storage()
        except Exception:
            return False
        return st in self.mt._WINFO


class _InputWatch:
    """Records, while the window is open, whether MemTracker picked up the input batch."""

    def __init__(self, tracker: PhasedMemTracker):
        self.tracker = tracker
        self.ids = None
        self.first_phase = None

    def window(self, model, opt):
        return self.tracker.window(model, opt)

    def phase(self, name):
        if self.first_phase is None and self.ids is not None and self.tracker.holds(self.ids):
            self.first_phase = self.tracker.current_phase
        self.tracker.phase(name)


def crosscheck_train(model, batch_size, seq_len, precision="bf16", recompute="none", attention="sdpa",
                     optimizer="adamw", *, optimizer_impl="foreach", autocast_policy="cuda",
                     standalone=True, module_stats=False) -> dict:
    """Bench and MemTracker on the same training step: peak per phase, difference, cause.

    ``difference[phase] = memtracker[phase] - bench[phase] - explained[phase]``; the
    comparison passes (``agree``) when every difference is 0.  ``explained`` holds the
    input batch's bytes in the phases where MemTracker counted it (see the module
    docstring).  ``memtracker_categories[phase]`` is MemTracker's split at that phase's
    peak.  With ``standalone=True``, ``bench_alone`` is the bench run without MemTracker
    and ``bench_unchanged`` says whether it equals the bench inside the joint run.
    ``module_stats=True`` runs MemTracker unchanged, module-wise peaks included (many times
    slower; the device totals are the same, see :func:`_memtracker`).
    """
    from . import scenarios

    tracker = PhasedMemTracker(module_stats)
    watch = _InputWatch(tracker)
    orig_input_ids = scenarios.Session.input_ids

    def input_ids(self, b, s):
        watch.ids = orig_input_ids(self, b, s)
        return watch.ids

    kw = dict(precision=precision, recompute=recompute, attention=attention, optimizer=optimizer,
              optimizer_impl=optimizer_impl, autocast_policy=autocast_policy, timeline_points=0)
    scenarios.Session.input_ids = input_ids
    try:
        joint = scenarios.measure_train(model, batch_size, seq_len, observer=watch, **kw)
    finally:
        scenarios.Session.input_ids = orig_input_ids
    ids_bytes = 8 * batch_size * seq_len
    bench = {p: int(joint.phases[p]) for p in PHASES}
    mem = {p: int(tracker.peaks.get(p, 0)) for p in PHASES}
    explained, causes = {}, {}
    counted_from = watch.first_phase
    for p in PHASES:
        explained[p] = 0
        if counted_from is not None and PHASES.index(p) >= PHASES.index(counted_from):
            explained[p] = ids_bytes
            causes[p] = f"input batch ({ids_bytes} B int64): MemTracker counts it once an op returns a view of it"
    diff = {p: mem[p] - bench[p] - explained[p] for p in PHASES}
    out = {
        "model": joint.meta["model"], "batch_size": batch_size, "seq_len": seq_len, **kw,
        "bench": bench, "memtracker": mem,
        "bench_peak": int(joint.meta["train_peak"]), "memtracker_peak": max(mem.values()),
        "explained": explained, "explained_causes": causes, "difference": diff,
        "agree": all(v == 0 for v in diff.values()),
        "memtracker_module_stats": bool(module_stats),
        "memtracker_categories": tracker.categories,
        "bench_components": {p: dict(c) for p, c in joint.meta["phase_components"].items()},
        "attention": joint.meta["attention"], "attention_kernel": joint.meta["attention_kernel"],
        "torch": joint.meta["torch"], "transformers": joint.meta["transformers"],
    }
    out.pop("timeline_points")
    if standalone:
        alone = scenarios.measure_train(model, batch_size, seq_len, **kw)
        out["bench_alone"] = {p: int(alone.phases[p]) for p in PHASES}
        out["bench_unchanged"] = out["bench_alone"] == bench
    return out


def storage_keys(tensors):
    """Storage keys of some tensors (helper for tests)."""
    return {storage_key(t) for t in tensors}
