"""The GPU side of the bench: real runs on CUDA and the allocator's own numbers (chapter 07).

On a CUDA device the scenarios run for real, with randomly initialised weights (nothing
is downloaded).  Besides the storage counter (the same instrument as on the CPU, so the
two are comparable byte for byte) a run reports, in ``meta["cuda"]``:

* ``max_allocated``: ``torch.cuda.max_memory_allocated()`` over the measured window (the
  caching allocator rounds every block up to a multiple of 512 bytes and counts the
  cuBLAS workspace);
* ``max_reserved``: ``torch.cuda.max_memory_reserved()`` (segments the allocator holds,
  including freed-but-cached blocks and fragmentation);
* ``context_bytes``: device memory in use right after CUDA was initialised, before any
  tensor was allocated (``mem_get_info`` total - free): the CUDA context, plus whatever
  other processes hold on the device;
* ``non_pytorch_bytes``: at the end of the run, device memory in use that the
  allocator did not reserve: the context plus cuBLAS/cuDNN handles and lazily loaded
  kernels.

``memlib.measure`` never picks the GPU by itself: the default device is ``"cpu"`` (fake
tensors) so that stored outputs stay deterministic; pass ``device="cuda"`` or
``device="auto"``.
"""
from __future__ import annotations

import torch

DEVICES = ("auto", "cpu", "cuda")


def cuda_available() -> bool:
    try:
        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover
        return False


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; ``ValueError`` otherwise."""
    from ..validation import choice
    choice("device", device, DEVICES)
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        raise ValueError("device: 'cuda' was asked for but torch.cuda.is_available() is False")
    return device


def _used():
    free, total = torch.cuda.mem_get_info()
    return total - free, total


def cuda_baseline() -> dict:
    """Initialise CUDA (once per process) and record the memory in use before the model exists.

    ``context_bytes`` = device memory in use minus what PyTorch's allocator reserves: on
    a fresh process that is the CUDA context (plus other processes on the device).
    """
    import gc
    gc.collect()
    torch.cuda.init()
    torch.cuda.empty_cache()
    torch.cuda.synchronize()
    used, total = _used()
    return {"context_bytes": int(used - torch.cuda.memory_reserved()), "total_bytes": int(total),
            "allocated_at_start": int(torch.cuda.memory_allocated())}


def cuda_reset_peak() -> int:
    """Reset the allocator's peak statistics; returns the bytes allocated at that moment."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return int(torch.cuda.memory_allocated())


def cuda_report(before: dict | None, window_start_allocated: int | None = None) -> dict:
    """Allocator numbers at the end of a run (see the module docstring).

    ``max_allocated`` / ``max_reserved`` cover the window opened by :func:`cuda_reset_peak`
    (or the whole process); ``peak_above_start`` = ``max_allocated`` minus the bytes
    allocated when the window opened (weights, buffers, inputs, optimizer state).
    """
    torch.cuda.synchronize()
    used, total = _used()
    reserved = int(torch.cuda.memory_reserved())
    max_alloc = int(torch.cuda.max_memory_allocated())
    out = dict(before or {})
    out.update({
        "max_allocated": max_alloc,
        "max_reserved": int(torch.cuda.max_memory_reserved()),
        "window_start_allocated": window_start_allocated,
        "peak_above_start": None if window_start_allocated is None else max_alloc - window_start_allocated,
        "allocated_end": int(torch.cuda.memory_allocated()),
        "reserved_end": reserved,
        "used_end": int(used),
        "non_pytorch_bytes": int(used - reserved),
    })
    return out


def device_info() -> dict:
    """Name, capability, memory, driver and CUDA versions of device 0 (empty dict without a GPU)."""
    if not cuda_available():
        return {}
    props = torch.cuda.get_device_properties(0)
    info = {"name": props.name, "capability": list(torch.cuda.get_device_capability(0)),
            "total_memory": int(props.total_memory), "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    try:
        import subprocess
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        info["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except Exception:
        info["driver"] = None
    return info
