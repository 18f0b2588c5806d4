"""A parallel plan: how a training step is spread over GPUs (chapter 05).

``Plan(dp, tp, pp, cp, ep, zero, reshard_after_forward, sp, microbatches, schedule, offload)``
names the layout the way PyTorch users write it:

* ``dp``: data-parallel ranks; ``zero`` says what they share: 0 DDP (everything
  replicated, plus DDP's gradient buckets), 1 ZeRO-1 (DDP with PyTorch's
  ``ZeroRedundancyOptimizer``: optimizer state split by whole tensors), 2 and 3 FSDP2
  (``fully_shard``: parameters, gradients and optimizer state sharded; 2 keeps each
  layer's gathered parameters from its forward to its backward,
  ``reshard_after_forward=False``; 3 frees them after the forward, ``True``);
* ``tp``: tensor-parallel ranks (transformers' tp plan: heads and MLP width split, norms
  whole); ``sp``: sequence parallelism on top (norms split along the tokens);
* ``pp``: pipeline stages, run with ``microbatches`` micro-batches (default: ``pp``) by
  ``schedule`` (``"1f1b"`` or ``"gpipe"``);
* ``cp``: context-parallel ranks (the sequence split, ring attention);
* ``ep``: expert-parallel ranks, taken from the data-parallel ones (experts split over
  them, tokens dispatched by all-to-all);
* ``offload``: ``"none"``, ``"optimizer"`` (optimizer state and its step on the host),
  ``"params"`` (the rank's parameter and gradient shards on the host) or ``"both"``.

GPUs in use: ``world_size = dp · tp · pp · cp``.  :meth:`Plan.check` validates a plan
against a model (divisibility of heads, layers, experts) and raises a one-line
``ValueError`` naming the field and what is allowed.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..spec import ModelSpec
from ..validation import choice, positive_int

SCHEDULES = ("1f1b", "gpipe")
OFFLOADS = ("none", "optimizer", "params", "both")
ZERO_STAGES = (0, 1, 2, 3)


@dataclass(frozen=True)
class Plan:
    """One parallel layout (see the module docstring; chapter 05)."""

    dp: int = 1
    tp: int = 1
    pp: int = 1
    cp: int = 1
    ep: int = 1
    zero: int = 0
    reshard_after_forward: bool | None = None
    sp: bool = False
    microbatches: int | None = None
    schedule: str = "1f1b"
    offload: str = "none"

    def __post_init__(self):
        if self.microbatches is None:          # a pipeline defaults to one micro-batch per stage
            object.__setattr__(self, "microbatches", self.pp if isinstance(self.pp, int) and self.pp > 1 else 1)
        for f in ("dp", "tp", "pp", "cp", "ep", "microbatches"):
            object.__setattr__(self, f, positive_int(f, getattr(self, f)))
        if isinstance(self.zero, bool) or self.zero not in ZERO_STAGES:
            raise ValueError(f"zero: must be one of 0, 1, 2, 3, got {self.zero!r}")
        choice("schedule", self.schedule, SCHEDULES)
        choice("offload", self.offload, OFFLOADS)
        if not isinstance(self.sp, bool):
            raise ValueError(f"sp: must be True or False, got {self.sp!r}")
        raf = self.reshard_after_forward
        if raf is not None and not isinstance(raf, bool):
            raise ValueError(f"reshard_after_forward: must be True, False or None, got {raf!r}")
        if raf is not None and self.zero < 2:
            raise ValueError(f"reshard_after_forward: an FSDP2 setting, for zero=2 or 3 only (got zero={self.zero})")
        if raf is not None and raf != (self.zero == 3):
            raise ValueError(f"reshard_after_forward: {raf} is zero={2 if raf is False else 3} "
                             f"(zero=3 reshards after the forward, zero=2 does not), got zero={self.zero}")
        if self.sp and self.tp == 1:
            raise ValueError("sp: sequence parallelism splits the norms over the tensor-parallel ranks; needs tp > 1")
        if self.zero and self.dp == 1 and self.ep == 1:
            raise ValueError(f"zero: {self.zero} shards over the data-parallel ranks; needs dp > 1 (got dp=1)")
        if self.dp % self.ep:
            raise ValueError(f"ep: expert-parallel ranks are taken from the data-parallel ones; "
                             f"dp={self.dp} is not a multiple of ep={self.ep}")
        if self.pp > 1 and self.schedule == "1f1b" and self.microbatches < self.pp:
            raise ValueError(f"microbatches: 1F1B needs at least as many micro-batches as stages "
                             f"(pp={self.pp}), got {self.microbatches}")
        if self.pp == 1 and self.microbatches != 1:
            raise ValueError(f"microbatches: pipeline micro-batches need pp > 1 (got microbatches="
                             f"{self.microbatches} with pp=1; use grad_accum for accumulation)")
        if self.offload in ("params", "both") and self.zero < 2:
            raise ValueError(f"offload: {self.offload!r} offloads the parameter shards of FSDP2; needs zero=2 or 3")

    @property
    def world_size(self) -> int:
        """GPUs the plan uses: ``dp · tp · pp · cp``."""
        return self.dp * self.tp * self.pp * self.cp

    @property
    def fsdp(self) -> bool:
        """True when FSDP2 shards the model (``zero`` 2 or 3)."""
        return self.zero >= 2

    @property
    def resharded(self) -> bool:
        """FSDP2's ``reshard_after_forward`` (True for zero=3)."""
        return self.zero == 3

    def label(self) -> str:
        """A short name: ``"dp8 zero3"``, ``"tp4 sp"``, ``"pp4 1f1b M=8"``."""
        parts = []
        for f in ("dp", "tp", "pp", "cp", "ep"):
            v = getattr(self, f)
            if v > 1:
                parts.append(f"{f}{v}")
        if self.dp > 1 or self.ep > 1:
            parts.append(("ddp", "zero1", "zero2", "zero3")[self.zero])
        if self.sp:
            parts.append("sp")
        if self.pp > 1:
            parts.append(f"{self.schedule} M={self.microbatches}")
        if self.offload != "none":
            parts.append(f"offload {self.offload}")
        return " ".join(parts) or "single GPU"

    def check(self, spec: ModelSpec) -> "Plan":
        """Validate against ``spec``: heads by ``tp``, layers by ``pp``, experts by ``ep``... (chapter 05)."""
        if self.tp > 1:
            if spec.num_heads % self.tp:
                raise ValueError(f"tp: {self.tp} does not divide {spec.name}'s {spec.num_heads} attention heads")
            kv = spec.num_kv_heads
            if not spec.is_mla and kv % self.tp and self.tp % kv:
                raise ValueError(f"tp: {self.tp} and {spec.name}'s {kv} KV heads: one must divide the other "
                                 f"(KV heads are split, or copied when tp > n_kv_heads)")
            widths = [("intermediate_size", spec.intermediate_size)] if not all(spec.moe_layers) else []
            for name, w in widths:
                if w % self.tp:
                    raise ValueError(f"tp: {self.tp} does not divide {spec.name}'s {name} {w}")
        if self.pp > spec.num_layers:
            raise ValueError(f"pp: {self.pp} stages for {spec.name}'s {spec.num_layers} layers; "
                             f"at most {spec.num_layers}")
        if self.ep > 1:
            if not spec.is_moe:
                raise ValueError(f"ep: {spec.name} has no experts; expert parallelism needs an MoE model (ep=1)")
            if spec.num_experts % self.ep:
                raise ValueError(f"ep: {self.ep} does not divide {spec.name}'s {spec.num_experts} experts")
        return self

    def with_(self, **changes) -> "Plan":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)
