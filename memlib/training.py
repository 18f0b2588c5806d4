"""Training memory: gradients, optimizer state, precision recipes and the step timeline (chapter 04).

A training step goes through three phases, and memory peaks in one of them:

* **forward**: weights + optimizer state (+ gradients, when accumulating) + the
  activations each layer saves (:mod:`memlib.activations`), growing layer by layer; at
  the loss, the bf16 logits, their fp32 copy and the fp32 log-softmax are alive at once;
* **backward**: it starts with every saved activation plus the loss's three fp32
  ``T × V`` buffers (log-softmax, its gradient, the logits' gradient); then, from the
  last layer down, each layer's activations are freed as its gradients appear;
* **step**: weights + gradients + optimizer state + the optimizer's temporaries (AdamW
  without ``foreach`` computes ``sqrt(v) / c`` one tensor at a time: two temporaries the
  size of the largest parameter).

:func:`train_memory` evaluates the live bytes at every boundary of that timeline and
reports the peak, the phase it falls in, and what is live then.  Precision recipes:

* ``bf16``:  params, gradients and optimizer state in bf16: ``2 + 2 + 2·2 = 8`` bytes/param (AdamW);
* ``mixed``: fp32 params, gradients and AdamW state: ``4 + 4 + 8 = 16`` bytes/param (the
  ZeRO paper's figure), plus autocast's cache of bf16 copies of every matmul weight,
  ``2`` bytes/param, alive from its first use in the forward to the end of the backward.

The timeline itself (:func:`step_timeline`) is shared with LoRA (:mod:`memlib.lora`),
which changes what is trainable but not how a step unfolds.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .activations import (RECOMPUTE, Scenario, attention_used, causal_mask_bytes, layer_saved,
                          model_saved)
from .breakdown import Breakdown
from .kv_cache import check_seq_len
from .optimizers import OPTIMIZERS, optimizer_state_bytes
from .params import count_params, linear_bias_params, linear_layers, total_params
from .spec import ModelSpec, load_spec
from .validation import choice, positive_int

PHASES = ("forward", "backward", "step")
#: What each layer keeps under selective recompute: everything but attention's S×S tensors.
QUADRATIC = ("attn.softmax", "attn.probs_bf16", "attn.dropout_mask", "attn.dropout_out",
             "attn.softcap_tanh", "attn.sliding_mask")


def largest_param_tensor(spec: ModelSpec) -> int:
    """Elements of the largest parameter tensor as transformers lays it out.

    The token embedding (``V × H``), or for MoE models the fused expert tensor
    (``E × 2·I × H``: transformers keeps every expert's gate and up projections in one
    parameter).  AdamW's per-tensor temporaries have this size.
    """
    biggest = spec.vocab_size * spec.embed_dim
    if spec.is_moe:
        biggest = max(biggest, spec.num_experts * 2 * spec.moe_intermediate_size * spec.hidden_size)
    return biggest


@lru_cache(maxsize=256)
def matmul_weight_params(spec: ModelSpec) -> int:
    """Parameters autocast casts to bf16 and caches: every Linear's weight and bias, lm_head
    and the MoE routers (DeepSeek's router too: it upcasts to fp32, autocast casts back).

    Falcon's projections compute ``x @ W.T``; autocast does not cache a cast of the view
    ``W.T`` (the copies are saved per layer instead, see :mod:`memlib.activations`), so
    only its lm_head is cached.
    """
    if spec.model_type in ("falcon", "RefinedWeb", "RefinedWebModel"):
        return spec.vocab_size * spec.embed_dim
    n = sum(i * o * c for _, i, o, c in linear_layers(spec)) + spec.vocab_size * spec.embed_dim
    n += linear_bias_params(spec)
    if spec.is_moe:
        n += sum(spec.moe_layers) * spec.num_experts * spec.hidden_size
    return n


def step_temporaries(optimizer: str, largest_tensor: int, state_bytes: int) -> int:
    """Peak extra bytes inside ``optimizer.step()`` with ``foreach=False`` (one tensor at a time)."""
    if optimizer in ("adamw", "adamw_8bit"):
        return 2 * largest_tensor * state_bytes      # sqrt(v), then sqrt(v) / c
    if optimizer == "adafactor":
        return largest_tensor * state_bytes
    return 0                                         # SGD and Lion update in place


@lru_cache(maxsize=256)
def _grads_by_stage(spec: ModelSpec, param_bytes: int):
    """Gradient bytes that appear at each stage of a full fine-tune's backward.

    ``(head, per_layer, embedding, tied)``: lm_head and the final norm first (with tied
    embeddings the shared matrix's gradient is created here), then each layer, then the
    embedding; ``tied`` is the shared matrix's gradient, which the embedding adds to.
    """
    c = count_params(spec).components
    norm = spec.hidden_size * (2 if spec.norm == "layer" else 1) if spec.final_norm else 0
    tied_matrix = spec.vocab_size * spec.embed_dim if spec.tie_word_embeddings else 0
    head = (c.get("lm_head", 0) + norm + tied_matrix) * param_bytes
    embedding = (c.get("embeddings", 0) - tied_matrix) * param_bytes
    layers_total = count_params(spec).total * param_bytes - head - embedding
    return head, layers_total // spec.num_layers, embedding, tied_matrix * param_bytes


@dataclass
class StepInputs:
    """Everything :func:`step_timeline` needs, in bytes (arrays allowed for activations)."""

    weights: int
    optimizer: int
    grads_head: int
    grads_per_layer: int
    grads_embedding: int
    grads_tied: int
    autocast_cache: int
    autocast_cache_head: int
    step_extra: int
    layers: dict          # moe flag -> {tensor: bytes} saved by such a layer
    backward_mlp_extra: dict
    frozen_head: bool = False   # LoRA: the final norm and lm_head do not train


def _total(d: dict):
    out = 0
    for v in d.values():
        out = out + v
    return out


def _max(values):
    out = values[0]
    for v in values[1:]:
        out = np.maximum(out, v)
    return out


def _backward_attention_extra(spec: ModelSpec, sc: Scenario, saved: dict):
    """Extra bytes during one layer's attention backward, relative to "all saved alive".

    The MLP's tensors are already freed; eager attention's softmax backward holds the
    gradients of the probabilities and of the scores, in the softmax's dtype (fp32 for the
    Llama family: ``2 × 4·B·heads·S²``), after the bf16 probabilities are freed.
    """
    mlp_saved = sum(v for k, v in saved.items()
                    if k.startswith(("mlp.", "moe.", "post_attn_norm", "pre_mlp_norm", "post_mlp_norm",
                                     "ln_2", "ln_mlp")))
    extra = -mlp_saved
    if "attn.softmax" in saved:      # the gradients of the probabilities and of the scores
        extra = extra + 2 * saved["attn.softmax"] - saved.get("attn.probs_bf16", 0)
    return extra


def checkpointed_inputs(spec: ModelSpec, sc: Scenario, recompute: str):
    """Model-level tensors that full recompute keeps as checkpoint inputs of every layer,
    beyond the hidden states: the explicit causal mask (if any) and the position ids."""
    return causal_mask_bytes(spec, sc) + 8 * sc.seq_len if recompute == "full" else 0


@lru_cache(maxsize=256)
def _runs(flags: tuple) -> list[tuple[bool, int, int]]:
    """Contiguous runs of identical layers: ``[(moe, first, last + 1), ...]``."""
    runs, first = [], 0
    for i in range(1, len(flags) + 1):
        if i == len(flags) or flags[i] != flags[first]:
            runs.append((flags[first], first, i))
            first = i
    return runs


def step_timeline(spec: ModelSpec, sc: Scenario, x: StepInputs, recompute: str = "none",
                  grad_accum: int = 1):
    """Live bytes at every boundary of one training step.

    Returns ``(marks, saved_at_end)``; each mark is ``(phase, label, gradients,
    autocast_cache, activations, transient)`` in bytes, on top of the resident weights and
    optimizer state.  Inside a run of identical layers the live bytes change by the same
    amount at every layer, so the largest value is at one end of the run: only the ends
    are marked (this keeps an estimate, or a sweep over a million points, fast).
    """
    T, H, V = sc.tokens, spec.hidden_size, spec.vocab_size
    full = {m: _total(d) for m, d in x.layers.items()}
    if recompute == "full":
        kept = {m: sc.residual_bytes * T * H for m in x.layers}           # the layer's input only
    elif recompute == "selective":
        kept = {m: _total({k: v for k, v in d.items() if k not in QUADRATIC}) for m, d in x.layers.items()}
    else:
        kept = full
    attn_extra = {m: _backward_attention_extra(spec, sc, d) for m, d in x.layers.items()}
    model_level = model_saved(spec, sc)
    if x.frozen_head:       # nothing needs the final norm's normalised tensor or its output
        model_level.pop("final_norm.normalised", None)
        model_level.pop("final_norm.output", None)
    pre = model_level.pop("rope.cos_sin")
    mask = causal_mask_bytes(spec, sc)          # alive through the forward ...
    kept_mask = checkpointed_inputs(spec, sc, recompute)   # ... and kept when layers are checkpointed
    log_softmax = model_level.pop("loss.log_softmax_fp32")
    head_saved = _total(model_level)            # final norm, labels (and Gemma's logit soft-cap)
    logits_fp32 = 4 * T * V
    dh = sc.residual_bytes * T * H              # the gradient flowing between layers
    layer_cache = (x.autocast_cache - x.autocast_cache_head) // spec.num_layers
    gl = x.grads_per_layer
    accum = x.grads_head + spec.num_layers * gl + x.grads_embedding if grad_accum > 1 else 0
    new = 0 if grad_accum > 1 else 1            # accumulating: gradients are added in place
    runs = _runs(spec.moe_layers)
    marks = []
    # -- forward: each layer's tensors exist while it runs; it keeps `kept`
    acts, cache = pre + kept_mask, 0
    for m, a, b in runs:
        n = b - a
        marks.append(("forward", f"layer {b - 1}", accum, cache + n * layer_cache,
                      acts + (n - 1) * kept[m], full[m] + mask - kept_mask))
        acts = acts + n * kept[m]
        cache += n * layer_cache
    cache = x.autocast_cache
    acts = acts + head_saved
    marks.append(("forward", "loss", accum, cache, acts, 2 * T * V + logits_fp32 + log_softmax))
    acts = acts + log_softmax
    marks.append(("forward", "end", accum, cache, acts, 0))
    saved_at_end = acts
    # -- backward: the loss's fp32 gradient buffers, then layer by layer from the last
    marks.append(("backward", "loss", accum, cache, acts, 2 * logits_fp32))
    acts = acts - log_softmax - head_saved
    grads = accum + x.grads_head * new
    marks.append(("backward", "lm_head", grads, cache, acts, dh))
    for m, a, b in reversed(runs):
        back = full[m] - kept[m]                    # with recompute, the layer's tensors come back
        mlp_t = dh + back + x.backward_mlp_extra[m]
        attn_t = dh + (max(back + attn_extra[m], 0) if np.ndim(back) == 0 else np.maximum(back + attn_extra[m], 0))
        for i in sorted({b - 1, a}, reverse=True):  # the two ends of the run
            k = b - 1 - i
            g, ac = grads + k * gl * new, acts - k * kept[m]
            marks.append(("backward", f"layer {i} mlp", g, cache, ac, mlp_t))
            marks.append(("backward", f"layer {i} attention", g, cache, ac, attn_t))
        acts = acts - (b - a) * kept[m]
        grads = grads + (b - a) * gl * new
    acts = acts - kept_mask                      # the last checkpoint is done with them
    # the embedding's gradient is computed while its output's gradient is alive; a tied
    # matrix already has a gradient (from lm_head) and the two are summed out of place
    marks.append(("backward", "embedding", grads, cache, acts,
                  dh + x.grads_embedding * new + 2 * x.grads_tied * new))
    grads = grads + x.grads_embedding * new
    # -- step
    marks.append(("step", "optimizer", grads, 0, 0, x.step_extra))
    return marks, saved_at_end


CATEGORIES = ("gradients", "autocast_cache", "activations", "transient")


def summarize(marks, x: StepInputs, title: str, meta: dict) -> Breakdown:
    """The peak of a timeline as a Breakdown: components live at the peak, phases, peak phase."""
    resident = x.weights + x.optimizer
    totals = [(ph, label, resident + g + c + a + t) for ph, label, g, c, a, t in marks]
    meta = dict(meta, timeline=totals)
    if np.ndim(meta["batch_size"]) == 0 and np.ndim(meta["seq_len"]) == 0:
        phases = {ph: max(v for q, _, v in totals if q == ph) for ph in PHASES}
        best = max(range(len(totals)), key=lambda i: totals[i][2])
        peak_phase, label, *values = marks[best]
        comps = {"weights": x.weights, "optimizer": x.optimizer,
                 **{k: int(v) for k, v in zip(CATEGORIES, values) if v}}
        meta.update(peak_phase=peak_phase, peak_at=label)
        return Breakdown(comps, title=title, phases={k: int(v) for k, v in phases.items()},
                         peak_phase=peak_phase, meta=meta)
    # vectorised: the peak and its phase per grid point
    phases = {ph: _max([v for q, _, v in totals if q == ph]) for ph in PHASES}
    shape = np.broadcast(*phases.values()).shape
    stacked = np.stack([np.broadcast_to(phases[ph], shape) for ph in PHASES])
    meta["peak_phase"] = np.array(PHASES)[np.argmax(stacked, axis=0)]
    return Breakdown({"peak": np.max(stacked, axis=0)}, title=title, phases=phases, meta=meta)


def prepare_step(model, batch_size, seq_len, precision: str = "bf16", optimizer: str = "adamw",
                 recompute: str = "none", attention: str = "sdpa", grad_accum: int = 1,
                 device: str = "cuda") -> tuple[ModelSpec, Scenario, StepInputs]:
    """Validate the knobs of a full fine-tuning step and build its :class:`StepInputs`.

    Returns ``(spec, scenario, inputs)`` for :func:`step_timeline`; :func:`train_memory`
    and the training explorer both start here.
    """
    spec = load_spec(model)
    seq_len = check_seq_len(spec, seq_len)
    batch_size = positive_int("batch_size", batch_size)
    positive_int("grad_accum", grad_accum)
    choice("optimizer", optimizer, OPTIMIZERS)
    choice("recompute", recompute, RECOMPUTE)
    sc = Scenario(batch_size, seq_len, precision, attention, device)
    p = 4 if sc.mixed else 2
    head, per_layer, emb, tied = _grads_by_stage(spec, p)
    layers = {m: layer_saved(spec, sc, moe=m) for m in set(spec.moe_layers)}
    inputs = StepInputs(
        weights=total_params(spec) * p,
        optimizer=optimizer_state_bytes(spec, optimizer, state_bytes=p),
        grads_head=head, grads_per_layer=per_layer, grads_embedding=emb, grads_tied=tied,
        autocast_cache=2 * matmul_weight_params(spec) if sc.mixed else 0,
        autocast_cache_head=2 * spec.vocab_size * spec.embed_dim if sc.mixed else 0,
        step_extra=step_temporaries(optimizer, largest_param_tensor(spec), p),
        layers=layers,
        backward_mlp_extra={m: mlp_backward_extra(spec, sc, m) for m in layers})
    return spec, sc, inputs


def train_memory(model, batch_size, seq_len, precision: str = "bf16", optimizer: str = "adamw",
                 recompute: str = "none", attention: str = "sdpa", grad_accum: int = 1,
                 device: str = "cuda") -> Breakdown:
    """Peak memory of one full fine-tuning step and the phase where it happens (chapter 04).

    Components are what is live at the peak: ``weights``, ``optimizer``, ``gradients``,
    ``autocast_cache``, ``activations`` (saved by autograd) and ``transient`` (the loss's
    buffers, gradients of activations, optimizer temporaries).  ``phases`` holds the
    peak of each phase, ``peak_phase`` the one that wins, ``meta["timeline"]`` the
    ``(phase, label, live bytes)`` at every boundary.  ``grad_accum > 1`` keeps gradients
    alive through the forward of the later micro-batches.  ``batch_size`` and ``seq_len``
    may be numpy arrays: the result then has one ``peak`` component (an array) and
    ``meta["peak_phase"]`` is an array of phase names.  ``device="cpu"`` models the
    CPU's dropout masks (activation dtype instead of bool), to compare with the bench.
    """
    spec, sc, inputs = prepare_step(model, batch_size, seq_len, precision, optimizer, recompute,
                                    attention, grad_accum, device)
    batch_size, seq_len = sc.batch_size, sc.seq_len
    marks, saved = step_timeline(spec, sc, inputs, recompute, grad_accum)
    meta = {"precision": precision, "optimizer": optimizer, "recompute": recompute,
            "attention": attention_used(spec, attention), "grad_accum": grad_accum, "device": device,
            "batch_size": batch_size, "seq_len": seq_len, "activations_saved": saved,
            "autocast_cache": inputs.autocast_cache, "optimizer_state": inputs.optimizer}
    title = (f"{spec.name} train step, b={batch_size} s={seq_len} {precision} {optimizer} "
             f"recompute={recompute}")
    return summarize(marks, inputs, title, meta)


def mlp_backward_extra(spec: ModelSpec, sc: Scenario, moe: bool):
    """Extra bytes in an MLP's backward: the gradients of its two inputs (gate and up) together."""
    if moe:
        return 2 * 2 * sc.tokens * spec.experts_per_token * spec.moe_intermediate_size
    return 2 * 2 * sc.tokens * spec.intermediate_size
