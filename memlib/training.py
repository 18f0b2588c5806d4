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
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .activations import RECOMPUTE, Scenario, attention_used, layer_saved, model_saved
from .breakdown import Breakdown
from .kv_cache import check_seq_len
from .optimizers import OPTIMIZERS, optimizer_state_bytes
from .params import count_params, linear_bias_params, linear_layers
from .spec import ModelSpec, load_spec
from .validation import choice, positive_int

PHASES = ("forward", "backward", "step")


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


def matmul_weight_params(spec: ModelSpec) -> int:
    """Parameters autocast casts to bf16 and caches: every Linear's weight and bias, lm_head
    and the MoE routers (DeepSeek's router too: it upcasts to fp32, autocast casts back)."""
    n = sum(i * o * c for _, i, o, c in linear_layers(spec)) + spec.vocab_size * spec.embed_dim
    n += linear_bias_params(spec)
    if spec.is_moe:
        n += sum(spec.moe_layers) * spec.num_experts * spec.hidden_size
    return n


def step_temporaries(spec: ModelSpec, optimizer: str, state_bytes: int) -> int:
    """Peak extra bytes inside ``optimizer.step()`` with ``foreach=False`` (one tensor at a time)."""
    if optimizer in ("adamw", "adamw_8bit"):
        return 2 * largest_param_tensor(spec) * state_bytes      # sqrt(v), then sqrt(v) / c
    if optimizer == "adafactor":
        return largest_param_tensor(spec) * state_bytes
    return 0                                                     # SGD and Lion update in place


