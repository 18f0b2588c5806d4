"""Per-token log-probabilities of the labels under a model's logits: the forms the RL bench measures (chapter 06).

Every RL loss needs ``log p(label_t | prefix)`` for each token.  How it is computed
decides the largest activation of an RL step, a tensor as wide as the vocabulary:

* ``"full"`` (the reference form)::

      torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None])[..., 0]

  ``logits.float()`` is a ``B x S x V`` fp32 copy (4 B S V bytes, freed once the
  log-softmax has read it) and the log-softmax output is another ``4 B S V`` bytes,
  saved by autograd for the backward when gradients flow.

* ``"selective"``: the algorithm of TRL v1.9.0's ``selective_log_softmax``
  (``trl/trainer/utils.py``), written here from its description, applied to the logits
  in their own dtype (no ``.float()``), as TRL's trainers call it.  fp32/fp64 logits:
  ``gather`` the label logits, then ``logsumexp`` one sequence (row) at a time, stacked,
  and subtracted.  Other dtypes (bf16): ``log_softmax`` one row at a time, gathered,
  then stacked.  The transient vocabulary-wide tensors are then one row (``S x V``) at a
  time instead of the whole batch, and there is no fp32 copy; autograd still saves
  every row's log-softmax output when gradients flow (bf16 logits: ``2 B S V`` bytes in
  all, instead of the full form's ``4 B S V``).
"""
from __future__ import annotations

import torch

__all__ = ["LOGPROB_FORMS", "token_logprobs"]

LOGPROB_FORMS = ("full", "selective")


def token_logprobs(logits, labels, form: str = "full"):
    """``(B, S)`` log-probabilities of ``labels`` (``(B, S)`` int64) under ``logits`` (``(B, S, V)``).

    ``form="full"``: ``log_softmax(logits.float(), -1).gather(-1, labels)`` (fp32 result).
    ``form="selective"``: TRL v1.9.0's row-by-row algorithm (see the module docstring);
    the result has the logits' dtype.
    """
    idx = labels.unsqueeze(-1)
    if form == "full":
        return torch.log_softmax(logits.float(), -1).gather(-1, idx).squeeze(-1)
    if form != "selective":
        raise ValueError(f"logprob: unknown value {form!r}; allowed: {', '.join(LOGPROB_FORMS)}")
    if logits.dtype in (torch.float32, torch.float64):
        picked = logits.gather(-1, idx).squeeze(-1)
        norm = torch.stack([torch.logsumexp(row, -1) for row in logits])
        return picked - norm
    rows = [torch.log_softmax(row, -1).gather(-1, lab.unsqueeze(-1)).squeeze(-1)
            for row, lab in zip(logits, labels)]
    return torch.stack(rows)
