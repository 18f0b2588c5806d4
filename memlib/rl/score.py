"""The score phase of an RL step: the frozen forwards that label the batch (chapter 06).

Before the policy trains, the batch is scored, one model after the other, each under
``no_grad`` (nothing is saved for a backward; a tensor lives while the code holds it):

* the **reference** computes the per-token log-probs of the ``B`` sequences.  Its peak
  is at the head, the vocabulary-wide log-prob tensors: ``10·B·K·V`` bytes in the full
  form (bf16 logits, their fp32 copy, the fp32 log-softmax), ``2·B·K·V + 2·K·V`` in TRL's
  selective form (:mod:`memlib.rl.logprobs`), unless a layer's own transients are larger
  (chapter 03's prefill transients, without a KV cache).  It keeps ``4·B·K`` bytes of
  fp32 log-probs for the loss (DPO: their sums, ``4·B``);
* the **reward model** (a scalar head) scores each sequence at its last position; its
  peak is a layer's transients; it keeps ``B`` fp32 scores and advantages (``8·B``);
* PPO's **critic** computes the old values at every position (under autocast when the
  step is mixed: its layers' bf16 weight copies are cached through its forward); it
  keeps the values, advantages and returns, three ``4·B·K`` tensors.

The phase's peak is the resident memory plus the largest of these moments, plus what the
earlier ones kept.  A recipe with none of them (SFT, DPO with precomputed reference
log-probs, GRPO with ``beta = 0`` and a rule-based reward) has no score phase.
"""
from __future__ import annotations

from ..activations import prefill_transients
from ..scenario import Scenario
from ..spec import ModelSpec
from ..training import _cache_parts, matmul_weight_params
from .logprobs import vocab_bytes


def layer_transient(spec: ModelSpec, sequences: int, seq_len: int, attention: str = "sdpa",
                    mixed: bool = False) -> int:
    """The largest transient of a frozen forward's layers (chapter 03's prefill candidates,
    :func:`memlib.activations.prefill_transients`; no KV cache is built).  ``mixed``: fp32
    weights under autocast, a fp32 residual stream and bf16 matmul outputs."""
    sc = Scenario(sequences, seq_len, "bf16", attention)
    return max(prefill_transients(spec, sc, 2, 4 if mixed else 2).values())


def reference_moments(spec: ModelSpec, sequences: int, seq_len: int, positions: int, logprob: str = "full",
                      attention: str = "sdpa") -> list:
    """The reference forward's moments (chapter 06): ``[(label, {part: bytes})]`` with the
    layers' transient (``activations``) and the head's log-prob tensors (``logits``,
    ``vocab_bytes(...).no_grad``)."""
    head = vocab_bytes(logprob, sequences, positions, spec.vocab_size).no_grad
    return [("reference forward: layers", {"activations": layer_transient(spec, sequences, seq_len, attention)}),
            ("reference forward: log-probs", {"logits": head})]


def scalar_head_moments(spec: ModelSpec, sequences: int, seq_len: int, attention: str = "sdpa",
                        mixed: bool = False) -> list:
    """A scalar-head forward (reward model, or PPO's critic computing old values) under
    ``no_grad`` (chapter 06): its layers' largest transient; under autocast (``mixed``)
    plus the bf16 copies of every matmul weight of the backbone and the score head, which
    the autocast region keeps until the forward returns (chapter 04)."""
    cache = 0
    if mixed:
        cache = 2 * matmul_weight_params(spec) - _cache_parts(spec)[2] + 2 * spec.hidden_size
    return [("forward", {"activations": layer_transient(spec, sequences, seq_len, attention, mixed),
                         "autocast_cache": cache})]
