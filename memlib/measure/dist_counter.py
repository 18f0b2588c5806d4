"""A live-bytes counter that is right under PyTorch's distributed code (chapters 05, 08).

:class:`DistStorageCounter` is :class:`memlib.measure.counter.StorageCounter` plus the
fixes that distributed training needs.  Each fix is a counting trap that silently breaks a
plain storage counter (chapter 05):

* **DTensor is a wrapper.**  A ``DTensor``'s own storage reports the *global* size; the
  rank holds only ``_local_tensor``.  The counter registers and categorises the local
  tensors of any traceable wrapper subclass (``__tensor_flatten__``), and when an op has a
  DTensor among its arguments it returns ``NotImplemented``: DTensor then runs its own
  dispatch and the counter sees the *local* ops it issues, which are the real allocations.
* **DTensor's sharding propagation runs in a nested ``FakeTensorMode``.**  Those tensors
  (global shapes, metadata only) never exist on a device; ops that run while a fake mode
  other than the one active when the counter was entered is on top are not counted.
* **``wait_tensor`` under fake tensors.**  Its fake implementation returns a *new* tensor,
  whereas in eager mode it returns its input.  The counter returns the input, as eager does.
* **FSDP2 frees and refills its unsharded parameters with ``untyped_storage().resize_()``**,
  which no dispatch mode sees: a storage's size changes while it lives.  While the counter
  is active, ``torch.UntypedStorage.resize_`` is wrapped; a known storage that changes size
  is recorded as a free of the old size and an allocation of the new one (same category),
  an unknown storage that grows is a new allocation.

It also names the memory that collectives use: :meth:`tagging` sets the category of
every allocation made inside a ``with`` block (the bench wraps FSDP2's unshard and
reduce-scatter in it), and the output of a functional collective (``_c10d_functional.*``,
what DTensor redistributions call) gets the category ``"comm"`` unless a tag is active.

The same fixes are what PyTorch's own ``torch.distributed._tools.MemTracker`` does; the
bench cross-checks every scenario against it (:mod:`memlib.measure.parallel`).
"""
from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from .counter import StorageCounter

__all__ = ["DistStorageCounter", "local_tensors"]

_WAIT = "_c10d_functional.wait_tensor.default"


def local_tensors(tensors):
    """The plain tensors behind ``tensors``: a DTensor (or other wrapper subclass) is
    replaced by its inner tensors (``_local_tensor``), recursively; ``None`` is skipped."""
    out = []
    stack = [t for t in tensors if isinstance(t, torch.Tensor)][::-1]
    while stack:
        t = stack.pop()
        if is_traceable_wrapper_subclass(t):
            attrs, _ = t.__tensor_flatten__()
            stack.extend(v for a in attrs[::-1] if isinstance(v := getattr(t, a), torch.Tensor))
        else:
            out.append(t)
    return out


def _is_dtensor_type(t) -> bool:
    from torch.distributed.tensor import DTensor
    return isinstance(t, type) and issubclass(t, DTensor)


class DistStorageCounter(StorageCounter):
    """:class:`StorageCounter` made correct for DTensor, FSDP2 and fake collectives.

    See the module docstring for the four traps it handles.  Use it like the base
    class; :meth:`tagging` names the allocations of a block of code.
    """

    def __init__(self, device_type: str | None = None):
        super().__init__(device_type)
        self.tag: str | None = None
        self._fake_on_entry = None
        self._orig_resize = None
        self.resize_events = 0

    # -- wrappers are flattened to the local tensors the rank holds -------------------------
    def register(self, tensors, cat: str) -> int:
        return super().register(local_tensors(tensors), cat)

    def categorize(self, tensors, cat: str) -> int:
        return super().categorize(local_tensors(tensors), cat)

    @contextlib.contextmanager
    def tagging(self, cat: str):
        """Every storage allocated inside the block gets category ``cat`` (innermost tag wins)."""
        old, self.tag = self.tag, cat
        try:
            yield
        finally:
            self.tag = old

    def _alloc(self, st, cat, op):
        if cat == "other" and self.tag is not None:
            cat = self.tag
        return super()._alloc(st, cat, op)

    # -- storage resizes, which no dispatch mode sees -----------------------------------------
    def _on_resize(self, st):
        # (no device filter: a FakeTensor's storage lives on "meta" whatever the tensor's device)
        if self.closed:
            return
        self.resize_events += 1
        rec = self._live.get(st._cdata)
        if rec is not None:
            if rec.nbytes != st.nbytes():
                self._resize(rec, st, "UntypedStorage.resize_")
        elif st.nbytes() > 0:
            self._alloc(st, "other", "UntypedStorage.resize_")

    def __enter__(self):
        from torch._guards import active_fake_mode
        self._fake_on_entry = active_fake_mode()
        orig = self._orig_resize = torch.UntypedStorage.resize_
        counter = self

        def resize_(st, size):
            out = orig(st, size)
            counter._on_resize(st)
            return out

        resize_.__wrapped__ = orig
        torch.UntypedStorage.resize_ = resize_
        return super().__enter__()

    def __exit__(self, *exc):
        if self._orig_resize is not None:
            torch.UntypedStorage.resize_ = self._orig_resize
            self._orig_resize = None
        return super().__exit__(*exc)

    # -- the dispatch hook ----------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(_is_dtensor_type(t) for t in types):
            return NotImplemented          # let DTensor desugar into local ops, which we see
        from torch._guards import active_fake_mode
        fake = active_fake_mode()
        if fake is not None and str(func) == _WAIT:
            self.ops[_WAIT] += 1
            return args[0]                 # eager wait_tensor returns its input
        if fake is not self._fake_on_entry:
            return func(*args, **(kwargs or {}))   # DTensor sharding propagation: metadata only
        name = str(func)
        if name.startswith("_c10d_functional.") and self.tag is None:
            with self.tagging("comm"):
                return super().__torch_dispatch__(func, types, args, kwargs)
        return super().__torch_dispatch__(func, types, args, kwargs)
