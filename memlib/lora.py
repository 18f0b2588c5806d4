"""LoRA and QLoRA: a frozen base, small trainable adapters (chapter 04).

LoRA adds to each targeted projection ``W`` (``in → out``) two matrices ``A`` (``r × in``)
and ``B`` (``out × r``): ``r·(in + out)`` trainable parameters.  Only the adapters get
gradients and optimizer state.  The frozen base still costs its weights, bf16 for LoRA or
4-bit nf4 for QLoRA (:func:`memlib.weight_memory`), and most of its activations: gradients
must flow through every layer to reach the adapters below.  What a frozen base does *not*
save:

* the normalised tensor inside each norm (it only served the norm weight's gradient);
* the input of a frozen, untargeted projection (``dx = dy·Wᵀ`` needs ``W``, not ``x``):
  the attention output read by ``o`` and the ``act·up`` product read by ``down``, unless
  those projections are targeted, and a norm's output unless a targeted projection reads it.

Each adapter saves its input (shared with the base projection's input) and ``x·A``
(``r`` values per token).  QLoRA dequantises one weight matrix at a time to bf16, a
transient the size of the largest projection.
"""
from __future__ import annotations

from .activations import Scenario, attention_used, layer_saved
from .breakdown import Breakdown
from .kv_cache import check_seq_len
from .optimizers import OPTIMIZERS, tensor_state_bytes
from .params import named_linears
from .spec import load_spec
from .training import StepInputs, mlp_backward_extra, step_temporaries, step_timeline, summarize
from .validation import choice, positive_int
from .weights import weight_memory

#: Target shorthands, as PEFT users write them.
TARGET_GROUPS = {
    "attention": ("q", "k", "v", "o", "qkv", "q_a", "q_b", "kv_a", "kv_b"),
    "mlp": ("gate", "up", "down", "gate_up", "shared_gate", "shared_up", "shared_down"),
}
TARGET_GROUPS["all-linear"] = TARGET_GROUPS["attention"] + TARGET_GROUPS["mlp"]
BASES = ("bf16", "nf4")
ADAPTER_DTYPES = ("bf16", "fp32")
_READS_INPUT_NORM = {"q", "k", "v", "qkv", "q_a", "kv_a"}
_READS_MLP_NORM = {"gate", "up", "gate_up", "shared_gate", "shared_up"}


def resolve_targets(model, targets) -> tuple[str, ...]:
    """Module names targeted by ``targets`` (a group name or an iterable of module names).

    Fused families expose fused names: asking for ``q`` on Phi-3 targets its ``qkv``.
    MoE experts are fused tensors in transformers, not Linear modules, and are never
    targeted.  Raises ``ValueError`` naming what does not exist in this model.
    """
    spec = load_spec(model)
    available = {name for comp, name, *_ in named_linears(spec) if comp != "experts"}
    names = TARGET_GROUPS[targets] if isinstance(targets, str) and targets in TARGET_GROUPS else (
        (targets,) if isinstance(targets, str) else tuple(targets))
    fused = {"q": "qkv", "k": "qkv", "v": "qkv", "gate": "gate_up", "up": "gate_up"}
    out = []
    for n in names:
        n = n.removesuffix("_proj")
        n = n if n in available else fused.get(n, n)
        if n in available and n not in out:
            out.append(n)
    if not out:
        raise ValueError(f"targets: none of {list(names)} is a projection of {spec.name}; "
                         f"available: {', '.join(sorted(available))} or {', '.join(TARGET_GROUPS)}")
    return tuple(out)


def adapter_matrices(model, rank: int, targets="all-linear") -> list[tuple[int, int, int]]:
    """Adapter matrices as ``(rows, cols, count)``: ``A`` is ``r × in``, ``B`` is ``out × r``."""
    spec = load_spec(model)
    rank = positive_int("rank", rank)
    chosen = set(resolve_targets(spec, targets))
    mats = []
    for comp, name, i, o, n in named_linears(spec):
        if name in chosen and comp != "experts":
            mats += [(rank, i, n), (o, rank, n)]
    return mats


def lora_params(model, rank: int, targets="all-linear") -> int:
    """Trainable adapter parameters: ``Σ r·(in + out)`` over the targeted projections."""
    return sum(r * c * n for r, c, n in adapter_matrices(model, rank, targets))


