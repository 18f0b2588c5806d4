"""The roles of an RL step and what each keeps resident (chapter 06).

* **policy**: the model being trained, a causal LM: weights, optimizer state (and, during
  the step, gradients) in its precision (chapter 04), or with LoRA a frozen bf16 base plus
  fp32 adapters (PEFT's default) with their optimizer state.
* **reference**: a frozen copy of the policy's starting point, bf16, inference only:
  ``2·P`` bytes.  A LoRA policy's reference is the policy with its adapters disabled: the
  base it already holds, so no second copy.
* **reward**: a frozen scalar-head model (``AutoModelForSequenceClassification`` with one
  label: the backbone plus a ``score`` Linear(H, 1) instead of lm_head), bf16, possibly
  another size than the policy.
* **critic**: a scalar-head model trained like the policy (PPO's value model).  With LoRA
  it may share the policy's base (no second copy), training its own adapters and head.
* **rollout**: the engine that generates: the policy itself (transformers' ``generate``),
  or a vLLM engine colocated on the same GPU with its own weights (:mod:`memlib.rl.engine`).

A scalar-head model has the causal LM's parameters minus lm_head (when it is not tied to
the embedding) plus ``H`` for the score head::

    P_value = P − V·H·[lm_head untied] + H
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

from ..optimizers import tensor_state_bytes
from ..params import count_params, param_sizes, param_tensors, total_params
from ..spec import ModelSpec

ROLES = ("policy", "reference", "reward", "critic", "rollout")
HEADS = ("lm", "value")


@dataclass(frozen=True)
class Role:
    """One model of an RL step (chapter 06).

    ``name`` (one of :data:`ROLES`), ``spec`` (its architecture), ``head`` (``"lm"``: a
    causal LM; ``"value"``: a scalar head), ``trained``, ``precision`` (``"bf16"`` or
    ``"mixed"`` for a trained role, ``"bf16"`` for a frozen one), ``lora_rank`` (a LoRA
    role: frozen bf16 base + adapters) and ``shares_base`` (the role whose base weights it
    reads instead of holding its own: a LoRA reference or a critic sharing the policy's).
    """

    name: str
    spec: ModelSpec
    head: str = "lm"
    trained: bool = False
    precision: str = "bf16"
    lora_rank: int | None = None
    shares_base: str | None = None

    @property
    def params(self) -> int:
        """Parameters of this role's model (the scalar head counted for a value model)."""
        return model_params(self.spec, self.head)

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weights this role holds itself: ``P·bytes`` (bf16 base for LoRA), 0 when
        it shares another role's base."""
        if self.shares_base:
            return 0
        per = 4 if (self.trained and self.precision == "mixed" and not self.lora_rank) else 2
        return self.params * per


def lm_head_params(spec: ModelSpec) -> int:
    """Parameters of lm_head when it is its own matrix (0 when tied to the embedding; chapter 01)."""
    return count_params(spec).components.get("lm_head", 0)


def model_params(spec: ModelSpec, head: str = "lm") -> int:
    """Parameters of a causal LM (``head="lm"``) or of the same backbone with a scalar
    ``score`` head (``head="value"``): ``P − lm_head + H`` (chapter 06)."""
    if head == "lm":
        return total_params(spec)
    return total_params(spec) - lm_head_params(spec) + spec.hidden_size


@lru_cache(maxsize=256)
def value_param_sizes(spec: ModelSpec) -> tuple[int, ...]:
    """Parameter tensor sizes of the scalar-head model in registration order (chapter 06):
    the causal LM's (:func:`memlib.params.param_sizes`) without lm_head, then ``score``."""
    sizes = list(param_sizes(spec))
    head = lm_head_params(spec)
    if head:
        last = len(sizes) - 1 - sizes[::-1].index(head)
        del sizes[last]
    return tuple(sizes) + (spec.hidden_size,)


def value_optimizer_bytes(spec: ModelSpec, optimizer: str, state_bytes: int) -> int:
    """Optimizer state of a fully trained scalar-head model (chapter 06): the causal LM's
    tensors without lm_head, plus the ``1 × H`` score matrix."""
    matrices, vectors = param_tensors(spec)
    matrices = list(matrices)
    head = lm_head_params(spec)
    if head:
        for i, (r, c, n) in enumerate(matrices):
            if r * c == head and n == 1:
                matrices[i] = (r, c, 0)
                break
    matrices.append((1, spec.hidden_size, 1))
    return tensor_state_bytes(matrices, vectors, optimizer, state_bytes)


@lru_cache(maxsize=256)
def value_spec(spec: ModelSpec) -> ModelSpec:
    """The spec a value model's *timeline* runs on (chapter 06): the same layers with a
    vocabulary one token wide, untied.  A ``score`` head is a Linear(H, 1), so every
    vocabulary-wide tensor of a causal LM's step (logits, log-softmax, their gradients)
    shrinks to ``1/V`` of its size; the weights and gradients come from the real spec."""
    return replace(spec, vocab_size=1, tie_word_embeddings=False, final_softcap=None,
                   name=f"{spec.name} (value head)")
