"""Tensor (and sequence) parallelism from an architecture's own ``base_model_tp_plan`` (chapter 05).

transformers ships, for most architectures, a ``base_model_tp_plan`` on the config class: a
dict from module patterns (``"layers.*.self_attn.q_proj"``) to a style name.  The bench
applies it with PyTorch's own ``parallelize_module``, one decoder layer at a time:

======================== ===================================================================
plan style               PyTorch style
======================== ===================================================================
``colwise``              ``ColwiseParallel()`` (weight ``Shard(0)``, output ``Shard(-1)`` kept local)
``rowwise``              ``RowwiseParallel()`` (weight ``Shard(1)``, output all-reduced to
                         ``Replicate()``; with SP reduce-scattered to ``Shard(1)``)
``colwise_gather_output`` ``ColwiseParallel(output_layouts=Replicate())`` (fused QKV / gate_up:
                         the output is all-gathered because the model slices it)
``rowwise_split_input``  ``RowwiseParallel(input_layouts=Replicate())`` (the replicated input
                         is split locally)
anything else            replicated: the module keeps whole parameters on every rank
                         (e.g. Qwen3's ``q_norm``/``k_norm``, MoE experts' ``packed_colwise``)
======================== ===================================================================

A rule whose module is not an ``nn.Linear`` (e.g. a 3-D expert parameter) is replicated
too; rules are matched layer by layer (dense and MoE layers may differ).  Outside the layers: ``embed_tokens`` gets ``RowwiseParallel(input_layouts=Replicate())``
(the vocabulary-parallel embedding: each rank holds ``vocab / tp`` rows), and ``lm_head``
``ColwiseParallel(output_layouts=Replicate())`` (each rank holds ``vocab / tp`` rows; the
logits are all-gathered whole for the loss).  A tied ``lm_head`` keeps sharing the
embedding's sharded weight.  Final and per-layer norms stay replicated.

**Sequence parallelism** (``sp=True``), as in torchtitan's Llama plan: every norm that is a
direct child of a decoder layer, and the final norm, gets ``SequenceParallel()`` (input and
output sharded on the sequence, dim 1); the attention and MLP blocks get
``PrepareModuleInput`` from ``Shard(1)`` to ``Replicate()`` (an all-gather of the sequence);
``rowwise`` layers reduce-scatter to ``Shard(1)``; a block with no rowwise layer (an MoE block
whose experts this plan leaves replicated) gets ``PrepareModuleInputOutput`` whose output
goes from ``Replicate()`` back to ``Shard(1)`` (a local slice); the embedding outputs ``Shard(1)`` and
``lm_head`` takes ``Shard(1)`` input.  Between blocks the residual stream is ``s / tp`` tokens.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from .dist_run import DistRun

__all__ = ["decoder_layers", "apply_tp", "shard_shapes", "setup_tp", "setup_tp_sp", "TP_STYLES"]

TP_STYLES = ("colwise", "rowwise", "colwise_gather_output", "rowwise_split_input")


def decoder_layers(model) -> nn.ModuleList:
    """The decoder layers of a causal LM: the longest ``nn.ModuleList`` under its base model."""
    base = getattr(model, "base_model", model)
    lists = [m for m in base.children() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError(f"model {type(model).__name__}: no decoder layer list found")
    return max(lists, key=len)


def _layer_norms(layer):
    """Names of the norm modules that are direct children of a decoder layer."""
    return [n for n, m in layer.named_children() if re.search(r"(RMS|Layer)Norm", type(m).__name__)]


def apply_tp(model, mesh, sp: bool = False) -> dict:
    """Apply the architecture's tp plan (and SP if asked) in place; return what was done.

    Returns ``{"sharded": {module: style}, "replicated": {pattern: plan style}, "sp_norms": [...]}``
    (module names relative to a decoder layer).  ``ValueError`` if the architecture has no plan.
    """
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput, PrepareModuleInputOutput,
                                                   RowwiseParallel, SequenceParallel, parallelize_module)

    plan = getattr(type(model.config), "base_model_tp_plan", None) or getattr(model.config, "base_model_tp_plan", None)
    if not plan:
        raise ValueError(f"model_type {model.config.model_type!r}: transformers has no base_model_tp_plan for it")
    seq = Shard(1)
    rep_out = seq if sp else Replicate()
    layers = decoder_layers(model)
    rules = {m.group(1): style for key, style in plan.items()   # sub-module of a layer -> plan style
             if (m := re.fullmatch(r"layers\.\*\.(.+)", key))}

    def style_of(name):
        return {"colwise": lambda: ColwiseParallel(),
                "rowwise": lambda: RowwiseParallel(output_layouts=rep_out),
                "colwise_gather_output": lambda: ColwiseParallel(output_layouts=Replicate()),
                "rowwise_split_input": lambda: RowwiseParallel(input_layouts=Replicate(), output_layouts=rep_out),
                }[name]()

    sharded, replicated = {}, {k: v for k, v in plan.items() if not re.fullmatch(r"layers\.\*\..+", k)}
    for layer in layers:
        mine = {sub: st for sub, st in rules.items()
                if st in TP_STYLES and _has(layer, sub) and isinstance(layer.get_submodule(sub), nn.Linear)}
        sharded.update(mine)
        lp = {sub: style_of(st) for sub, st in mine.items()}
        if sp:
            for n in _layer_norms(layer):
                lp[n] = SequenceParallel(use_local_output=True)
            for block, kw in (("self_attn", True), ("mlp", False)):
                if not hasattr(layer, block):
                    continue
                # a block whose output leaves through a rowwise layer is reduce-scattered back to
                # Shard(1) by it; a replicated block (e.g. MoE experts, left whole by this plan)
                # returns the whole sequence, which is cut back to this rank's Shard(1) (no comm)
                reduced = any(k.startswith(block + ".") and v in ("rowwise", "rowwise_split_input")
                              for k, v in mine.items())
                inp = ({"input_kwarg_layouts": {"hidden_states": seq},
                        "desired_input_kwarg_layouts": {"hidden_states": Replicate()}} if kw else
                       {"input_layouts": (seq,), "desired_input_layouts": (Replicate(),)})
                if reduced:
                    lp[block] = PrepareModuleInput(**inp, use_local_output=True)
                else:
                    lp[block] = PrepareModuleInputOutput(**inp, use_local_input=True, output_layouts=(Replicate(),),
                                                         desired_output_layouts=(seq,), use_local_output=True)
        parallelize_module(layer, mesh, lp)
    sp_norms = _layer_norms(layers[0]) if sp else []
    for sub, st in rules.items():
        if sub not in sharded:
            where = ("" if any(_has(layer, sub) for layer in layers) else
                     " (a parameter)" if any(_has_param(layer, sub) for layer in layers) else " (no such module)")
            replicated[f"layers.*.{sub}"] = st + where

    base = model.base_model
    top = {"embed_tokens": RowwiseParallel(input_layouts=Replicate(), output_layouts=rep_out)}
    if sp and hasattr(base, "norm"):
        top["norm"] = SequenceParallel(use_local_output=True)
    parallelize_module(base, mesh, top)
    head = model.get_output_embeddings()
    tied = head is not None and getattr(model.config, "tie_word_embeddings", False)
    if head is not None:
        parallelize_module(model, mesh, {"lm_head": ColwiseParallel(input_layouts=rep_out,
                                                                   output_layouts=Replicate())})
        if tied:  # keep sharing the (vocab-sharded) embedding weight
            model.lm_head.weight = base.embed_tokens.weight
    return {"sharded": sharded, "replicated": replicated, "sp_norms": sp_norms, "tied_lm_head": bool(tied)}


def _has(module, name) -> bool:
    try:
        module.get_submodule(name)
        return True
    except AttributeError:
        return False


def _has_param(module, name) -> bool:
    try:
        module.get_parameter(name)
        return True
    except AttributeError:
        return False


def shard_shapes(model) -> dict:
    """``{parameter name: (global shape, local shape)}`` of a TP model (DTensor params only)."""
    from torch.distributed.tensor import DTensor
    out = {}
    for n, p in model.named_parameters():
        if isinstance(p, DTensor):
            out[n] = (tuple(p.shape), tuple(p._local_tensor.shape))
    return out


# -- the tp and tp_sp scenarios ---------------------------------------------------------------
def setup_tp(model, mesh, precision, sp=False, **_):
    """tp: the architecture's ``base_model_tp_plan`` with ``parallelize_module`` (no SP).

    Per decoder layer: ``colwise`` -> ``ColwiseParallel()``, ``rowwise`` ->
    ``RowwiseParallel()`` (``colwise_gather_output`` / ``rowwise_split_input``, the fused-QKV
    styles, -> ``ColwiseParallel(output_layouts=Replicate())`` /
    ``RowwiseParallel(input_layouts=Replicate())``); every other entry and every norm stays
    replicated.  ``embed_tokens``: ``RowwiseParallel(input_layouts=Replicate())`` (vocabulary
    rows sharded, output all-reduced); ``lm_head``: ``ColwiseParallel(output_layouts=Replicate())``
    (vocabulary rows sharded, logits all-gathered whole); a tied head keeps sharing the
    embedding's shard.  Activations between blocks are whole (b, s, h) on every rank.
    Mixed precision: fp32 model, autocast around the forward.  ``position_ids`` are passed
    explicitly (``arange(s)``).  See :func:`apply_tp`.
    """
    plan = apply_tp(model, mesh, sp=sp)
    params = [p for p in model.parameters() if p.requires_grad]

    def forward(ids):
        pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        return model(input_ids=ids, labels=ids, position_ids=pos, use_cache=False).loss
    return DistRun(model, params, forward=forward, tracker="plain", autocast=precision == "mixed",
                meta={"tp_plan": plan})


def setup_tp_sp(model, mesh, precision, **_):
    """tp_sp: tp plus sequence parallelism (torchtitan's layout).

    As tp, plus: ``SequenceParallel()`` on every norm that is a direct child of a decoder
    layer and on the final norm; ``PrepareModuleInput`` ``Shard(1) -> Replicate()`` (an
    all-gather over the sequence) on the attention block (its ``hidden_states`` keyword) and on
    the MLP; ``rowwise`` layers ``RowwiseParallel(output_layouts=Shard(1))`` (reduce-scatter);
    ``embed_tokens`` ``RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1))``;
    ``lm_head`` ``ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate())`` (no
    loss parallelism: the logits are whole).  The residual stream and the norms' inputs and
    outputs are ``(b, s / W, h)``.
    """
    run = setup_tp(model, mesh, precision, sp=True)
    return run