def _frozen_layer(spec, sc: Scenario, moe: bool, chosen: set, rank: int, lora_dropout: float) -> dict:
    """What one layer saves when its base is frozen and ``chosen`` projections carry adapters."""
    saved = layer_saved(spec, sc, moe)
    for k in [k for k in saved if k.endswith(".normalised")]:
        del saved[k]
    if not chosen & _READS_INPUT_NORM:
        saved.pop("input_norm.output", None)
    if not chosen & _READS_MLP_NORM:
        saved.pop("post_attn_norm.output", None)
        saved.pop("pre_mlp_norm.output", None)
    if "o" not in chosen and attention_used(spec, sc.attention) == "eager":
        saved.pop("attn.out", None)
    if "down" not in chosen:
        saved.pop("mlp.act_times_up", None)
    if moe:
        saved.pop("moe.tokens_gathered", None)    # frozen experts need no input for their weights
    T = sc.tokens
    for comp, name, i, o, n in named_linears(spec):
        in_this_layer = comp == "attention" or (comp == "mlp" and not moe) or (comp == "shared_experts" and moe)
        if name in chosen and in_this_layer:
            saved[f"lora.{name}.xA"] = 2 * T * rank
            if lora_dropout > 0:     # the adapter reads a dropped-out copy of its input, and its mask
                saved[f"lora.{name}.dropout"] = (2 + sc.mask_bytes()) * T * i
    return saved


def lora_memory(model, batch_size, seq_len, rank: int = 16, targets="all-linear", base: str = "bf16",
                double_quant: bool = False, adapter_dtype: str = "bf16", optimizer: str = "adamw",
                recompute: str = "none", attention: str = "sdpa", lora_dropout: float = 0.0,
                grad_accum: int = 1) -> Breakdown:
    """Peak memory of one LoRA (``base="bf16"``) or QLoRA (``base="nf4"``) training step.

    Components at the peak: ``weights`` (frozen base + adapters), ``optimizer`` (adapters
    only), ``gradients`` (adapters only), ``autocast_cache`` (bf16 copies of fp32 adapters),
    ``activations`` and ``transient``.  ``meta`` gives ``trainable_params``,
    ``base_weights`` and the timeline, as :func:`memlib.training.train_memory` does.
    Chapter 04 §LoRA derives it.
    """
    spec = load_spec(model)
    seq_len = check_seq_len(spec, seq_len)
    batch_size = positive_int("batch_size", batch_size)
    rank = positive_int("rank", rank)
    choice("base", base, BASES)
    choice("adapter_dtype", adapter_dtype, ADAPTER_DTYPES)
    choice("optimizer", optimizer, OPTIMIZERS)
    if not 0 <= float(lora_dropout) < 1:
        raise ValueError(f"lora_dropout: must be in [0, 1), got {lora_dropout}")
    chosen = set(resolve_targets(spec, targets))
    sc = Scenario(batch_size, seq_len, "bf16", attention)     # the frozen base computes in bf16
    p = 4 if adapter_dtype == "fp32" else 2
    mats = adapter_matrices(spec, rank, targets)
    trainable = sum(r * c * n for r, c, n in mats)
    base_weights = weight_memory(spec, "nf4" if base == "nf4" else "bf16", double_quant=double_quant).total
    per_layer_adapters = trainable * p // spec.num_layers
    layers = {m: _frozen_layer(spec, sc, m, chosen, rank, float(lora_dropout)) for m in set(spec.moe_layers)}
    dequant = 0
    if base == "nf4":   # one projection dequantised to bf16 at a time, during forward and backward
        dequant = max(2 * i * o for comp, _, i, o, _ in named_linears(spec) if comp != "experts")
    inputs = StepInputs(
        weights=base_weights + trainable * p,
        optimizer=tensor_state_bytes(mats, 0, optimizer, state_bytes=p),
        grads_head=0, grads_per_layer=per_layer_adapters, grads_embedding=0, grads_tied=0,
        autocast_cache=2 * trainable if adapter_dtype == "fp32" else 0, autocast_cache_head=0,
        step_extra=step_temporaries(optimizer, max(r * c for r, c, _ in mats), p),
        layers=layers, frozen_head=True,
        backward_mlp_extra={m: mlp_backward_extra(spec, sc, m) + dequant for m in layers})
    marks, saved = step_timeline(spec, sc, inputs, recompute, positive_int("grad_accum", grad_accum))
    meta = {"rank": rank, "targets": sorted(chosen), "base": base, "double_quant": double_quant,
            "adapter_dtype": adapter_dtype, "optimizer": optimizer, "recompute": recompute,
            "attention": attention_used(spec, attention), "trainable_params": trainable,
            "base_weights": base_weights, "activations_saved": saved,
            "batch_size": batch_size, "seq_len": seq_len}
    title = f"{spec.name} {'QLoRA' if base == 'nf4' else 'LoRA'} r={rank}, b={batch_size} s={seq_len}"
    return summarize(marks, inputs, title, meta)
