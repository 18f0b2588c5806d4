"""Training memory: gradients, optimizer state, precision recipes and the step timeline (chapter 04).

A training step goes through three phases, and memory peaks in one of them:

* **forward**: weights + optimizer state (+ gradients, when accumulating) + the
  activations each layer saves (:mod:`memlib.activations`), growing layer by layer; at
  the loss, the bf16 logits, their fp32 copy and the fp32 log-softmax are alive at once;
* **backward**: it starts with every saved activation plus the loss's three fp32
  ``T × V`` buffers (log-softmax, its gradient, the logits' gradient); then, from the
  last layer down, each layer's activations are freed as its gradients appear;
* **step**: weights + gradients + optimizer state + the optimizer's temporaries, which
  depend on the implementation (:func:`step_temporaries`): AdamW's loop holds about two
  tensors of the largest parameter's size, ``foreach`` (PyTorch's default on CUDA) a whole
  second moment, ``fused`` (the HF Trainer's default) nothing.

:func:`train_memory` evaluates the live bytes at every boundary of that timeline (a list
of :class:`Mark` records) and reports the peak, the phase it falls in, and what is live
then.  Precision recipes:

* ``bf16`` (the default: every tensor bf16, what a script that loads the checkpoint in
  bf16 and builds ``torch.optim.AdamW`` trains with; the smallest footprint, so a lower
  bound, though a lossy recipe: updates smaller than bf16's resolution are lost):
  ``2 + 2 + 2·2 = 8`` bytes/param with AdamW;
* ``mixed`` (PyTorch AMP): fp32 params, gradients and AdamW state: ``4 + 4 + 8 = 16``
  bytes/param, plus autocast's cache of bf16 copies of every matmul weight, ``2``
  bytes/param, filled during the forward (autocast wraps the forward only); leaving
  autocast keeps the copies autograd saved, and each layer's backward frees its own.
  :func:`state_bytes` also gives the DeepSpeed, Megatron-LM and FSDP2 splits
  (:data:`RECIPES`).

The timeline (:func:`step_timeline`) takes a :class:`Stage`, a range of layers with or
without the embedding and the head, so a pipeline stage is expressed with it (chapter 05);
it is shared with LoRA (:mod:`memlib.lora`), which changes what is trainable but not how
a step unfolds.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from .activations import (causal_mask_bytes, eager_masks, is_quadratic, layer_tensors, model_tensors,
                          total_bytes, without_frozen)
from .breakdown import Breakdown
from .optimizers import optimizer_state_bytes
from .params import (attention_params, count_params, layer_params, mlp_params, named_linears, norm_params, param_sizes,
                     total_params)
from .scenario import DEFAULT_OPTIMIZER_IMPL, OPTIMIZER_IMPLS, PHASES, Scenario, attention_used, check_seq_len
from .spec import ModelSpec, load_spec
from .symbolic import evaluate, larger
from .validation import as_int, choice, exact_sweeps, positive_int

#: The components of a training step, bottom to top, and their kinds.
COMPONENTS = ("weights", "optimizer", "gradients", "autocast_cache", "activations", "transient")
KINDS = {"weights": "model_state", "optimizer": "model_state", "gradients": "model_state",
         "master_weights": "model_state",
         "autocast_cache": "transient", "activations": "activation", "transient": "transient"}


def largest_param_tensor(spec: ModelSpec) -> int:
    """Elements of the largest parameter tensor as transformers lays it out (chapter 04).

    The token embedding (``V × H``), or for MoE models the fused expert tensor
    (``E × 2·I × H``: transformers keeps every expert's gate and up projections in one
    parameter).  AdamW's per-tensor temporaries have this size.
    """
    biggest = spec.vocab_size * spec.embed_dim
    if spec.is_moe:
        biggest = max(biggest, spec.num_experts * 2 * spec.moe_intermediate_size * spec.hidden_size)
    return biggest


@lru_cache(maxsize=256)
def _cache_parts(spec: ModelSpec):
    """The bf16 copies autocast makes of one layer's weights, by half and layer kind, and
    of lm_head, in bytes: ``({moe: attention}, {moe: mlp}, head)`` (chapter 04).

    Every Linear's weight and bias is cast and cached when first used in the forward: the
    attention projections; the MLP's, or in an MoE layer the router (DeepSeek's too: it
    upcasts to fp32, autocast casts back) and the shared experts.  The routed experts are
    not: transformers runs them with ``grouped_mm``, which has no autocast rule, on the
    fp32 master weights (their input is cast to fp32 instead).  Where a family's linears
    compute ``x @ W.T`` (Falcon), autocast does not cache a cast of the view ``W.T`` (the
    copies are saved per layer instead, see :mod:`memlib.activations`): only lm_head is.
    """
    head = 2 * spec.vocab_size * spec.embed_dim
    kinds = set(spec.moe_layers)
    if not spec.autocast_caches_weights:
        return {m: 0 for m in kinds}, {m: 0 for m in kinds}, head
    per = {comp: 0 for comp in ("attention", "mlp", "shared_experts")}
    for comp, _, i, o, _n in named_linears(spec):
        if comp in per:
            per[comp] += i * o                       # one of each matrix per layer (of its kind)
    bias = {"attention": 0, "mlp": 0}
    if not spec.is_mla:
        q, kv = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
        bias["attention"] = (q + 2 * kv if spec.qkv_bias else 0) + (spec.hidden_size if spec.o_bias else 0)
        if spec.mlp_bias:
            bias["mlp"] = (2 if spec.gated_mlp else 1) * spec.intermediate_size + spec.hidden_size
    attn = {m: 2 * (per["attention"] + bias["attention"]) for m in kinds}
    mlp = {m: 2 * (spec.num_experts * spec.hidden_size + per["shared_experts"]) if m
           else 2 * (per["mlp"] + bias["mlp"]) for m in kinds}
    return attn, mlp, head


def matmul_weight_params(spec: ModelSpec) -> int:
    """Parameters autocast casts to bf16 and caches in a forward (chapter 04): every Linear's
    weight and bias, lm_head and the MoE routers; not the routed experts, which transformers
    runs in fp32 (:func:`_cache_parts` says why)."""
    attn, mlp, head = _cache_parts(spec)
    return (head + sum(attn[m] + mlp[m] for m in spec.moe_layers)) // 2


def step_temporaries(optimizer: str, optimizer_impl: str, sizes, state_bytes: int) -> int:
    """Peak extra bytes inside ``optimizer.step()`` (chapter 04), from the trainable tensors'
    element counts ``sizes`` in the order the model registers them.

    AdamW builds ``denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)``:

    * ``"loop"`` (``foreach=False``): one tensor at a time; at tensor ``i`` its ``sqrt``
      and division are alive with the previous tensor's ``denom``:
      ``max_i (n[i-1] + 2·n[i]) × state_bytes`` (two embedding-sized tensors for most
      models; three MLP matrices where those are the largest neighbours);
    * ``"foreach"`` (PyTorch's default on CUDA): ``_foreach_sqrt`` over every tensor at
      once, one whole second moment: ``Σ n × state_bytes``;
    * ``"fused"`` (``fused=True``, the HF Trainer's default with torch >= 2.8): one kernel
      updates in place: none.

    SGD (with or without momentum) and Lion update in place in every implementation.
    Adafactor and 8-bit AdamW have one implementation each: one (Adafactor) or two (8-bit
    AdamW, bitsandbytes' dequantised moments) temporaries of the largest tensor.
    """
    choice("optimizer_impl", optimizer_impl, OPTIMIZER_IMPLS)
    sizes = list(sizes)
    if optimizer == "adamw":
        if optimizer_impl == "fused":
            return 0
        if optimizer_impl == "foreach":
            return sum(sizes) * state_bytes
        return max(prev + 2 * cur for prev, cur in zip([0] + sizes[:-1], sizes)) * state_bytes
    if optimizer == "adamw_8bit":
        return 2 * max(sizes) * state_bytes
    if optimizer == "adafactor":
        return max(sizes) * state_bytes
    return 0                                         # SGD and Lion update in place


@dataclass(frozen=True)
class Stage:
    """Which part of the model a timeline covers: layers ``[first, last)`` and whether the
    stage holds the embedding (first pipeline stage) and the head with the loss (last).
    The whole model is ``Stage(0, num_layers, True, True)`` (chapter 05)."""

    first: int
    last: int
    has_embedding: bool = True
    has_head: bool = True

    @classmethod
    def whole(cls, spec: ModelSpec) -> "Stage":
        return _whole_stage(cls, spec)

    def check(self, spec: ModelSpec) -> "Stage":
        if not 0 <= self.first < self.last <= spec.num_layers:
            raise ValueError(f"stage: layers [{self.first}, {self.last}) are not a range of "
                             f"{spec.name}'s {spec.num_layers} layers")
        return self


@lru_cache(maxsize=256)
def _whole_stage(cls, spec: ModelSpec) -> Stage:
    """``Stage(0, num_layers, True, True)``, made once per spec (a Stage is immutable)."""
    return cls(0, spec.num_layers, True, True)


class Mark(NamedTuple):
    """The live bytes at one moment of a training step (chapter 04).

    ``phase`` (forward, backward, step) and ``label`` name the moment; ``layer`` and
    ``part`` (``"mlp"``/``"attention"``) locate it inside a layer where it is one.
    (A named tuple: a sweep builds many of them.)
    """

    phase: str
    label: str
    weights: object
    optimizer: object
    gradients: object
    autocast_cache: object
    activations: object
    transient: object
    layer: int | None = None
    part: str | None = None

    @property
    def components(self) -> dict:
        return {k: getattr(self, k) for k in COMPONENTS}

    @property
    def total(self):
        return _mark_total(self)


def _mark_total(mk: Mark):
    """``weights + optimizer + gradients + autocast_cache + activations + transient`` of a :class:`Mark`."""
    return mk[2] + mk[3] + mk[4] + mk[5] + mk[6] + mk[7]


_new_mark = tuple.__new__          # builds a Mark without its __new__'s argument handling


@dataclass
class StepInputs:
    """Everything :func:`step_timeline` needs, in bytes (arrays allowed for activations).

    ``grads_per_layer`` maps a layer kind (MoE or not) to the gradient bytes one such
    layer adds, ``grads_before_mlp`` and ``grads_before_attention`` to those of them that
    already exist at the peak of its MLP's and its attention's backward
    (:func:`params_before_mlp`, :func:`params_before_attention`); ``layers`` maps it to the :class:`~memlib.activations.Saved` records one
    such layer keeps.  ``cache_attn``/``cache_mlp`` map a layer kind to the bf16 weight
    copies autocast makes in its attention and its MLP, ``cache_head`` those of lm_head
    (chapter 04 §mixed precision): the cache grows through the forward; leaving autocast
    keeps only the copies autograd saved, which each layer's backward then frees.
    ``model_level`` (the records outside the layers: RoPE tables, final norm, loss) and
    ``flowing`` (the bytes of the gradient passed from layer to layer) default to the
    single-device values; a parallel plan replaces them for one rank (chapter 05).
    ``mlp_grad_moment`` maps a layer kind to the MLP backward's moment where a weight
    gradient has just been made (:func:`mlp_gradient_moment`; the routed experts' down
    projection): that gradient is new memory unless gradients accumulate.
    """

    weights: int
    optimizer: int
    grads_head: int
    grads_per_layer: dict
    grads_before_mlp: dict
    grads_before_attention: dict
    grads_embedding: int
    grads_tied: int
    autocast_cache: int           # the stage's whole cache at the end of the forward
    cache_attn: dict
    cache_mlp: dict
    cache_head: int
    step_extra: int
    layers: dict
    backward_mlp_extra: dict
    frozen_head: bool = False   # LoRA: the final norm and lm_head do not train
    mlp_grad_moment: dict | None = None   # {moe: (activation bytes, new weight gradient bytes)}, mlp_gradient_moment
    stage: Stage | None = None
    mlp_weight_grad: dict | None = None   # {moe: bytes of the largest MLP weight's gradient} (default: grads_before_mlp)
    model_level: dict | None = None   # Saved records outside the layers (default: model_tensors)
    flowing: object = None            # the gradient flowing between layers (default: residual·T·H)


def _max(values):
    out = values[0]
    for v in values[1:]:
        out = np.maximum(out, v)
    return out


def _backward_attention_extra(tensors: dict):
    """Extra bytes during one layer's attention backward, relative to "all saved alive".

    The MLP half's tensors are already freed; eager attention's softmax backward holds the
    gradients of the probabilities and of the scores, in the softmax's dtype (fp32 for the
    Llama family: ``2 × 4·B·heads·S²``), after the bf16 probabilities are freed.
    """
    # the MLP half's tensors, and the merged heads kept only for o_proj's weight gradient
    # (freed by o_proj's backward)
    freed = [t for t in tensors.values() if t.half == "mlp" or (t.half == "attn" and t.needed_by == ("o",))]
    extra = -total_bytes(freed)
    if "attn.softmax" in tensors:      # the gradients of the probabilities and of the scores
        probs = tensors["attn.probs_bf16"].nbytes if "attn.probs_bf16" in tensors else 0
        extra = extra + 2 * tensors["attn.softmax"].nbytes - probs
    return extra


def checkpointed_inputs(spec: ModelSpec, sc: Scenario, recompute: str):
    """Model-level tensors that full recompute keeps as checkpoint inputs of every layer,
    beyond the hidden states: the explicit causal mask (if any) and the position ids (chapter 03)."""
    return causal_mask_bytes(spec, sc) + 8 * sc.seq_len if recompute == "full" else 0


def final_output_at_loss(spec: ModelSpec, sc: Scenario):
    """Bytes of the final norm's output alive beside its saved copies while the model computes
    its loss (chapter 04): under autocast lm_head reads a bf16 cast of the fp32 output, which
    the model's output object holds until the loss (computed inside the forward, from
    ``labels``) is done: ``4·T·H``; 0 in bf16, where lm_head saves the output itself."""
    return sc.residual_bytes * sc.tokens * spec.hidden_size if sc.mixed and spec.final_norm else 0


def checkpoint_beside_recomputed(spec: ModelSpec, sc: Scenario, recompute: str):
    """Bytes of a checkpointed layer's input that stay alive beside its recomputed saved
    tensors during its backward (chapter 03): with full recompute the checkpoint holds
    the input until the layer's backward ends.  When a saved tensor is the input itself
    (a LayerNorm saves its input; under mixed precision an RMSNorm's ``x.float()`` of the
    fp32 residual is ``x``) it is already counted; an RMSNorm over a bf16 residual saves
    an fp32 copy instead, and the bf16 input is extra: ``2·T·H``."""
    if recompute != "full" or sc.mixed or spec.norm == "layer":
        return 0
    return sc.residual_bytes * sc.tokens * spec.hidden_size


def kept_per_layer(sc: Scenario, spec: ModelSpec, tensors: dict, recompute: str):
    """Bytes one layer keeps until its backward under ``recompute`` (chapter 03): everything
    (``none``), everything but the ``S × S`` tensors (``selective``), or its input (``full``)."""
    if recompute == "full":
        return sc.residual_bytes * sc.tokens * spec.hidden_size
    if recompute == "selective":
        return total_bytes([t for t in tensors.values() if not is_quadratic(t)])
    return total_bytes(tensors)


@lru_cache(maxsize=256)
def _runs(flags: tuple, first: int = 0) -> list[tuple[bool, int, int]]:
    """Contiguous runs of identical layers: ``[(moe, first, last + 1), ...]`` (layer numbers
    start at ``first``)."""
    runs, start = [], 0
    for i in range(1, len(flags) + 1):
        if i == len(flags) or flags[i] != flags[start]:
            runs.append((flags[start], first + start, first + i))
            start = i
    return runs


def step_timeline(spec: ModelSpec, sc: Scenario, x: StepInputs, recompute: str = "none",
                  grad_accum: int = 1):
    """Live bytes at every boundary of one training step (chapter 04).

    Returns ``(marks, saved_at_end)``: a list of :class:`Mark` records and the activation
    bytes alive at the end of the forward.  Inside a run of identical layers the live
    bytes change by the same amount at every layer, so the largest value is at one end of
    the run: only the ends are marked (this keeps an estimate, or a sweep over a million
    points, fast).  ``x.stage`` limits the timeline to a range of layers: without the head,
    the backward starts from the gradient the next stage sends; without the embedding it
    ends at the first layer.
    """
    st = (x.stage or Stage.whole(spec)).check(spec)
    T, H, V = sc.tokens, spec.hidden_size, spec.vocab_size
    full = {m: total_bytes(d) for m, d in x.layers.items()}
    kept = full if recompute == "none" else {m: kept_per_layer(sc, spec, d, recompute) for m, d in x.layers.items()}
    attn_extra = {m: _backward_attention_extra(d) for m, d in x.layers.items()}
    model_level = dict(x.model_level) if x.model_level is not None else model_tensors(spec, sc)
    if x.frozen_head:       # nothing needs the final norm's normalised tensor or its output
        model_level = without_frozen(model_level, trained=set())
    pre = model_level.pop("rope.cos_sin").nbytes
    mask = causal_mask_bytes(spec, sc)          # alive through the forward ...
    kept_mask = checkpointed_inputs(spec, sc, recompute)   # ... and kept when layers are checkpointed
    log_softmax = model_level.pop("loss.log_softmax_fp32").nbytes
    head_saved = total_bytes(model_level) if st.has_head else 0   # final norm, labels (Gemma: soft-cap)
    if not st.has_head:
        log_softmax = 0
    logits_fp32 = 4 * T * V
    dh = sc.residual_bytes * T * H if x.flowing is None else x.flowing   # the gradient flowing between layers
    flags = spec.moe_layers[st.first:st.last]
    runs = _runs(tuple(flags), st.first)
    gl = x.grads_per_layer
    n_moe = sum(flags)
    layer_grads = (len(flags) - n_moe) * gl.get(False, 0) + n_moe * gl.get(True, 0)
    head_grads = x.grads_head if st.has_head else 0
    emb_grads = x.grads_embedding if st.has_embedding else 0
    accum = head_grads + layer_grads + emb_grads if grad_accum > 1 else 0
    new = 0 if grad_accum > 1 else 1            # accumulating: gradients are added in place ...
    again = 1 - new                             # ... after being computed: a transient of one weight's gradient
    weight_grad = x.mlp_weight_grad if x.mlp_weight_grad is not None else x.grads_before_mlp
    w, o = x.weights, x.optimizer
    marks = []

    def mark(phase, label, g, c, a, t, layer=None, part=None):
        marks.append(_new_mark(Mark, (phase, label, w, o, g, c, a, t, layer, part)))

    # -- forward: each layer's tensors exist while it runs; it keeps `kept`; autocast caches
    # a bf16 copy of each weight it casts, until the forward leaves the autocast region
    cl = {m: x.cache_attn[m] + x.cache_mlp[m] for m in x.layers}
    acts, cache = pre + kept_mask, 0
    for m, a, b in runs:
        n = b - a
        mark("forward", f"layer {b - 1}", accum, cache + n * cl[m], acts + (n - 1) * kept[m],
             full[m] + mask - kept_mask, layer=b - 1)
        acts = acts + n * kept[m]
        cache += n * cl[m]
    cache = x.autocast_cache
    if st.has_head:
        acts = acts + head_saved
        mark("forward", "loss", accum, cache, acts,
             2 * T * V + logits_fp32 + log_softmax + final_output_at_loss(spec, sc))
        acts = acts + log_softmax
    mark("forward", "end", accum, cache, acts, 0)
    saved_at_end = acts
    # -- leaving autocast frees the copies autograd did not save: with full recompute the
    # layers saved none (they cast again when recomputed); lm_head's copy is always saved
    head_cache = x.cache_head if st.has_head else 0
    layers_cache = cache - head_cache
    recompute_casts = recompute == "full"
    if recompute_casts:
        layers_cache = 0
    # -- backward: the loss's fp32 gradient buffers, then layer by layer from the last
    if st.has_head:
        mark("backward", "loss", accum, head_cache + layers_cache, acts, 2 * logits_fp32)
        acts = acts - log_softmax - head_saved
        grads = accum + head_grads * new
        # lm_head's weight gradient and the layers' incoming gradient are computed from the logits'
        # gradient, cast back to bf16 (accumulating, the new weight gradient is a transient too)
        mark("backward", "lm_head", grads, head_cache + layers_cache, acts, dh + 2 * T * V + head_grads * again)
    else:
        grads = accum
        mark("backward", "incoming gradient", grads, layers_cache, acts, dh)
    beside = checkpoint_beside_recomputed(spec, sc, recompute)
    # with two kinds of mask (full and sliding layers alternating), the checkpoints of the
    # other kind are all done by the first layer's backward: its mask is freed
    other_kind_mask = (mask // 2) * (recompute == "full" and eager_masks(spec) == 2)
    for m, a, b in reversed(runs):
        back = full[m] - kept[m] + beside           # with recompute, the layer's tensors come back
        extra = x.backward_mlp_extra[m]
        if x.mlp_grad_moment and m in x.mlp_grad_moment:   # a weight gradient made inside the MLP's
            act, grad = x.mlp_grad_moment[m]                 # backward: new unless accumulating
            extra = larger(extra, act + grad * new)
        mlp_t = dh + back + extra
        attn_t = dh + larger(back + attn_extra[m], 0)
        for i in sorted({b - 1, a}, reverse=True):  # the two ends of the run
            k = b - 1 - i
            g, ac = grads + k * gl[m] * new, acts - k * kept[m]
            if i == 0:
                ac = ac - other_kind_mask
            # the copies of the layers done so far are freed; this one's MLP copies go
            # with the MLP's backward (recomputed layers cast their own again)
            c = cl[m] if recompute_casts else layers_cache - k * cl[m]
            mark("backward", f"layer {i} mlp", g + x.grads_before_mlp[m] * new, c, ac,
                 mlp_t + weight_grad[m] * again, layer=i, part="mlp")
            mark("backward", f"layer {i} attention", g + x.grads_before_attention[m] * new,
                 c - x.cache_mlp[m], ac, attn_t, layer=i, part="attention")
        acts = acts - (b - a) * kept[m]
        grads = grads + (b - a) * gl[m] * new
        if not recompute_casts:
            layers_cache = layers_cache - (b - a) * cl[m]
    acts = acts - kept_mask                      # the last checkpoint is done with them
    if st.has_embedding:
        # the embedding's gradient is computed while its output's gradient is alive; a tied
        # matrix already has a gradient (from lm_head) and the two are summed out of place
        tied = x.grads_tied if st.has_head else 0
        mark("backward", "embedding", grads, 0, acts, dh + emb_grads * new + 2 * tied * new
             + (emb_grads + tied) * again)
        grads = grads + emb_grads * new
    # -- step
    mark("step", "optimizer", grads, 0, 0, x.step_extra)
    return marks, saved_at_end


def summarize(marks, title: str, meta: dict) -> Breakdown:
    """The peak of a timeline as a Breakdown (chapter 04): components live at the peak, the
    peak of each phase with what is live then, the peak phase and the moment (``peak_at``).

    ``meta["marks"]`` keeps the :class:`Mark` records; ``meta["timeline"]`` the
    ``(phase, label, live bytes)`` of each.
    """
    totals = [(mk[0], mk[1], _mark_total(mk)) for mk in marks]
    meta = dict(meta, timeline=totals, marks=marks)
    if not isinstance(meta["batch_size"], np.ndarray) and not isinstance(meta["seq_len"], np.ndarray):
        best_of: dict = {}                      # phase -> index of its largest mark (the first on ties)
        for i, (ph, _, v) in enumerate(totals):
            j = best_of.get(ph)
            if j is None or v > totals[j][2]:
                best_of[ph] = i
        best = max(best_of.values(), key=lambda i: (totals[i][2], -i))
        peak = marks[best]

        def comps(mk):
            return {k: as_int(v) for k, v in zip(COMPONENTS, mk[2:8]) if v or k in ("weights", "optimizer")}
        phase_components = {ph: comps(marks[best_of[ph]]) for ph in PHASES if ph in best_of}
        components = phase_components[peak.phase]          # the peak is its phase's largest mark
        return Breakdown(components, title=title, kinds={k: KINDS[k] for k in components},
                         phases={ph: as_int(totals[best_of[ph]][2]) for ph in PHASES if ph in best_of},
                         phase_components=phase_components,
                         peak_phase=peak.phase, peak_at=peak.label, meta=meta)
    # vectorised: the peak and its phase per grid point
    phases = {ph: _max([v for q, _, v in totals if q == ph]) for ph in PHASES}
    shape = np.broadcast(*phases.values()).shape
    stacked = np.stack([np.broadcast_to(phases[ph], shape) for ph in PHASES])
    meta["peak_phase"] = np.array(PHASES)[np.argmax(stacked, axis=0)]
    return Breakdown({"peak": np.max(stacked, axis=0)}, title=title, kinds="transient", phases=phases,
                     meta=meta)


@lru_cache(maxsize=256)
def _grads_by_part(spec: ModelSpec, param_bytes: int):
    """Gradient bytes that appear at each part of a full fine-tune's backward.

    ``(head, per_layer, embedding, tied)``: lm_head and the final norm first (with tied
    embeddings the shared matrix's gradient is created here), then each layer
    (``{moe: bytes}``), then the embedding; ``tied`` is the shared matrix's gradient,
    which the embedding adds to.
    """
    c = count_params(spec).components
    norm = spec.hidden_size * (2 if spec.norm == "layer" else 1) if spec.final_norm else 0
    tied_matrix = spec.vocab_size * spec.embed_dim if spec.tie_word_embeddings else 0
    head = (c.get("lm_head", 0) + norm + tied_matrix) * param_bytes
    embedding = (c.get("embeddings", 0) - tied_matrix) * param_bytes
    per_layer = {m: layer_params(spec, m) * param_bytes for m in set(spec.moe_layers)}
    return head, per_layer, embedding, tied_matrix * param_bytes


def params_before_mlp(spec: ModelSpec, moe: bool) -> int:
    """Parameters of one layer whose gradients already exist at the peak of its MLP's
    backward, when the gradients of the MLP's inner activations are alive (chapter 04).

    A dense MLP has by then its down projection's gradient (computed first) and those of
    any norm after it (Gemma 2's post-feed-forward norm, a post-norm layer's second norm).
    An MoE layer has its shared experts' (they run after the routed experts); the bench
    finds none of the routed experts' there.
    """
    H = spec.hidden_size
    if moe:
        return mlp_params(spec, spec.shared_intermediate_size) if spec.shared_intermediate_size else 0
    down = spec.intermediate_size * H + (H if spec.mlp_bias else 0)
    norms_after = (spec.norms_per_layer == 4) + (not spec.pre_norm and not spec.parallel_attn)
    return down + norms_after * norm_params(spec, H)


def largest_mlp_weight(spec: ModelSpec, moe: bool) -> int:
    """Elements of the largest weight tensor of a layer's MLP half (chapter 04): one MLP
    matrix (``gate_up`` where fused), or in an MoE layer transformers' fused experts
    tensor ``E × 2I × H``.  With gradient accumulation its new gradient is computed before
    it is added in place: the largest such transient of the MLP's backward."""
    if moe:
        sizes = [spec.num_experts * (2 if spec.gated_mlp else 1) * spec.moe_intermediate_size * spec.hidden_size]
        sizes += [i * o for comp, _, i, o, _ in named_linears(spec) if comp == "shared_experts"]
    else:
        sizes = [i * o for comp, _, i, o, _ in named_linears(spec) if comp == "mlp"]
    return max(sizes, default=0)


def params_before_attention(spec: ModelSpec, moe: bool) -> int:
    """Parameters of one layer whose gradients already exist when its backward reaches
    the attention core (chapter 04).

    Backward runs the layer's forward in reverse, so by then the whole MLP half has its
    gradients (norms, router, experts, shared experts) and so has the attention's output
    projection: ``layer − attention + o_proj − norms still ahead``.  The norms still ahead
    are the input norm of a pre-norm layer (all norms of a parallel block, which feed both
    branches; none in a post-norm layer).  A parallel block's MLP, created after its
    attention, is also differentiated first.
    """
    H = spec.hidden_size
    o_proj = spec.num_heads * (spec.v_head_dim if spec.is_mla else spec.head_dim) * H + (H if spec.o_bias else 0)
    norms_ahead = spec.norms_per_layer if spec.parallel_attn else int(spec.pre_norm)
    return (layer_params(spec, moe) - attention_params(spec) + o_proj
            - norms_ahead * norm_params(spec, H))


@lru_cache(maxsize=256)
def _grads_before(spec: ModelSpec, param_bytes: int, params_before) -> dict:
    """``{moe: bytes}`` of one layer's gradients that exist at a moment of its backward."""
    return {m: params_before(spec, m) * param_bytes for m in set(spec.moe_layers)}


def _stage_params(spec: ModelSpec, st: Stage) -> int:
    """Parameters a stage holds: its layers, plus the embedding and/or head and final norm."""
    c = count_params(spec).components
    norm = spec.hidden_size * (2 if spec.norm == "layer" else 1) if spec.final_norm else 0
    n = sum(layer_params(spec, m) for m in spec.moe_layers[st.first:st.last])
    if st.has_embedding:
        n += c.get("embeddings", 0)
    if st.has_head:
        n += c.get("lm_head", 0) + norm
        if spec.tie_word_embeddings and not st.has_embedding:
            n += spec.vocab_size * spec.embed_dim      # the last stage keeps its own copy
    return n


@lru_cache(maxsize=1024)
def _state_inputs(spec: ModelSpec, p: int, optimizer: str, optimizer_impl: str, st: Stage | None):
    """The parts of a step's :class:`StepInputs` that depend on the model, the parameters'
    bytes ``p`` (2 in bf16, 4 under mixed precision), the optimizer and the stage (None: the
    whole model), not on batch size or sequence length (cached, so a sweep of calls pays for
    them once): ``(weights, optimizer state, step temporaries, autocast cache at the end of
    the forward, (cache_attn, cache_mlp, cache_head))``, in bytes (chapter 04)."""
    whole = st is None
    st = st or Stage.whole(spec)
    mixed = p == 4
    kinds = set(spec.moe_layers)
    attn_c, mlp_c, head_c = _cache_parts(spec) if mixed else ({m: 0 for m in kinds}, {m: 0 for m in kinds}, 0)
    head_c = head_c if st.has_head else 0
    cache = 0
    if mixed:
        n_moe = sum(spec.moe_layers[st.first:st.last])
        n_dense = st.last - st.first - n_moe
        cache = (head_c + n_dense * (attn_c.get(False, 0) + mlp_c.get(False, 0))
                 + n_moe * (attn_c.get(True, 0) + mlp_c.get(True, 0)))
    if whole:
        weights = total_params(spec) * p
        opt = optimizer_state_bytes(spec, optimizer, state_bytes=p)
    else:
        n = _stage_params(spec, st)
        weights = n * p
        opt = optimizer_state_bytes(spec, optimizer, state_bytes=p) * n // total_params(spec)
    sizes = param_sizes(spec)
    if not whole:      # the stage's share of the whole model's step temporaries (foreach: exact)
        all_bytes = total_params(spec) * p
        sizes = tuple(v * weights // all_bytes for v in sizes)
    step_extra = step_temporaries(optimizer, optimizer_impl, sizes, p)
    return weights, opt, step_extra, cache, (attn_c, mlp_c, head_c)


@lru_cache(maxsize=256)
def _mlp_weight_grads(spec: ModelSpec, p: int) -> dict:
    """``{moe: bytes}`` of the gradient of one layer's largest MLP weight (:func:`largest_mlp_weight`)."""
    return {m: largest_mlp_weight(spec, m) * p for m in set(spec.moe_layers)}


def prepare_step(model, batch_size, seq_len, precision: str = "bf16", optimizer: str = "adamw",
                 recompute: str = "none", attention: str = "sdpa", grad_accum: int = 1,
                 stage: Stage | None = None, _bench_cpu: bool = False,
                 optimizer_impl: str = DEFAULT_OPTIMIZER_IMPL) -> tuple[ModelSpec, Scenario, StepInputs]:
    """Validate the knobs of a full fine-tuning step and build its :class:`StepInputs` (chapter 04).

    Returns ``(spec, scenario, inputs)`` for :func:`step_timeline`.  ``stage`` restricts
    the step to part of the model (chapter 05).
    """
    spec, sc = _checked_step(model, batch_size, seq_len, precision, optimizer, recompute, attention, grad_accum,
                             stage, _bench_cpu, optimizer_impl)
    return spec, sc, step_inputs(spec, sc, stage)


def _checked_step(model, batch_size, seq_len, precision, optimizer, recompute, attention, grad_accum, stage,
                  _bench_cpu, optimizer_impl) -> tuple[ModelSpec, Scenario]:
    """The knobs of a full fine-tuning step, checked (:func:`prepare_step`, :func:`train_memory`)."""
    spec = load_spec(model)
    seq_len = check_seq_len(spec, seq_len)
    batch_size = positive_int("batch_size", batch_size)
    positive_int("grad_accum", grad_accum)
    sc = Scenario(batch_size, seq_len, precision, attention, recompute, optimizer, optimizer_impl,
                  _bench_cpu=_bench_cpu)
    (stage or Stage.whole(spec)).check(spec)
    return spec, sc


def step_inputs(spec: ModelSpec, sc: Scenario, stage: Stage | None = None) -> StepInputs:
    """The :class:`StepInputs` of a full fine-tuning step of a validated scenario (chapter 04):
    what :func:`prepare_step` returns after checking the knobs."""
    optimizer, optimizer_impl = sc.optimizer, sc.optimizer_impl
    st = stage or Stage.whole(spec)
    whole = stage is None or st == Stage.whole(spec)
    p = 4 if sc.mixed else 2
    head, per_layer, emb, tied = _grads_by_part(spec, p)
    layers = {m: layer_tensors(spec, sc, moe=m) for m in set(spec.moe_layers)}
    weights, opt, step_extra, cache, (attn_c, mlp_c, head_c) = _state_inputs(spec, p, optimizer, optimizer_impl,
                                                                               None if whole else st)
    inputs = StepInputs(
        weights=weights, optimizer=opt,
        grads_head=head, grads_per_layer=per_layer, grads_embedding=emb, grads_tied=tied,
        grads_before_mlp=_grads_before(spec, p, params_before_mlp),
        grads_before_attention=_grads_before(spec, p, params_before_attention),
        mlp_weight_grad=_mlp_weight_grads(spec, p),
        autocast_cache=cache, cache_attn=attn_c, cache_mlp=mlp_c, cache_head=head_c,
        step_extra=step_extra,
        layers=layers, backward_mlp_extra={m: mlp_backward_extra(spec, sc, m) for m in layers},
        mlp_grad_moment={m: mlp_gradient_moment(spec, sc, m) for m in layers},
        stage=None if whole else st)
    return inputs


def train_result(batch_size, seq_len, spec: ModelSpec, precision: str = "bf16", optimizer: str = "adamw",
                 recompute: str = "none", attention: str = "sdpa", grad_accum: int = 1, stage: Stage | None = None,
                 _bench_cpu: bool = False, optimizer_impl: str = DEFAULT_OPTIMIZER_IMPL,
                 runtime: str = "transformers") -> Breakdown:
    """:func:`train_memory` for checked knobs (chapter 04); :func:`train_memory` evaluates it
    through :mod:`memlib.symbolic`, compiled once per model and knobs."""
    sc = Scenario(batch_size, seq_len, precision, attention, recompute, optimizer, optimizer_impl,
                  _bench_cpu=_bench_cpu)
    inputs = step_inputs(spec, sc, stage)
    marks, saved = step_timeline(spec, sc, inputs, recompute, grad_accum)
    meta = {"model": spec.name, "precision": precision, "optimizer": optimizer, "optimizer_impl": optimizer_impl,
            "recompute": recompute,
            "attention": attention_used(spec, attention), "grad_accum": grad_accum, "runtime": runtime,
            "batch_size": batch_size, "seq_len": seq_len, "activations_saved": saved,
            "autocast_cache": inputs.autocast_cache, "optimizer_state": inputs.optimizer,
            "params": total_params(spec)}
    title = (f"{spec.name} train step, b={batch_size} s={seq_len} {precision} {optimizer} "
             f"({optimizer_impl}) recompute={recompute}")
    return summarize(marks, title, meta)


@exact_sweeps("batch_size", "seq_len")
def train_memory(model, batch_size, seq_len, precision: str = "bf16", optimizer: str = "adamw",
                 recompute: str = "none", attention: str = "sdpa", grad_accum: int = 1,
                 runtime: str = "transformers", *, optimizer_impl: str = DEFAULT_OPTIMIZER_IMPL,
                 stage: Stage | None = None, _bench_cpu: bool = False) -> Breakdown:
    """Peak memory of one full fine-tuning step and the phase where it happens (chapter 04).

    ``peak = max over the step's marks of weights + optimizer + gradients + autocast_cache
    + activations + transient``.  Components are what is live at the peak: ``weights``,
    ``optimizer``, ``gradients``, ``autocast_cache``, ``activations`` (saved by autograd)
    and ``transient`` (the loss's buffers, gradients of activations, optimizer
    temporaries).  ``phases`` holds the peak of each phase, ``peak_phase`` the one that
    wins, ``peak_at`` the moment, ``meta["marks"]`` the :class:`Mark` at every boundary.

    ``precision`` defaults to ``"bf16"`` (everything bf16: the smallest recipe, a lower bound
    for "does it fit", and a lossy one); ``"mixed"`` is fp32 master weights with autocast
    around the forward (PyTorch's AMP recipe, accelerate and the HF Trainer: the backward
    runs outside it).
    ``optimizer_impl``: ``"foreach"`` (default, what PyTorch picks on CUDA), ``"loop"`` or
    ``"fused"`` (the HF Trainer's default): see :func:`step_temporaries`.  ``grad_accum > 1`` keeps
    gradients alive through the forward of the later micro-batches; their backward computes
    each weight's gradient anew and adds it in place (the new one is a transient).  ``runtime`` is
    ``"transformers"`` (the only one modelled for training).  ``batch_size`` and
    ``seq_len`` may be numpy arrays: the result then has one ``peak`` component (an
    array) and ``meta["peak_phase"]`` is an array of phase names.
    """
    choice("runtime", runtime, ("transformers",))
    spec, sc = _checked_step(model, batch_size, seq_len, precision, optimizer, recompute, attention, grad_accum,
                             stage, _bench_cpu, optimizer_impl)
    return evaluate(train_result, (sc.batch_size, sc.seq_len), spec, precision, optimizer, recompute, attention,
                    grad_accum, stage, _bench_cpu, optimizer_impl, runtime)


def mlp_backward_extra(spec: ModelSpec, sc: Scenario, moe: bool):
    """Extra activation bytes at the peak of an MLP's backward, over its saved tensors (chapter 04).

    Dense SwiGLU: the gradients of gate and up together, ``2·2·T·I`` (the gradient of
    ``act·up`` replaces down's saved input, which its backward has freed).

    Routed experts (``e`` bytes: fp32 under mixed precision, see
    :func:`memlib.activations.layer_tensors`), over ``S = T·k`` token-expert rows, the
    larger of two moments of ``grouped_mm_experts_forward``'s backward:

    * the routing weights' ``mul``: the gradient of the weighted output (the sum over
      ``k`` and the un-permuting index give it back as a new ``S × H`` tensor), the
      gradient of the experts' output and the product ``grad · output`` reduced to the
      weights' gradient: ``3·e·S·H``;
    * ``act·up``'s ``mul``: the gradient of down's input and those of ``act`` and ``up``,
      after the experts' output and down's input are freed, the int64 un-permuting index
      freed too: ``e·S·(2·I − H) − 8·S``.  Down's weight gradient has just been made then
      (:func:`mlp_gradient_moment`: a new gradient unless gradients accumulate).

    (The bench, whose counting dispatch mode makes autograd take the out-of-place
    ``index_put`` in the un-permuting index's backward, peaks one step earlier with the
    same ``3·e·S·H``.)
    """
    if moe:
        routing_mul = 3 * sc.residual_bytes * sc.tokens * spec.experts_per_token * spec.hidden_size
        act_up_mul = mlp_gradient_moment(spec, sc, moe)[0]
        return larger(routing_mul, act_up_mul)
    return 2 * 2 * sc.tokens * spec.intermediate_size


def mlp_gradient_moment(spec: ModelSpec, sc: Scenario, moe: bool):
    """The moment of an MoE layer's backward where the routed experts' down weight gradient
    has just been made (chapter 04): ``(activation bytes over the saved tensors, gradient
    bytes)`` = ``(e·S·(2·I − H) − 8·S, p·E·I·H)`` at ``act·up``'s ``mul`` (see
    :func:`mlp_backward_extra`); ``(0, 0)`` for a dense MLP, whose peak comes first."""
    if not moe:
        return 0, 0
    e, p = sc.residual_bytes, 4 if sc.mixed else 2
    S, H, Im = sc.tokens * spec.experts_per_token, spec.hidden_size, spec.moe_intermediate_size
    return e * S * (2 * Im - H) - 8 * S, p * spec.num_experts * Im * H


class Recipe(NamedTuple):
    """Bytes per parameter of one mixed-precision recipe (chapter 04): the ``weights`` the
    model computes with, their ``gradients``, an fp32 ``master`` copy the optimizer updates
    (0 when the weights themselves are fp32), the bytes of each optimizer ``state`` value,
    and whether autocast caches bf16 copies of the matmul weights (``cache``)."""

    weights: int
    gradients: int
    master: int
    state: int
    cache: bool
    label: str


#: Mixed-precision recipes as the libraries that define them store a model (chapter 04):
#:
#: * ``amp``: PyTorch AMP (also accelerate and the HF Trainer on an fp32 model): fp32
#:   weights, gradients and states, ``torch.autocast(bfloat16)`` around the forward;
#: * ``deepspeed``: the ZeRO paper's accounting (Rajbhandari et al., 2020, §3.1), as
#:   DeepSpeed's ZeRO optimizer stores it: 16-bit weights and gradients, an fp32 master
#:   copy and fp32 moments, ``2 + 2 + 12``;
#: * ``megatron``: Megatron-LM's ``--bf16``, which forces gradient accumulation and
#:   all-reduce in fp32 (``main_grad``): ``2 + 4 + 12 = 18`` (Megatron Core's
#:   distributed-optimizer guide: "float16 param, fp32 grads: 18");
#: * ``fsdp2``: ``fully_shard`` with ``MixedPrecisionPolicy(param_dtype=bfloat16,
#:   reduce_dtype=float32)``: the sharded parameters stay fp32 and serve as the master
#:   copy, gradients and states fp32: ``4 + 4 + 8``; the bf16 copies of one layer's
#:   gathered parameters exist only while it runs (a transient, not a state).
RECIPES = {
    "amp": Recipe(4, 4, 0, 4, True, "PyTorch AMP"),
    "deepspeed": Recipe(2, 2, 4, 4, False, "DeepSpeed (ZeRO paper)"),
    "megatron": Recipe(2, 4, 4, 4, False, "Megatron-LM bf16"),
    "fsdp2": Recipe(4, 4, 0, 4, False, "FSDP2 mixed precision"),
}


def state_bytes(model, precision: str = "mixed", optimizer: str = "adamw", recipe: str | None = None) -> Breakdown:
    """Model states of a full fine-tune (chapter 04): ``weights``, ``gradients``, an fp32
    ``master_weights`` copy where the recipe keeps one, ``optimizer`` state and, under
    PyTorch AMP, the ``autocast_cache`` (bf16 copies of every matmul weight, alive during
    the forward and, for the copies autograd saved, into the backward).

    ``bf16``: ``2 + 2 + state(2)`` bytes per parameter.  ``mixed`` takes a ``recipe``
    from :data:`RECIPES` (default ``"amp"``): ``weights + gradients + master + state(s)``,
    e.g. with AdamW ``4 + 4 + 0 + 8`` (``amp``, ``fsdp2``), ``2 + 2 + 4 + 8``
    (``deepspeed``), ``2 + 4 + 4 + 8 = 18`` (``megatron``); ``amp`` adds ``2`` per matmul
    weight for the cache.  ``meta["params"]`` is the parameter count, so
    ``b[k] / b.meta["params"]`` is bytes per parameter.
    """
    from .scenario import PRECISIONS
    choice("precision", precision, PRECISIONS)
    if precision == "bf16":
        if recipe is not None:
            raise ValueError(f"recipe: applies to precision='mixed' only (one of {', '.join(RECIPES)}); "
                             f"got recipe={recipe!r} with precision='bf16'")
        rec = Recipe(2, 2, 0, 2, False, "pure bf16")
    else:
        rec = RECIPES[choice("recipe", recipe or "amp", tuple(RECIPES))]
    spec = load_spec(model)
    P = total_params(spec)
    comps = {"weights": P * rec.weights, "gradients": P * rec.gradients}
    if rec.master:
        comps["master_weights"] = P * rec.master
    comps["optimizer"] = optimizer_state_bytes(spec, optimizer, state_bytes=rec.state)
    if rec.cache:
        comps["autocast_cache"] = 2 * matmul_weight_params(spec)
    return Breakdown(comps, title=f"{spec.name}: {rec.label} {OPTIMIZER_LABELS.get(optimizer, optimizer)}",
                     kinds={k: KINDS[k] for k in comps},
                     meta={"params": P, "precision": precision, "optimizer": optimizer,
                           "recipe": None if precision == "bf16" else (recipe or "amp")})


#: Optimizer names as the chapters print them.
OPTIMIZER_LABELS = {"adamw": "AdamW", "sgd": "SGD", "sgd_momentum": "SGD + momentum",
                    "adafactor": "Adafactor (factored)", "adamw_8bit": "8-bit AdamW (bnb)", "lion": "Lion"}


__all__ = ["train_memory", "state_bytes", "RECIPES", "Recipe", "step_timeline", "prepare_step", "summarize", "Mark", "Stage",
           "StepInputs", "matmul_weight_params", "largest_param_tensor", "step_temporaries",
           "checkpointed_inputs", "checkpoint_beside_recomputed", "final_output_at_loss", "kept_per_layer",
           "mlp_backward_extra", "mlp_gradient_moment", "largest_mlp_weight", "COMPONENTS", "PHASES"]
