"""PyTorch's own memory trackers, run alongside the bench's counter as a cross-check (chapter 08).

``torch.distributed._tools`` ships ``MemTracker`` and, for FSDP2, ``FSDPMemTracker``:
``TorchDispatchMode``s that count storages like the bench does, with their own handling of
DTensor, ``resize_`` and fake ``wait_tensor``.  The bench enters one inside its counter over
the measured step and compares the two global peaks (:func:`tracker_for`, :func:`tracker_peak`).
"""
from __future__ import annotations

__all__ = ["tracker_for", "global_peak_only", "tracker_peak"]


def tracker_for(run):
    """A fresh tracker for a bench run: ``FSDPMemTracker`` for FSDP2 scenarios, ``MemTracker`` otherwise."""
    if run.tracker == "fsdp":
        from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
        return global_peak_only(FSDPMemTracker)(run.module, run.opt)
    from torch.distributed._tools.mem_tracker import MemTracker
    mt = global_peak_only(MemTracker)()
    mt.track_external(run.module, getattr(run.opt, "optim", run.opt), *run.external())
    return mt


def global_peak_only(tracker_cls):
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


def tracker_peak(mt) -> int:
    """The tracker's global peak in bytes (all devices)."""
    snap = mt.get_tracker_snapshot("peak")
    return int(sum(dev.get("Total", 0) for dev in snap.values()))
