"""Offload: what moves to the host's memory (chapter 05).

``offload="optimizer"`` keeps the optimizer state on the host and runs the optimizer
step there (DeepSpeed's ZeRO-Offload, FSDP2 with a CPU optimizer): the device loses the
``optimizer`` component and the step's temporaries.  ``"params"`` keeps the rank's
parameter shards and their gradient shards on the host (FSDP2's ``CPUOffloadPolicy``
moves both; the device still gathers each layer whole to compute with it).  ``"both"``
moves all three, which is what ``CPUOffloadPolicy`` does when the optimizer is built on
the offloaded parameters.  The moved bytes are reported as host memory
(``meta["host"]``), never dropped.  Not measured by the bench: the device's drop is
exactly the bytes moved (the staging copies of one shard at a time are left out).
"""
from __future__ import annotations

from ..validation import as_int
from .timeline import RankMark


def offload_marks(marks, offload: str) -> tuple[list[RankMark], dict]:
    """``(marks on the device, {component: bytes on the host})`` for ``offload`` (chapter 05)."""
    moved = {"optimizer": ("optimizer",), "params": ("weights", "gradients"),
             "both": ("weights", "gradients", "optimizer")}[offload]
    host: dict = {}
    out = []
    for mk in marks:
        parts = dict(mk.parts)
        for c in moved:
            v = parts.pop(c, 0)
            host[c] = max(host.get(c, 0), as_int(v))
        if "optimizer" in moved and mk.phase == "step":
            host["step_temporaries"] = max(host.get("step_temporaries", 0), as_int(parts.get("transient", 0)))
            parts["transient"] = 0
        for c in moved:
            parts[c] = 0
        out.append(mk._replace(parts=parts))
    return out, host