@lru_cache(maxsize=256)
def _grads_by_stage(spec: ModelSpec, param_bytes: int):
    """Gradient bytes that appear at each stage of the backward.

    Returns ``(head, per_layer, embedding)``: lm_head and final norm first (with tied
    embeddings the shared matrix's gradient is created here), then one entry per layer,
    then the embedding (whose gradient is added into the tied one, if any).
    """
    c = count_params(spec).components
    norm = spec.hidden_size * (2 if spec.norm == "layer" else 1) if spec.final_norm else 0
    tied_matrix = spec.vocab_size * spec.embed_dim if spec.tie_word_embeddings else 0
    head = (c.get("lm_head", 0) + norm + tied_matrix) * param_bytes
    embedding = (c.get("embeddings", 0) - tied_matrix) * param_bytes
    layers_total = count_params(spec).total * param_bytes - head - embedding
    per_layer = np.full(spec.num_layers, layers_total // spec.num_layers, dtype=np.int64)
    return head, per_layer, embedding, tied_matrix * param_bytes


def _backward_candidates(spec: ModelSpec, sc: Scenario, saved: dict):
    """Extra bytes at the two busiest moments of one layer's backward, given its saved tensors.

    * MLP: the gradients of the MLP's two inputs (gate and up) exist together;
    * attention: the MLP's tensors are already freed; eager attention's softmax backward
      holds the fp32 gradient of the probabilities and of the scores (``2 × 4·B·heads·S²``)
      after the bf16 probabilities are freed.
    Returns ``(mlp_extra, attention_extra)``, both relative to "everything saved is alive".
    """
    T = sc.tokens
    mlp_keys = [k for k in saved if k.startswith(("mlp.", "moe.", "post_attn_norm", "pre_mlp_norm",
                                                  "post_mlp_norm", "ln_2", "ln_mlp"))]
    mlp_saved = sum(saved[k] for k in mlp_keys)
    if any(k.startswith("moe.") for k in saved):
        mlp_extra = 2 * 2 * T * spec.experts_per_token * spec.moe_intermediate_size
    else:
        mlp_extra = 2 * 2 * T * spec.intermediate_size
    attn_extra = -mlp_saved
    if "attn.softmax" in saved:
        n = sc.batch_size * spec.num_heads * sc.seq_len * sc.seq_len
        attn_extra = attn_extra + 8 * n - saved.get("attn.probs_bf16", 0)
    return mlp_extra, attn_extra


def _total(d: dict):
    out = 0
    for v in d.values():
        out = out + v
    return out


def train_memory(model, batch_size, seq_len, precision: str = "bf16", optimizer: str = "adamw",
                 recompute: str = "none", attention: str = "sdpa", grad_accum: int = 1,
                 device: str = "cuda") -> Breakdown:
    """Peak memory of one training step and the phase where it happens (chapter 04).

    Components are what is live at the peak: ``weights``, ``optimizer``, ``gradients``,
    ``autocast_cache``, ``activations`` (saved by autograd) and ``transient`` (loss
    buffers, gradients of activations, optimizer temporaries).  ``phases`` holds the
    peak of each phase; ``peak_phase`` the one that wins; ``meta["timeline"]`` lists
    ``(phase, label, live bytes)`` at every boundary.  ``grad_accum > 1`` keeps gradients
    alive through the forward of the later micro-batches.  ``batch_size`` and ``seq_len``
    may be numpy arrays (then ``peak_phase`` is an array of phase names in ``meta``).
    ``device="cpu"`` models the CPU's dropout masks (activation dtype instead of bool),
    to compare with the bench.
    """
    spec = load_spec(model)
    seq_len = check_seq_len(spec, seq_len)
    batch_size = positive_int("batch_size", batch_size)
    grad_accum = positive_int("grad_accum", grad_accum)
    choice("optimizer", optimizer, OPTIMIZERS)
    choice("recompute", recompute, RECOMPUTE)
    sc = Scenario(batch_size, seq_len, precision, attention, device)
    p = 4 if precision == "mixed" else 2
    T, H, V, L = sc.tokens, spec.hidden_size, spec.vocab_size, spec.num_layers

    weights = count_params(spec).total * p
    opt = optimizer_state_bytes(spec, optimizer, state_bytes=p)
    cache = 2 * matmul_weight_params(spec) if precision == "mixed" else 0
    head_cache = 2 * V * spec.embed_dim if precision == "mixed" else 0
    g_head, g_layer, g_emb, g_tied = _grads_by_stage(spec, p)
    grads = weights
    accum = grads if grad_accum > 1 else 0          # gradients already there from earlier micro-batches

    # what each layer keeps, and what exists while it runs
    kinds = {m: layer_saved(spec, sc, moe=m) for m in set(spec.moe_layers)}
    full = {m: _total(d) for m, d in kinds.items()}
    extra = {m: _backward_candidates(spec, sc, d) for m, d in kinds.items()}
    if recompute == "full":
        kept = {m: sc.residual_bytes * T * H for m in kinds}           # the layer's input only
    elif recompute == "selective":
        kept = {m: _total({k: v for k, v in d.items() if k not in ("attn.softmax_fp32", "attn.probs")})
                for m, d in kinds.items()}
    else:
        kept = full
    model_level = model_saved(spec, sc)
    pre = model_level.pop("rope.cos_sin")
    log_softmax = model_level.pop("loss.log_softmax_fp32")
    head_saved = _total(model_level)            # final norm + shifted labels
    logits_fp32 = 4 * T * V
    dh = sc.residual_bytes * T * H              # the gradient flowing between layers
    resident = weights + opt
    layer_cache = (cache - head_cache) / L if cache else 0

    timeline = []

    def mark(phase, label, live):
        timeline.append((phase, label, live))

    # -- forward ---------------------------------------------------------------------
    live = resident + accum + pre
    for i, m in enumerate(spec.moe_layers):
        mark("forward", f"layer {i}", live + full[m] + layer_cache)       # the layer's own tensors exist
        live = live + kept[m] + layer_cache
    live = live + head_saved + head_cache
    mark("forward", "loss", live + 2 * T * V + logits_fp32 + log_softmax)  # bf16 logits, fp32 copy, log-softmax
    live = live + log_softmax
    mark("forward", "end", live)
    saved_at_end = live - resident - accum - cache

    # -- backward --------------------------------------------------------------------
    new_grads = 0 if grad_accum > 1 else 1       # accumulating: gradients are added in place
    mark("backward", "loss", live + 2 * logits_fp32)                      # d log-softmax, d logits (fp32)
    live = live - log_softmax - head_saved + dh + g_head * new_grads
    mark("backward", "lm_head", live)
    for i in reversed(range(L)):
        m = spec.moe_layers[i]
        during = live + (full[m] - kept[m])          # with recompute, the layer's tensors come back
        mark("backward", f"layer {i} mlp", during + extra[m][0])
        mark("backward", f"layer {i} attention", during + _max([extra[m][1], 0 * during]))
        live = live - kept[m] + g_layer[i] * new_grads
    # the embedding's gradient is computed while the gradient of its output is alive; a tied
    # matrix already has one (from lm_head), and the two are summed out of place
    mark("backward", "embedding", live + g_emb * new_grads + 2 * g_tied)
    live = live - dh + g_emb * new_grads
    # -- step ------------------------------------------------------------------------
    mark("step", "optimizer", resident + grads + step_temporaries(spec, optimizer, p))

    phases = {ph: _max([v for q, _, v in timeline if q == ph]) for ph in PHASES}
    stacked = np.stack([np.broadcast_to(phases[ph], np.shape(T)) for ph in PHASES])
    winner = np.argmax(stacked, axis=0)
    peak = np.max(stacked, axis=0)
    scalar = np.ndim(peak) == 0
    peak_phase = PHASES[int(winner)] if scalar else np.array(PHASES)[winner]
    if scalar:
        peak, phases = int(peak), {k: int(v) for k, v in phases.items()}
    # what is live at the peak, by category
    at = {"weights": weights, "optimizer": opt}
    if scalar:
        if peak_phase == "step":
            at.update(gradients=grads, transient=peak - resident - grads)
        elif peak_phase == "forward":
            at.update(gradients=accum, autocast_cache=cache, activations=saved_at_end,
                      transient=peak - resident - accum - cache - saved_at_end)
        else:
            at.update(gradients_and_activations=peak - resident - cache, autocast_cache=cache)
    else:
        at["gradients_activations_transients"] = peak - resident
    meta = {"precision": precision, "optimizer": optimizer, "recompute": recompute,
            "attention": attention_used(spec, attention), "grad_accum": grad_accum,
            "batch_size": batch_size, "seq_len": seq_len, "timeline": timeline,
            "activations_saved": saved_at_end, "autocast_cache": cache, "gradients": grads,
            "optimizer_state": opt, "peak_phase": peak_phase}
    title = (f"{spec.name} train step, b={batch_size} s={seq_len} {precision} {optimizer} "
             f"recompute={recompute}")
    return Breakdown({k: v for k, v in at.items() if not (np.isscalar(v) and v == 0)} if scalar else at,
                     title=title, phases=phases, peak_phase=peak_phase if scalar else None, meta=meta)


def _max(values):
    out = values[0]
    for v in values[1:]:
        out = np.maximum(out, v)
    return out
