"""One pipeline stage with its in-flight micro-batches, run by ``torch.distributed.pipelining`` (chapter 05).

**Definition (the ``pp`` scenario).**  A world of ``P`` ranks is one pipeline of ``P``
stages; the bench plays stage ``rank``:

* the decoder layers are split into ``P`` contiguous runs, stage ``r`` getting layers
  ``[r * L // P, (r + 1) * L // P)`` (the first stages get one layer fewer when ``P`` does
  not divide ``L``);
* stage 0 also holds the token embedding; the last stage holds the final norm and
  ``lm_head`` (its own copy when the embeddings are tied: the tie cannot span two ranks)
  and computes the loss (transformers' own ``loss_function`` on the logits); the rotary
  embedding (a buffer) is on every stage;
* the stage is wrapped in ``torch.distributed.pipelining.PipelineStage`` with static input
  and output shapes (``(b, s)`` token ids into stage 0, ``(b, s, h)`` hidden states
  between stages, ``(b, s, vocab)`` logits out of the last) and run by PyTorch's own
  ``Schedule1F1B`` or ``ScheduleGPipe`` over ``M`` micro-batches of ``batch_size`` rows
  (``step(..., return_outputs=False)``), which then scales the gradients by ``1 / M``;
* AdamW (loop) over the stage's parameters; two steps, the second measured.

The schedule runs for real under the fake process group: its sends and receives move no
data, but the receive buffers it allocates (one activation buffer per micro-batch on every
stage but the first, one gradient buffer per micro-batch on every stage but the last, all
kept for the life of the stage) and the activations of the micro-batches it keeps in flight
(1F1B: ``min(M, P - rank)`` forwards before the first backward; GPipe: all ``M``) are
counted as they are.  Mixed precision: fp32 stage, autocast around each micro-batch's
forward; the hidden states sent between stages are then fp32 (the residual stream).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from .tp_plan import decoder_layers

__all__ = ["setup_pp", "stage_layers"]


def stage_layers(n_layers: int, stages: int, rank: int) -> tuple[int, int]:
    """``(first, end)`` decoder-layer indices of stage ``rank``: ``[rank * L // P, (rank + 1) * L // P)``."""
    return rank * n_layers // stages, (rank + 1) * n_layers // stages


def _static_vote(sched):
    """Skip the schedule's P2P warm-up vote; every stage has static shapes, so it would say STATIC.

    ``_warmup_p2p`` sends a one-element vote around the pipeline and reads the result with
    ``.item()``, which fake tensors cannot answer.  Every stage of this bench is built with
    ``input_args``/``output_args``, which is exactly when the vote returns ``STATIC``; the
    vote runs once, in step 1's initialisation, on tensors of a few bytes, so skipping it
    changes nothing in the measured step.
    """
    from torch.distributed.pipelining.stage import InferenceMode

    def warmup(stages, has_backward, p2p_done):
        for st in stages:
            st._inference_mode = InferenceMode.STATIC
    sched._warmup_p2p = warmup


class _StageModule(nn.Module):
    """The part of a causal LM that one pipeline stage runs (see the module docstring)."""

    def __init__(self, lm, first: bool, last: bool, autocast: bool):
        super().__init__()
        self.lm = lm
        self.first, self.last, self.use_autocast = first, last, autocast

    def forward(self, x):
        ctx = contextlib.nullcontext()
        if self.use_autocast:
            from .autocast import CudaAutocastPolicy
            ctx = contextlib.ExitStack()
            ctx.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
            ctx.enter_context(CudaAutocastPolicy("cpu"))
        with ctx:
            base = self.lm.base_model
            s = x.shape[1]
            pos = torch.arange(s, device=x.device).unsqueeze(0)
            if self.first:
                h = base(input_ids=x, position_ids=pos, use_cache=False).last_hidden_state
            else:
                h = base(inputs_embeds=x, position_ids=pos, use_cache=False).last_hidden_state
            if self.last:
                return self.lm.lm_head(h)
            return h


def setup_pp(model, stages: int, rank: int, precision: str, *, microbatches: int, schedule: str,
             batch_size: int, seq_len: int):
    """Cut ``model`` down to stage ``rank`` of ``stages``, build its schedule; return a bench run."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    from .dist_run import DistRun

    layers = decoder_layers(model)
    n = len(layers)
    if stages > n:
        raise ValueError(f"pp: {stages} stages but the model has only {n} decoder layers")
    if schedule == "1f1b" and microbatches < stages:
        raise ValueError(f"microbatches: Schedule1F1B needs at least as many micro-batches as stages "
                         f"({stages}), got {microbatches}")
    lo, hi = stage_layers(n, stages, rank)
    first, last = rank == 0, rank == stages - 1
    base = model.base_model
    name = next(k for k, v in base.named_children() if v is layers)
    setattr(base, name, nn.ModuleList(list(layers)[lo:hi]))
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    if not first:
        base.embed_tokens = None
    if not last:
        base.norm = nn.Identity()
        model.lm_head = None
    elif tied and not first:   # the last stage's own copy of the tied head
        model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
    mod = _StageModule(model, first, last, autocast=precision == "mixed")

    cfg = model.config.get_text_config()
    h, vocab = int(cfg.hidden_size), int(cfg.vocab_size)
    act_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    b, s = batch_size, seq_len
    # static shapes; requires_grad as the real tensors have it (it decides which grads flow)
    x = torch.empty(b, s, dtype=torch.long) if first else torch.empty(b, s, h, dtype=act_dtype, requires_grad=True)
    y = torch.empty(b, s, vocab if last else h, dtype=act_dtype, requires_grad=True)
    stage = PipelineStage(mod, rank, stages, torch.device("cpu"), input_args=(x,), output_args=(y,))
    del x, y

    def loss_fn(logits, target):
        return model.loss_function(logits, target, vocab_size=vocab)

    sched_cls = Schedule1F1B if schedule == "1f1b" else ScheduleGPipe
    sched = sched_cls(stage, microbatches, loss_fn=loss_fn)   # every rank passes it: it switches the backward on
    _static_vote(sched)
    params = [p for p in mod.parameters() if p.requires_grad]

    def step_fn(ids, counter, autocast):
        fwd, bwd = stage.forward_one_chunk, stage.backward_one_chunk

        def f(*a, **k):
            counter.set_phase("forward")
            return fwd(*a, **k)

        def bw(*a, **k):
            counter.set_phase("backward")
            return bwd(*a, **k)
        stage.forward_one_chunk, stage.backward_one_chunk = f, bw
        try:
            counter.set_phase("forward")
            if first:
                sched.step(ids, return_outputs=False)
            elif last:
                sched.step(target=ids, return_outputs=False)
            else:
                sched.step(return_outputs=False)
        finally:
            del stage.forward_one_chunk, stage.backward_one_chunk
        return {}

    @contextlib.contextmanager
    def instrument(counter):
        saved = []
        for meth in ("_prepare_forward_infra", "_prepare_backward_infra"):
            orig = getattr(stage, meth)

            def wrapper(*a, _orig=orig, **k):
                with counter.tagging("pp_buffers"):
                    return _orig(*a, **k)
            setattr(stage, meth, wrapper)
            saved.append(meth)
        try:
            yield
        finally:
            for meth in saved:
                delattr(stage, meth)

    run = DistRun(mod, params, step_fn=step_fn, tracker="plain", autocast=False,
               meta={"stage": rank, "stages": stages, "layers": [lo, hi], "first_stage": first,
                     "last_stage": last, "tied_head_copy": tied and last and not first,
                     "schedule_class": sched_cls.__name__,
                     "pipelining": "torch.distributed.pipelining.PipelineStage (static shapes)"})
    run.instrument = instrument

    def buffers():   # the stage's receive buffers, for PyTorch's MemTracker (it cannot see them made)
        out = []
        for infos in list(stage.args_recv_info.values()) + list(getattr(stage, "grad_recv_info", {}).values()):
            out += [i.buffer for i in infos if getattr(i, "buffer", None) is not None]
        return out
    run.external = buffers
    return run
