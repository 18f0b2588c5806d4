"""Pipeline parallelism: one stage and the micro-batches it keeps in flight (chapter 05).

A stage holds its layers' parameters, gradients and optimizer state (the first stage
also the embedding, the last the final norm and ``lm_head``, a copy of it when tied):
the stages are not equal.  PyTorch's schedules run ``M`` micro-batches of ``batch_size``
sequences:

* **GPipe** runs all ``M`` forwards, then all ``M`` backwards: ``M`` micro-batches'
  activations are alive at the first backward;
* **1F1B** runs ``min(M, pp - stage)`` forwards first, then alternates one backward and
  one forward: stage ``s`` never holds more than ``pp - s`` micro-batches; the first
  stage holds the most, the last one.

Each micro-batch in flight keeps what its forward saved (chapter 03), its stage output
(the ``b × s × h`` hidden states sent on, kept by the schedule for its backward; the last
stage keeps its logits), and under autocast the bf16 weight copies its backward needs
(each micro-batch's forward casts its own).  The stage's receive buffers, one per
micro-batch (hidden states in, except on the first stage; gradients back, except on the
last), live as long as the stage (``pp_buffers``).  From the second backward on, the
gradients exist already (they accumulate), so the peak is the larger of "first backward,
no gradients yet" and "a later backward with the gradients".
"""
from __future__ import annotations

from .timeline import RankMark


def in_flight(schedule: str, pp: int, microbatches: int, stage: int) -> int:
    """Micro-batches whose activations stage ``stage`` holds at its first backward (chapter 05):
    ``min(M, pp - stage)`` for 1F1B, ``M`` for GPipe."""
    if schedule == "gpipe":
        return microbatches
    return min(microbatches, pp - stage)


def stage_output_bytes(spec, sc, last: bool) -> object:
    """What the schedule keeps of one micro-batch's stage output until its backward:
    the hidden states (``T·H`` in the residual dtype) or, on the last stage, the bf16 logits ``2·T·V``."""
    if last:
        return 2 * sc.tokens * spec.vocab_size
    return sc.residual_bytes * sc.tokens * spec.hidden_size


def receive_buffers(spec, sc, pp: int, microbatches: int, stage: int) -> object:
    """Bytes of a stage's receive buffers: one ``T × H`` buffer per micro-batch for the
    hidden states (every stage but the first) and one for their gradients (every stage but
    the last), in the residual dtype (chapter 05)."""
    one = sc.residual_bytes * sc.tokens * spec.hidden_size
    return microbatches * one * ((stage > 0) + (stage < pp - 1))


def pipeline_marks(fresh, accumulating, per_microbatch, output, buffers, schedule: str, pp: int,
                   microbatches: int, stage: int) -> list[RankMark]:
    """One stage's moments from two runs of the step timeline (chapter 05): ``fresh``
    (the first micro-batch's backward, no gradients yet) and ``accumulating`` (a later
    one, gradients already there), each with the other in-flight micro-batches' saved
    bytes (``per_microbatch`` each), this micro-batch's kept output and the receive buffers."""
    k = in_flight(schedule, pp, microbatches, stage)
    out = []

    def add(marks, others, tag, phases):
        for mk in marks:
            if mk.phase not in phases:
                continue
            parts = dict(mk.parts)
            parts["pp_buffers"] = buffers
            if mk.phase != "step":
                parts["in_flight_activations"] = others * per_microbatch
                if mk.phase == "backward" or mk.label == "end":
                    parts["activations"] = parts.get("activations", 0) + output
            out.append(mk._replace(label=f"{tag}{mk.label}", parts=parts))
    add(fresh, k - 1, "first micro-batch: ", ("forward", "backward"))
    if schedule == "gpipe":
        if microbatches > 1:
            add(accumulating, k - 2, "second backward: ", ("backward",))
    elif microbatches > k:
        add(accumulating, k - 1, "steady state: ", ("forward", "backward"))
    add(fresh, 0, "", ("step",))
    return out
