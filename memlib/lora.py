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

PEFT's default adapters are fp32 (it upcasts bf16 adapters), and its forward casts the
input to the adapter's dtype: ``B(A(x.to(fp32)))``.  Without an autocast region around
the forward (``autocast=False``: a bf16 base trained as is, which is how the RL bench of
chapter 06 runs PEFT), every targeted projection then keeps its *own* fp32 copy of its
input (``4·T·in`` bytes) and an fp32 ``x·A`` (``4·T·r``), while the bf16 input itself is
kept by nobody (the frozen base and the cast need no saved input); the bf16 norm outputs
and the ``act·up`` product read by ``down`` then go, as they do for frozen projections.
"""
from __future__ import annotations

from functools import lru_cache

from .activations import Saved, layer_tensors, without_frozen
from .breakdown import Breakdown
from .optimizers import tensor_state_bytes
from .params import named_linears
from .scenario import DEFAULT_OPTIMIZER_IMPL, OPTIMIZERS, Scenario, attention_used, check_seq_len
from .spec import load_spec
from .symbolic import evaluate
from .training import StepInputs, mlp_backward_extra, step_temporaries, step_timeline, summarize
from .validation import choice, exact_sweeps, fraction, positive_int, safe_text
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
    """Module names targeted by ``targets`` (chapter 04): a group name (``all-linear``,
    ``attention``, ``mlp``), a module name, or an iterable of either (``["q_proj", "v_proj"]``,
    ``["all-linear"]``).

    Fused families expose fused names: asking for ``q`` on Phi-3 targets its ``qkv``.
    MoE experts are fused tensors in transformers, not Linear modules, and are never
    targeted.  Raises ``ValueError`` naming what does not exist in this model.
    """
    spec = load_spec(model)
    if targets is None or isinstance(targets, (bytes, int, float)):
        raise ValueError(f"targets: expected a group ({', '.join(TARGET_GROUPS)}) or module names, "
                         f"got {targets!r}")
    given = (targets,) if isinstance(targets, str) else tuple(targets)
    for t in given:
        if not isinstance(t, str):
            raise ValueError(f"targets: module names must be strings, got {t!r}")
    return _resolve_names(spec, given)


@lru_cache(maxsize=256)
def _resolve_names(spec, given: tuple) -> tuple[str, ...]:
    """:func:`resolve_targets` for a tuple of strings (cached per model)."""
    available = {name for comp, name, *_ in named_linears(spec) if comp != "experts"}
    names = []
    for t in given:
        names += list(TARGET_GROUPS[t]) if t in TARGET_GROUPS else [t]
    fused = {"q": "qkv", "k": "qkv", "v": "qkv", "gate": "gate_up", "up": "gate_up"}
    out = []
    for n in names:
        n = n.removesuffix("_proj")
        n = n if n in available else fused.get(n, n)
        if n in available and n not in out:
            out.append(n)
    if not out:
        raise ValueError(f"targets: none of {safe_text(list(given))} is a projection of {spec.name}; "
                         f"available: {', '.join(sorted(available))} or {', '.join(TARGET_GROUPS)}")
    return tuple(out)


def adapter_matrices(model, rank: int, targets="all-linear") -> list[tuple[int, int, int]]:
    """Adapter matrices as ``(rows, cols, count)`` (chapter 04): ``A`` is ``r × in``, ``B`` is ``out × r``."""
    spec = load_spec(model)
    rank = positive_int("rank", rank)
    chosen = set(resolve_targets(spec, targets))
    mats = []
    for comp, name, i, o, n in named_linears(spec):
        if name in chosen and comp != "experts":
            mats += [(rank, i, n), (o, rank, n)]
    return mats


def lora_params(model, rank: int, targets="all-linear") -> int:
    """Trainable adapter parameters (chapter 04): ``Σ r·(in + out)`` over the targeted projections."""
    return sum(r * c * n for r, c, n in adapter_matrices(model, rank, targets))


def _frozen_layer(spec, sc: Scenario, moe: bool, chosen: set, rank: int, lora_dropout: float,
                  upcast: bool = False) -> dict:
    """What one layer saves when its base is frozen and ``chosen`` projections carry adapters:
    the frozen layer's :class:`~memlib.activations.Saved` records, less those kept only for
    frozen weights' gradients (:func:`~memlib.activations.without_frozen`), plus each
    adapter's ``x·A`` and, with dropout, its dropped-out input and mask.

    ``upcast`` (fp32 adapters without autocast, PEFT's default forward): each adapter keeps
    an fp32 copy of its input, ``4·T·in``, and an fp32 ``x·A``, ``4·T·r``; no bf16 input is
    kept for an adapter (the records kept only for weights' gradients all go)."""
    saved = without_frozen(layer_tensors(spec, sc, moe), trained=set() if upcast else chosen)
    T = sc.tokens
    for comp, name, i, o, n in named_linears(spec):
        in_this_layer = comp == "attention" or (comp == "mlp" and not moe) or (comp == "shared_experts" and moe)
        if name in chosen and in_this_layer:
            block = "attention" if comp == "attention" else "mlp"
            half = "attn" if block == "attention" else "mlp"
            saved[f"lora.{name}.xA"] = Saved(f"lora.{name}.xA", (4 if upcast else 2) * T * rank, block, half,
                                             ("T", "r"))
            if upcast:
                saved[f"lora.{name}.input_fp32"] = Saved(f"lora.{name}.input_fp32", 4 * T * i, block, half,
                                                         ("T", "in"))
            if lora_dropout > 0:     # the adapter reads a dropped-out copy of its input, and its mask
                saved[f"lora.{name}.dropout"] = Saved(f"lora.{name}.dropout", (2 + sc.mask_bytes()) * T * i,
                                                      block, "attn" if block == "attention" else "mlp", ("T", "in"))
    return saved


@lru_cache(maxsize=256)
def _adapter_state(spec, rank: int, targeted: tuple, base: str, double_quant: bool, p: int, optimizer: str,
                   optimizer_impl: str):
    """The parts of a LoRA step that depend on the model and its adapters, not on batch size or
    sequence length (cached, so a sweep of calls pays for them once), in bytes (chapter 04):
    ``(trainable params, base weights, adapter gradients per layer at the peak of its MLP's
    and of its attention's backward, the dequantised projection (QLoRA), optimizer state,
    step temporaries)``; ``p`` is the adapters' bytes per parameter."""
    chosen = set(targeted)
    mats = adapter_matrices(spec, rank, targeted)
    trainable = sum(r * c * n for r, c, n in mats)
    base_weights = weight_memory(spec, "nf4" if base == "nf4" else "bf16", double_quant=double_quant).total

    # adapters whose gradients exist at the peak of a layer's MLP and attention backward
    def adapters(names):
        return sum(rank * (i + o) * n for comp, name, i, o, n in named_linears(spec)
                   if name in chosen and comp != "experts" and name in names) * p // spec.num_layers

    before_mlp = adapters({"down", "shared_gate", "shared_up", "shared_down"})
    before_attention = adapters(set(TARGET_GROUPS["mlp"]) | {"o"})
    dequant = 0
    if base == "nf4":   # one projection dequantised to bf16 at a time, during forward and backward
        dequant = max(2 * i * o for comp, _, i, o, _ in named_linears(spec) if comp != "experts")
    opt = tensor_state_bytes(mats, 0, optimizer, state_bytes=p)
    step_extra = step_temporaries(optimizer, optimizer_impl, [r * c for r, c, n in mats for _ in range(n)], p)
    return trainable, base_weights, before_mlp, before_attention, dequant, opt, step_extra


def lora_step(model, batch_size, seq_len, rank: int = 16, targets="all-linear", base: str = "bf16",
              double_quant: bool = False, adapter_dtype: str = "bf16", optimizer: str = "adamw",
              recompute: str = "none", attention: str = "sdpa", lora_dropout: float = 0.0,
              optimizer_impl: str = DEFAULT_OPTIMIZER_IMPL, autocast: bool = True, _bench_cpu: bool = False):
    """Validate the knobs of a LoRA step and build its inputs (chapter 04; chapter 06 reuses it).

    Returns ``(spec, scenario, inputs, info)``: the :class:`~memlib.training.StepInputs`
    for :func:`memlib.training.step_timeline` (``weights = base + Σ r·(in + out)·p``,
    optimizer state and gradients of the adapters only) and ``info`` with ``chosen``
    (the targeted projections), ``trainable`` (adapter parameters), ``base_weights`` and
    ``adapter_bytes``.  ``autocast=False`` with ``adapter_dtype="fp32"`` is PEFT's forward
    without an autocast region (the module docstring): fp32 input copies, no cached copies.
    """
    spec, batch_size, seq_len, rank, lora_dropout, targeted = _checked(
        model, batch_size, seq_len, rank, targets, base, adapter_dtype, optimizer, lora_dropout)
    sc = Scenario(batch_size, seq_len, "bf16", attention, recompute, optimizer, optimizer_impl,   # the base computes in bf16
                  _bench_cpu=_bench_cpu)
    inputs, info = _lora_inputs(spec, sc, rank, targeted, base, double_quant, adapter_dtype, lora_dropout, autocast)
    return spec, sc, inputs, info


def _checked(model, batch_size, seq_len, rank, targets, base, adapter_dtype, optimizer, lora_dropout):
    """The knobs of a LoRA step, checked: ``(spec, batch_size, seq_len, rank, lora_dropout, targeted)``."""
    spec = load_spec(model)
    seq_len = check_seq_len(spec, seq_len)
    batch_size = positive_int("batch_size", batch_size)
    rank = positive_int("rank", rank)
    choice("base", base, BASES)
    choice("adapter_dtype", adapter_dtype, ADAPTER_DTYPES)
    choice("optimizer", optimizer, OPTIMIZERS)
    lora_dropout = fraction("lora_dropout", lora_dropout, 0.0, 1.0, inclusive_low=True)
    if lora_dropout >= 1:
        raise ValueError(f"lora_dropout: must be in [0, 1), got {lora_dropout}")
    return spec, batch_size, seq_len, rank, lora_dropout, resolve_targets(spec, targets)


def _lora_inputs(spec, sc: Scenario, rank: int, targeted: tuple, base: str, double_quant: bool,
                 adapter_dtype: str, lora_dropout: float, autocast: bool):
    """:func:`lora_step`'s ``(inputs, info)`` for checked knobs."""
    optimizer, optimizer_impl = sc.optimizer, sc.optimizer_impl
    chosen = set(targeted)
    p = 4 if adapter_dtype == "fp32" else 2
    upcast = adapter_dtype == "fp32" and not autocast
    cached = adapter_dtype == "fp32" and autocast        # autocast casts fp32 adapters to bf16 and caches them
    trainable, base_weights, before_mlp, before_attention, dequant, opt, step_extra = _adapter_state(
        spec, rank, targeted, base, double_quant, p, optimizer, optimizer_impl)
    per_layer_adapters = trainable * p // spec.num_layers
    layers = {m: _frozen_layer(spec, sc, m, chosen, rank, float(lora_dropout), upcast) for m in set(spec.moe_layers)}
    inputs = StepInputs(
        weights=base_weights + trainable * p,
        optimizer=opt,
        grads_head=0, grads_per_layer={m: per_layer_adapters for m in layers}, grads_embedding=0, grads_tied=0,
        grads_before_mlp={m: before_mlp for m in layers}, grads_before_attention={m: before_attention for m in layers},
        autocast_cache=2 * trainable if cached else 0,
        cache_attn={m: (2 * trainable if cached else 0) // spec.num_layers for m in layers},
        cache_mlp={m: 0 for m in layers}, cache_head=0,
        step_extra=step_extra,
        layers=layers, frozen_head=True,
        backward_mlp_extra={m: mlp_backward_extra(spec, sc, m) + dequant for m in layers})
    info = {"chosen": chosen, "trainable": trainable, "base_weights": base_weights, "adapter_bytes": trainable * p,
            "rank": rank, "lora_dropout": lora_dropout}
    return inputs, info


def _lora_result(batch_size, seq_len, spec, rank, targeted, base, double_quant, adapter_dtype, optimizer, recompute,
                 attention, lora_dropout, optimizer_impl, autocast, grad_accum) -> Breakdown:
    """:func:`lora_memory` for checked knobs (evaluated through :mod:`memlib.symbolic`:
    compiled once per model and knobs)."""
    sc = Scenario(batch_size, seq_len, "bf16", attention, recompute, optimizer, optimizer_impl)
    inputs, info = _lora_inputs(spec, sc, rank, targeted, base, double_quant, adapter_dtype, lora_dropout, autocast)
    marks, saved = step_timeline(spec, sc, inputs, recompute, grad_accum)
    meta = {"model": spec.name, "rank": rank, "targets": sorted(targeted), "base": base,
            "double_quant": double_quant, "adapter_dtype": adapter_dtype, "autocast": autocast,
            "optimizer": optimizer, "optimizer_impl": optimizer_impl,
            "recompute": recompute, "lora_dropout": lora_dropout,
            "attention": attention_used(spec, attention), "trainable_params": info["trainable"],
            "base_weights": info["base_weights"], "activations_saved": saved,
            "batch_size": batch_size, "seq_len": seq_len}
    title = f"{spec.name} {'QLoRA' if base == 'nf4' else 'LoRA'} r={rank}, b={batch_size} s={seq_len}"
    return summarize(marks, title, meta)


def first_layer_unsaved(spec, layer: dict, chosen: set) -> int:
    """Bytes the first decoder layer does not keep because the embedding is frozen (chapter 06).

    Autograd records an op only when an input requires a gradient.  With a frozen
    embedding nothing does before the first adapter: the first layer's tensors in front of
    its first targeted projection (the input norm's, when q/k/v carry adapters) are never
    saved.  ``layer`` is the first layer's :class:`~memlib.activations.Saved` records in
    forward order (:func:`_frozen_layer`); records kept for a trained weight's gradient
    stay (an adapter's input is saved for its own weight).  Applies without recompute.
    """
    names = [k for k in layer if not k.startswith("lora.")]
    recs = [layer[k] for k in names]
    if chosen & _READS_INPUT_NORM:
        cut = next((i for i, t in enumerate(recs) if t.block != "norms"), len(recs))
    elif "o" in chosen:
        cut = next((i for i, t in enumerate(recs) if t.half == "mlp"), len(recs))
    elif chosen & _READS_MLP_NORM:
        cut = next((i for i, t in enumerate(recs) if t.half == "mlp" and t.block != "norms"), len(recs))
    else:
        cut = len(recs)
    return sum(t.nbytes for t in recs[:cut] if not (set(t.needed_by) & chosen))


@exact_sweeps("batch_size", "seq_len")
def lora_memory(model, batch_size, seq_len, rank: int = 16, targets="all-linear", base: str = "bf16",
                double_quant: bool = False, adapter_dtype: str = "bf16", optimizer: str = "adamw",
                recompute: str = "none", attention: str = "sdpa", lora_dropout: float = 0.0,
                grad_accum: int = 1, optimizer_impl: str = DEFAULT_OPTIMIZER_IMPL,
                autocast: bool = True) -> Breakdown:
    """Peak memory of one LoRA (``base="bf16"``) or QLoRA (``base="nf4"``) training step.

    Components at the peak: ``weights`` (frozen base + adapters), ``optimizer`` (adapters
    only), ``gradients`` (adapters only), ``autocast_cache`` (bf16 copies of fp32 adapters),
    ``activations`` and ``transient``.  ``meta`` gives ``trainable_params``,
    ``base_weights`` and the timeline, as :func:`memlib.training.train_memory` does.
    ``autocast=False`` (with ``adapter_dtype="fp32"``): PEFT's forward with no autocast
    region, each adapter keeping an fp32 copy of its input (module docstring).
    Chapter 04 §LoRA derives it.
    """
    spec, batch_size, seq_len, rank, lora_dropout, targeted = _checked(
        model, batch_size, seq_len, rank, targets, base, adapter_dtype, optimizer, lora_dropout)
    Scenario(1, 1, "bf16", attention, recompute, optimizer, optimizer_impl)      # checks the knobs
    grad_accum = positive_int("grad_accum", grad_accum)
    return evaluate(_lora_result, (batch_size, seq_len), spec, rank, targeted, base, double_quant, adapter_dtype,
                    optimizer, recompute, attention, lora_dropout, optimizer_impl, autocast, grad_accum)


def lora_fit(model, gpu="RTX 4090 24GB", batch_size: int = 1, seq_len: int = 2048, rank: int = 16,
             targets="all-linear", base: str = "nf4", double_quant: bool = False,
             recompute: str = "none", optimizer: str = "adamw", attention: str = "sdpa",
             lora_dropout: float = 0.0, optimizer_impl: str = DEFAULT_OPTIMIZER_IMPL) -> Breakdown:
    """:func:`lora_memory` against one GPU's memory (chapter 04).

    ``meta`` adds ``gpu``, ``gpu_memory`` (the bytes a process can use: the runtime total, :func:`~memlib.hardware.gpu_bytes`), ``fits``
    (``peak <= gpu_memory``), ``margin`` (``gpu_memory - peak``, negative when short) and
    ``model``.  The CUDA context and the allocator's slack come on top (chapter 07).
    """
    from dataclasses import replace

    from .hardware import gpu_bytes
    from .params import total_params
    from .units import GB
    mem = gpu_bytes(gpu)
    spec = load_spec(model)
    r = lora_memory(spec, batch_size, seq_len, rank=rank, targets=targets, base=base,
                    double_quant=double_quant, optimizer=optimizer, recompute=recompute,
                    attention=attention, lora_dropout=lora_dropout, optimizer_impl=optimizer_impl)
    name = gpu if isinstance(gpu, str) else f"{mem / GB:.1f} GB"
    return replace(r, meta={**r.meta, "model": spec.name, "gpu": name, "gpu_memory": mem,
                            "fits": bool(r.total <= mem), "margin": int(mem - r.total),
                            "params": total_params(spec)})
