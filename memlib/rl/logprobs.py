"""The per-token log-probabilities every RL loss needs, and what their vocabulary-wide tensors cost (chapter 06).

Every recipe but SFT needs ``log p(label_t | prefix)`` for each of the ``K`` positions it
scores (``K = S`` unless only the completion's logits are kept, TRL's ``logits_to_keep``).
The tensors that compute it are as wide as the vocabulary: ``N = B·K·V`` values.

* ``"full"`` (``log_softmax(logits.float(), -1).gather(-1, labels)``, the reference form):
  the bf16 logits (``2N`` bytes), their fp32 copy (``4N``) and the fp32 log-softmax
  (``4N``) exist at once: ``10N``.  With gradients, the log-softmax (``4N``) is saved for
  the backward, which adds the gather's zero-filled gradient and the scattered one
  (``8N``): ``12N`` at the start of the backward.  Without gradients (the reference's
  scoring pass) nothing is saved, but the forward still peaks at ``10N``.
* ``"selective"`` (TRL v1.9.0's ``selective_log_softmax`` on bf16 logits): the log-softmax
  of one sequence (row) at a time, in the logits' dtype.  With gradients every row's
  output is saved (``2N`` in all) beside the logits (``2N``): ``4N`` at the end of the
  forward; the backward stacks the rows' gradients into the logits' gradient (``2N + 2N``)
  once the saved rows are freed: ``4N``.  Without gradients: the logits and one row,
  ``2N + 2·K·V``.
* ``"sft"``: transformers' own cross-entropy, which upcasts the logits and saves the fp32
  log-softmax exactly as ``"full"`` does (chapter 03).

The bf16 logits are the output of lm_head in bf16, or under autocast (mixed precision).
"""
from __future__ import annotations

from typing import NamedTuple

from ..validation import choice

LOGPROB_FORMS = ("full", "selective")


class VocabBytes(NamedTuple):
    """Vocabulary-wide bytes of one log-prob computation (chapter 06).

    ``forward``: transient bytes at the forward's peak besides what is saved;
    ``saved``: what autograd keeps for the backward; ``backward``: transient bytes at the
    start of the backward; ``backward_saved``: what is still saved then; ``no_grad``: the
    peak of the same computation without gradients (a scoring pass).
    """

    forward: int
    saved: int
    backward: int
    backward_saved: int
    no_grad: int


def vocab_bytes(form: str, sequences: int, positions: int, vocab: int) -> VocabBytes:
    """The vocabulary-wide bytes of ``form`` over ``N = sequences × positions × vocab`` values
    (module docstring; chapter 06): full ``(6N, 4N, 8N, 4N, 10N)``, selective
    ``(2N, 2N, 4N, 0, 2N + 2·K·V)``."""
    choice("logprob", form, LOGPROB_FORMS + ("sft",))
    n = sequences * positions * vocab
    if form == "selective":
        return VocabBytes(forward=2 * n, saved=2 * n, backward=4 * n, backward_saved=0,
                          no_grad=2 * n + 2 * positions * vocab)
    return VocabBytes(forward=6 * n, saved=4 * n, backward=8 * n, backward_saved=4 * n, no_grad=10 * n)
