"""A byte-exact counter of live tensor storages (the bench's instrument, chapter 08).

:class:`StorageCounter` is a ``TorchDispatchMode``.  Every aten op that runs while it
is active passes through it; for each tensor the op returns it looks at the tensor's
*storage* (the memory block, shared by all views of it):

* a storage it has not seen before, and that is not the storage of one of the op's
  inputs, is a new allocation: it is recorded once with ``storage.nbytes()`` bytes and a
  weak reference whose callback records the free when the storage dies;
* a storage it already knows is not counted again (views, ``out=`` and in-place ops
  return tensors on storages that already exist); if its size changed (``resize_``)
  the change is recorded as a free of the old size and an allocation of the new one;
* a storage that belongs to one of the op's inputs but was never recorded (a tensor
  created before counting started, e.g. the input batch) is left alone: views and
  in-place updates of it cost nothing.  ``aten.lift_fresh`` (``torch.tensor(data)``)
  is the exception: it always counts as a new allocation.

Storages that exist before counting starts (parameters, buffers, optimizer state) are
added with :meth:`StorageCounter.register`; they are then "resident".

The counter works the same on real tensors and on ``FakeTensor``s (whose storages have
a size but no memory), which is why a fake measurement equals a real one on the CPU.
It counts exact ``nbytes``; a CUDA caching allocator rounds every block up to 512
bytes and keeps freed blocks reserved, which the GPU path reports separately.

PyTorch's ``torch.distributed._tools.mem_tracker.MemTracker`` counts the same way
(storages, once each, weak references for the frees), and :mod:`memlib.measure.crosscheck`
runs both on the same step: they agree to the byte except for one difference by design --
MemTracker starts counting a storage made before it started (the input batch) as soon as
an op returns a view of it; this counter never does.  A storage's identity here is the
address of its ``StorageImpl``; the address of a dead storage can be reused, which is
safe because the weak-reference callback removes the dead one before the allocator can
hand its memory out again.

Every allocation and free is an *event*; the counter keeps the live total after every
event, the peak of each phase (the caller names phases with :meth:`set_phase`) and,
for the moment of the peak, which records were live, so the peak can be split into
categories (weights, gradients, optimizer state, activations...).
"""
from __future__ import annotations

import weakref
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["StorageCounter", "storage_key", "storages_of", "unique_storage_bytes"]

_NAMES: dict = {}
_LIFT = {"aten.lift_fresh.default", "aten.lift_fresh_copy.default", "aten.lift.default"}


def storage_key(t) -> int | None:
    """Identity of a tensor's storage (the address of its ``StorageImpl``), or None."""
    try:
        return t.untyped_storage()._cdata
    except Exception:  # sparse, nested, or other storage-less tensors
        return None


def storages_of(tensors):
    """``{key: storage}`` for the distinct storages of an iterable of tensors (None skipped)."""
    out = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            try:
                st = t.untyped_storage()
            except Exception:
                continue
            out.setdefault(st._cdata, st)
    return out


