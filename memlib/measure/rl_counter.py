"""The storage counter, plus who allocated each storage and whether it is vocabulary-wide (chapter 06).

:class:`RoleCounter` is :class:`memlib.measure.counter.StorageCounter` (unchanged
counting) with two additions the RL scenarios need to split a peak by role:

* **owners**: the caller names the model or step that runs (``counter.owner("policy")``,
  ``"reference"``, ``"backward"``...).  Every storage allocated afterwards belongs to
  that owner, so an unregistered storage live at the peak is "the policy's activations"
  or "the reference forward's activations" rather than one anonymous number.
* **vocabulary-wide tensors**: a storage allocated by an op whose output's last
  dimension is one of ``wide_dims`` (the models' vocabulary sizes) is marked, so logits,
  their fp32 copies, log-softmax outputs and their gradients are reported apart
  (component suffix ``.logits``).

A live storage's component at time ``t`` is its registered category when it has one
(``"policy.weights"``, ``"policy.optimizer"``, ``"reference.logps"``...), else
``"<owner>.logits"`` or ``"<owner>.activations"``.
"""
from __future__ import annotations

import contextlib
from bisect import bisect_right

import torch
from torch.utils._pytree import tree_flatten

from .counter import StorageCounter, storage_key

__all__ = ["RoleCounter"]


class RoleCounter(StorageCounter):
    """A :class:`StorageCounter` that also records each storage's owner and vocabulary width."""

    def __init__(self, wide_dims=(), device_type: str | None = None):
        super().__init__(device_type=device_type)
        self.wide_dims = frozenset(int(d) for d in wide_dims)
        self._wide: set[int] = set()          # id() of records of vocabulary-wide storages
        self._owner_t = [0]
        self._owner_name = ["setup"]
        self._paused = False

    def owner(self, name: str):
        """Storages allocated from now on belong to ``name``."""
        self._owner_t.append(self.t)
        self._owner_name.append(name)

    def owner_of(self, rec) -> str:
        """The owner that was current when ``rec`` was allocated."""
        i = bisect_right(self._owner_t, rec.t_alloc - 1) - 1
        return self._owner_name[max(i, 0)]

    def is_wide(self, rec) -> bool:
        return id(rec) in self._wide

    @contextlib.contextmanager
    def paused(self):
        """Inside the block nothing new is recorded (frees of recorded storages still are)."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self._paused:
            return func(*args, **(kwargs or {}))
        t_before = self.t
        out = super().__torch_dispatch__(func, types, args, kwargs)
        if self.wide_dims and self.t > t_before and not self.closed:
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.dim() and t.shape[-1] in self.wide_dims:
                    rec = self._live.get(storage_key(t))
                    if rec is not None and rec.t_alloc > t_before:
                        self._wide.add(id(rec))
        return out

    def component(self, rec) -> str:
        """``rec``'s component name (see the module docstring)."""
        if rec.cat != "other":
            return rec.cat
        return f"{self.owner_of(rec)}.{'logits' if self.is_wide(rec) else 'activations'}"

    def components_at(self, t: int) -> dict[str, int]:
        """``{component: bytes}`` of the storages live after event ``t``."""
        out: dict[str, int] = {}
        for r in self.live_records(t):
            c = self.component(r)
            out[c] = out.get(c, 0) + r.nbytes
        return out

    def largest_at(self, t: int, n: int = 8) -> list[dict]:
        """The ``n`` largest storages live after event ``t``: component, aten op, bytes."""
        recs = sorted(self.live_records(t), key=lambda r: -r.nbytes)[:n]
        return [{"component": self.component(r), "op": r.op, "bytes": r.nbytes} for r in recs]
