"""The scenario: the knobs a practitioner types, and their validation (chapters 02–04).

One vocabulary for every estimate and for the bench (:mod:`memlib.measure` imports it):
``batch_size``, ``seq_len``, ``precision``, ``attention``, ``recompute``, ``optimizer``,
``optimizer_impl`` and ``runtime``.

``runtime`` says whose allocations are predicted, where software differs for the same
architecture (chapters 02, 07 and 08):

* ``"minimal"``: the architecture's true minimum (a sliding-window layer caches
  ``window - 1`` tokens), which serving engines approach;
* ``"transformers"``: what Hugging Face transformers allocates in the reference scenarios,
  which the bench measures: its sliding caches keep a view of the whole prefill, Falcon
  expands K/V to every head, Gemma 2 runs eager attention...;
* ``"vllm"``: what vLLM's paged KV cache holds (chapter 07): blocks of 16 tokens, and a
  sliding-window layer frees the blocks that fall wholly outside its window.

Training is modelled for transformers only (``runtime="transformers"``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .validation import choice, positive_int

PRECISIONS = ("bf16", "mixed")
ATTENTIONS = ("sdpa", "eager")
RECOMPUTE = ("none", "selective", "full")
OPTIMIZERS = ("adamw", "sgd", "sgd_momentum", "adafactor", "adamw_8bit", "lion")
#: How ``optimizer.step()`` walks the parameters: one tensor at a time (``foreach=False``),
#: all at once with ``torch._foreach_*`` (PyTorch's default on CUDA), or one fused kernel.
OPTIMIZER_IMPLS = ("loop", "foreach", "fused")
DEFAULT_OPTIMIZER_IMPL = "foreach"
RUNTIMES = ("minimal", "transformers", "vllm")
TRAIN_RUNTIMES = ("transformers",)
PHASES = ("forward", "backward", "step")

def check_seq_len(spec, seq_len, field: str = "seq_len"):
    """Validate ``seq_len`` (int or array) against the model's ``max_position_embeddings`` (chapter 02)."""
    seq_len = positive_int(field, seq_len)
    biggest = int(np.max(seq_len)) if isinstance(seq_len, np.ndarray) else seq_len
    if biggest > spec.max_position_embeddings:
        raise ValueError(f"{field}: {biggest} is beyond {spec.name}'s max_position_embeddings "
                         f"= {spec.max_position_embeddings}")
    return seq_len


@dataclass(frozen=True)
class Scenario:
    """The knobs of one training or prefill step (``B`` sequences of ``S`` tokens).

    ``batch_size``/``seq_len`` may be numpy arrays (sweeps).  ``_bench_cpu`` is a setting
    of the bench's CPU runs only (a dropout mask has the activation's dtype on the CPU,
    one byte on CUDA): the bridge :mod:`memlib.measure.compare` sets it; no public
    function takes it.
    """

    batch_size: object
    seq_len: object
    precision: str = "bf16"      # "bf16": everything bf16; "mixed": fp32 master + autocast bf16
    attention: str = "sdpa"      # "sdpa" (flash / memory-efficient kernel) or "eager"
    recompute: str = "none"
    optimizer: str = "adamw"
    optimizer_impl: str = DEFAULT_OPTIMIZER_IMPL
    runtime: str = "transformers"
    _bench_cpu: bool = field(default=False, repr=False)

    def __post_init__(self):
        choice("precision", self.precision, PRECISIONS)
        choice("attention", self.attention, ATTENTIONS)
        choice("recompute", self.recompute, RECOMPUTE)
        choice("optimizer", self.optimizer, OPTIMIZERS)
        choice("optimizer_impl", self.optimizer_impl, OPTIMIZER_IMPLS)
        choice("runtime", self.runtime, RUNTIMES)

    @property
    def tokens(self):
        return self.batch_size * self.seq_len

    @property
    def residual_bytes(self) -> int:
        """Bytes per element of the residual stream: the parameter dtype (fp32 under mixed)."""
        return 4 if self.precision == "mixed" else 2

    @property
    def mixed(self) -> bool:
        return self.precision == "mixed"

    def mask_bytes(self, dtype_bytes: int = 2) -> int:
        """Bytes per element of a dropout mask: a bool on CUDA (the bench's CPU: the dtype)."""
        return dtype_bytes if self._bench_cpu else 1


def attention_used(spec, attention: str) -> str:
    """The attention implementation transformers really runs for ``attention`` (chapter 03):
    the one asked for if the family offers it, else the family's default (Gemma 2: eager)."""
    choice("attention", attention, ATTENTIONS)
    return attention if attention in spec.attention_impls else spec.attention_impls[0]