def unique_storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (tied weights and views counted once)."""
    return sum(st.nbytes() for st in storages_of(tensors).values())


class _Rec:
    """One allocation: ``nbytes`` live from event ``t_alloc`` until event ``t_free``."""

    __slots__ = ("key", "nbytes", "t_alloc", "t_free", "cat", "op", "ref", "__weakref__")

    def __init__(self, key, nbytes, t_alloc, cat, op):
        self.key, self.nbytes, self.t_alloc, self.t_free = key, nbytes, t_alloc, None
        self.cat, self.op, self.ref = cat, op, None

    def live_at(self, t: int) -> bool:
        return self.t_alloc <= t and (self.t_free is None or self.t_free > t)


class StorageCounter(TorchDispatchMode):
    """Count the bytes of live tensor storages while active (see the module docstring).

    Typical use::

        counter = StorageCounter()
        counter.register(model.parameters(), "weights")   # resident before counting
        with counter:
            counter.set_phase("forward")
            loss = model(x).sum()
        counter.peak, counter.phase_peaks, counter.live_at_peak()
    """

    def __init__(self, device_type: str | None = None):
        super().__init__()
        self.device_type = device_type
        self.records: list[_Rec] = []
        self._live: dict[int, _Rec] = {}
        self.live_bytes = 0
        self.t = 0
        self.phase = "setup"
        self.window_start = 0
        self.peak = 0
        self.peak_t = 0
        self.peak_phase = "setup"
        self.phase_peaks: dict[str, int] = {}
        self.ops: Counter = Counter()
        self._trace_live: list[int] = []
        self._trace_phase: list[str] = []
        self._last_free = False
        self.closed = False
        self.reset_peak()

    # -- bookkeeping -------------------------------------------------------------------
    def _event(self, free=False):
        self.t += 1
        live = self.live_bytes
        if free and self._last_free and self._trace_phase and self._trace_phase[-1] == self.phase:
            # a run of frees is one point of the trace: the order in which a burst of
            # storages dies (e.g. the autocast cache being cleared) is an implementation
            # detail that can change from run to run
            self._trace_live[-1] = live
        else:
            self._trace_live.append(live)
            self._trace_phase.append(self.phase)
        self._last_free = free
        if live > self.peak:
            self.peak, self.peak_t, self.peak_phase = live, self.t, self.phase
        if live > self.phase_peaks.get(self.phase, -1):
            self.phase_peaks[self.phase] = live
            self.phase_peak_t[self.phase] = self.t

    def _alloc(self, st, cat, op) -> _Rec:
        key = st._cdata
        rec = _Rec(key, int(st.nbytes()), self.t + 1, cat, op)
        rec.ref = weakref.ref(st, self._make_free_cb(rec))
        self.records.append(rec)
        self._live[key] = rec
        self.live_bytes += rec.nbytes
        self._event()
        return rec

    def _make_free_cb(self, rec):
        wself = weakref.ref(self)

        def _free(_ref, rec=rec):
            me = wself()
            if me is not None:
                me._free(rec)
        return _free

    def _free(self, rec: _Rec):
        if self.closed or rec.t_free is not None:
            return
        if self._live.get(rec.key) is rec:
            del self._live[rec.key]
        self.live_bytes -= rec.nbytes
        rec.t_free = self.t + 1
        self._event(free=True)

    def _resize(self, rec: _Rec, st, op):
        """A known storage changed size: close its record and open a new one."""
        cat = rec.cat
        self._free(rec)
        rec.ref = None
        self._alloc(st, cat, op)

    # -- public ------------------------------------------------------------------------
    def register(self, tensors, cat: str) -> int:
        """Mark the storages of ``tensors`` as live and of category ``cat``.

        Storages not yet known are added (as resident memory allocated now); known ones
        only get their category set.  Returns the bytes newly added.
        """
        added = 0
        tensors = [t for t in tensors if isinstance(t, torch.Tensor) and self._mine(t)]
        for key, st in storages_of(tensors).items():
            rec = self._live.get(key)
            if rec is None:
                rec = self._alloc(st, cat, "register")
                added += rec.nbytes
            else:
                rec.cat = cat
        return added

    def categorize(self, tensors, cat: str) -> int:
        """Set the category of the live storages of ``tensors`` that the counter knows.

        Returns their total bytes.  Storages the counter does not know are ignored.
        """
        total = 0
        for key in storages_of(tensors):
            rec = self._live.get(key)
            if rec is not None:
                rec.cat = cat
                total += rec.nbytes
        return total

    def set_phase(self, phase: str):
        """Name the phase of the events that follow; the live bytes at the switch count."""
        self.phase = phase
        if self.live_bytes > self.phase_peaks.get(phase, -1):
            self.phase_peaks[phase] = self.live_bytes
            self.phase_peak_t[phase] = self.t

    def reset_peak(self):
        """Start a new measurement window: peaks, phase peaks and the trace restart from now."""
        self.window_start = self.t
        self.peak, self.peak_t, self.peak_phase = self.live_bytes, self.t, self.phase
        self.phase_peaks = {}
        self.phase_peak_t: dict[str, int] = {}
        self._trace_live, self._trace_phase = [], []
        self._last_free = False
        self.ops = Counter()

    def close(self):
        """Stop recording frees (call when the measurement is over)."""
        self.closed = True

    def live_records(self, t: int | None = None) -> list[_Rec]:
        """Records live after event ``t`` (default: now)."""
        if t is None:
            return list(self._live.values())
        return [r for r in self.records if r.live_at(t)]

    def live_at_peak(self) -> list[_Rec]:
        """Records live at the peak of the current window."""
        return self.live_records(self.peak_t)

    def by_category(self, recs) -> dict[str, int]:
        """``{category: bytes}`` of some records."""
        out: dict[str, int] = {}
        for r in recs:
            out[r.cat] = out.get(r.cat, 0) + r.nbytes
        return out

    def by_op(self, recs, cat: str | None = "other") -> dict[str, int]:
        """``{aten op that allocated it: bytes}`` of the records of category ``cat`` (all if None)."""
        out: dict[str, int] = {}
        for r in recs:
            if cat is None or r.cat == cat:
                out[r.op] = out.get(r.op, 0) + r.nbytes
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def bytes_of(self, cat: str) -> int:
        """Live bytes of category ``cat`` now."""
        return sum(r.nbytes for r in self._live.values() if r.cat == cat)

    def timeline(self, max_points: int = 400) -> list[tuple[str, int]]:
        """The live bytes after every event of the window, downsampled to at most ``max_points``.

        Each point is ``(phase, live_bytes)``; a point stands for a run of consecutive
        events and keeps their maximum, so the peak survives downsampling.
        """
        n = len(self._trace_live)
        if n <= max_points:
            return list(zip(self._trace_phase, self._trace_live))
        out = []
        for i in range(max_points):
            lo, hi = i * n // max_points, (i + 1) * n // max_points
            j = max(range(lo, hi), key=self._trace_live.__getitem__)
            out.append((self._trace_phase[j], self._trace_live[j]))
        return out

    def _mine(self, t) -> bool:
        return self.device_type is None or t.device.type == self.device_type

    # -- the dispatch hook ---------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = _NAMES.get(func)
        if name is None:
            name = _NAMES[func] = str(func)
        self.ops[name] += 1
        if self.closed:
            return out
        inputs = None
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or not self._mine(t):
                continue
            try:
                st = t.untyped_storage()
            except Exception:
                continue
            key = st._cdata
            rec = self._live.get(key)
            if rec is not None:
                if rec.nbytes != st.nbytes():
                    self._resize(rec, st, name)
                continue
            if name not in _LIFT:
                if inputs is None:
                    inputs = {storage_key(a) for a in tree_flatten((args, kwargs))[0]
                              if isinstance(a, torch.Tensor)}
                if key in inputs:
                    continue  # a view / in-place result of a tensor made before counting
            self._alloc(st, "other", name)
        return out
