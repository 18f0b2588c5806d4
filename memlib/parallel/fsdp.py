"""FSDP2 (``fully_shard``, ZeRO-2/3): what a rank holds besides its shards, moment by moment (chapter 05).

Each decoder layer is one FSDP2 unit, and the root (embedding, final norm, ``lm_head``)
is another.  Between steps a rank holds ``⌈rows / dp⌉`` rows of every tensor.  During the
step PyTorch's ``FSDPParamGroup`` allocates, in the parameters' compute dtype ``c``
(bf16, also under ``MixedPrecisionPolicy(param_dtype=bf16)``):

* **all-gather buffer** (``fsdp_all_gather``): the flat ``padded`` output of a unit's
  all-gather.  In the forward a unit's buffer is kept until the next unit has copied its
  own out ("to overlap the next copy-out"), so around a layer's unshard two buffers are
  alive; the last one is freed when the root's forward ends (after the loss).  In the
  backward the previous layer is prefetched: its buffer waits until that layer's turn.
* **unsharded parameters** (``unsharded_params``): every parameter copied out whole.
  The root's stay from its forward to its backward (FSDP2 does not reshard the root after
  the forward); a layer's are freed after its forward with ``reshard_after_forward=True``
  (zero=3) and kept until its backward with ``False`` (zero=2); after its backward in both.
* **unsharded gradients** (``unsharded_grads``): a layer's whole gradients, in ``c``,
  until its post-backward hook copies them into the reduce-scatter input; the root's
  (``lm_head``, final norm, embedding) until the end of the backward.
* **reduce-scatter input** (``fsdp_reduce_scatter``): ``padded`` elements in the reduce
  dtype (fp32 under mixed precision, bf16 otherwise); the previous unit's is released
  just before the next one is allocated (one in flight); its output is the new gradient
  shard.

:func:`fsdp_marks` adds these to the step timeline and inserts FSDP2's own moments: a
layer's unshard (two all-gather buffers, the new layer copied out), the end of a layer's
backward (all its gradients whole) and its reduce-scatter, and the root's at the end.
"""
from __future__ import annotations

from dataclasses import dataclass

from .timeline import RankMark, from_step_mark


@dataclass(frozen=True)
class FsdpUnits:
    """Bytes of each FSDP2 unit of a rank (layers indexed by layer number; chapter 05)."""

    gathered: dict      # layer -> padded × c (all-gather buffer = unsharded parameters)
    reduce: dict        # layer -> padded × reduce dtype (reduce-scatter input)
    grad_shard: dict    # layer -> held × gradient dtype (the reduce-scatter output, kept)
    grads_whole: dict   # layer -> numel × c (the layer's unsharded gradients)
    root_gathered: int
    root_reduce: int
    root_grad_shard: int
    root_grads_whole: int
    resharded: bool     # reshard_after_forward (zero=3)


def fsdp_units(per: dict, root, kinds, first: int, end: int, c: int, reduce_bytes: int, grad_bytes: int,
               resharded: bool) -> FsdpUnits:
    """The per-unit sizes of a rank: ``per`` maps a layer kind to one layer's tensors,
    ``root`` lists the root unit's, ``kinds[i]`` is layer ``i``'s kind
    (:func:`memlib.parallel.state.split_tensors`)."""
    one = {k: (sum(t.padded for t in ts) * c, sum(t.padded for t in ts) * reduce_bytes,
               sum(t.held for t in ts) * grad_bytes, sum(t.numel for t in ts) * c) for k, ts in per.items()}
    layers = {i: one[kinds[i]] for i in range(first, end)}
    return FsdpUnits(*({i: v[k] for i, v in layers.items()} for k in range(4)),
                     sum(t.padded for t in root) * c, sum(t.padded for t in root) * reduce_bytes,
                     sum(t.held for t in root) * grad_bytes, sum(t.numel for t in root) * c, resharded)


@dataclass(frozen=True)
class LayerFacts:
    """What the step timeline knows of a layer kind, which FSDP2's own moments need (bytes)."""

    kept: dict          # moe -> what one layer keeps for its backward
    full: dict          # moe -> everything one layer saves while it runs (its forward transient)
    head_grads: int     # gradients of lm_head and the final norm, alive through the layers' backward
    flowing: object     # the gradient passed from layer to layer
    hidden: object = 0  # hidden states alive between two layers of the forward (the layer's input, the embedding output)


def fsdp_marks(marks, u: FsdpUnits, first: int, end: int, moe_layers, facts: LayerFacts,
               bench_holds_unsharded_grads: bool = False) -> list[RankMark]:
    """The step timeline's ``marks`` (one rank, FSDP2-sharded inputs) with FSDP2's buffers
    added and its own moments inserted (module docstring, chapter 05).

    ``bench_holds_unsharded_grads``: the bench's instrumentation of FSDP2's post-backward
    keeps a reference to the unsharded gradients through the reduce-scatter, so the new
    gradient shard is allocated before they are freed (a setting of the bench only).
    """
    last = end - 1
    layers = range(first, end)
    has_root = bool(u.root_gathered)

    prefix, acc = {first - 1: 0}, 0
    for j in layers:
        acc += u.gathered[j]
        prefix[j] = acc                      # gathered parameters of layers first..j

    def up(lo, hi):                          # gathered parameters of layers lo..hi
        return prefix[hi] - prefix[lo - 1] if hi >= lo else 0

    suffix, acc = {}, 0
    for j in reversed(layers):
        suffix[j] = acc                      # shards of the layers after j
        acc += u.grad_shard[j]
    suffix[first - 1] = acc

    def shards_after(i):                     # gradient shards of the layers already reduced
        return suffix[i]

    def layer_params(i):                     # layer parameters gathered while layer i runs
        return u.gathered[i] if u.resharded else up(first, i)

    all_layers = 0 if u.resharded else up(first, last)
    out: list[RankMark] = []
    run_start = first
    for mk in marks:
        ph, lab, i = mk.phase, mk.label, mk.layer
        if ph == "forward" and i is not None:
            m = moe_layers[i]
            between = mk.transient - facts.full[m] + facts.hidden   # alive between layers (hidden states, a mask)
            for j in sorted({run_start, min(run_start + 1, i), i}):
                prev = u.root_gathered if j == first else u.gathered[j - 1]
                out.append(RankMark("forward", f"layer {j} unshard", {
                    "weights": mk.weights, "optimizer": mk.optimizer, "gradients": mk.gradients,
                    "activations": mk.activations - (i - j) * facts.kept[m], "transient": between,
                    "unsharded_params": u.root_gathered + layer_params(j),
                    "fsdp_all_gather": prev + u.gathered[j]}, j, "unshard"))
            run_start = i + 1
            out.append(from_step_mark(mk, {"unsharded_params": u.root_gathered + layer_params(i),
                                           "fsdp_all_gather": u.gathered[i]}))
        elif ph == "forward":
            extra = {"unsharded_params": u.root_gathered + all_layers}
            if lab == "loss":                 # the last layer's buffer until the root's forward ends
                extra["fsdp_all_gather"] = u.gathered[last]
            out.append(from_step_mark(mk, extra))
        elif ph == "backward" and i is None and lab != "embedding":
            # the loss and lm_head (or the incoming gradient): the root's pre-backward
            # prefetches the last layer (zero=3; under zero=2 it is still gathered)
            extra = {"unsharded_params": u.root_gathered + all_layers, "unsharded_grads": mk.gradients,
                     "fsdp_all_gather": u.gathered[last] if u.resharded else 0}
            out.append(from_step_mark(mk, extra, gradients=0))
        elif ph == "backward" and i is not None:
            m = moe_layers[i]
            g = shards_after(i)
            prefetch = u.gathered[i - 1] if u.resharded and i > first else 0
            rs_prev = u.reduce[i + 1] if i < last else 0
            out.append(from_step_mark(mk, {
                "unsharded_params": u.root_gathered + layer_params(i), "fsdp_all_gather": prefetch,
                "fsdp_reduce_scatter": rs_prev, "unsharded_grads": mk.gradients - g}, gradients=g))
            if mk.part != "attention":
                continue
            common = {"weights": mk.weights, "optimizer": mk.optimizer,
                      "activations": mk.activations - facts.kept[m], "transient": facts.flowing,
                      "fsdp_all_gather": prefetch}
            ug = facts.head_grads + u.grads_whole[i]
            # the end of the layer's backward: all its gradients whole, before its post-backward hook
            out.append(RankMark("backward", f"layer {i} end", dict(
                common, gradients=g, unsharded_grads=ug, unsharded_params=u.root_gathered + layer_params(i),
                fsdp_reduce_scatter=rs_prev), i, "end"))
            # its post-backward: parameters resharded, the previous reduce-scatter input released,
            # this layer's allocated while its whole gradients are copied in
            out.append(RankMark("backward", f"layer {i} reduce-scatter", dict(
                common, gradients=g + (u.grad_shard[i] if bench_holds_unsharded_grads else 0), unsharded_grads=ug,
                unsharded_params=u.root_gathered + (0 if u.resharded else up(first, i - 1)),
                fsdp_reduce_scatter=u.reduce[i]), i, "reduce-scatter"))
        elif ph == "backward":                # the embedding's backward
            g = shards_after(first - 1)
            out.append(from_step_mark(mk, {"unsharded_params": u.root_gathered,
                                           "fsdp_reduce_scatter": u.reduce[first],
                                           "unsharded_grads": mk.gradients - g}, gradients=g))
        elif ph == "step":
            out.append(from_step_mark(mk, gradients=shards_after(first - 1) + u.root_grad_shard))
        else:
            out.append(from_step_mark(mk))
    if has_root:
        # the root's post-backward, when the whole backward is done: its gradients whole,
        # its reduce-scatter input, its parameters resharded, the first layer's input released
        k = max(n for n, mk in enumerate(out) if mk.phase == "backward")
        ref = out[k].parts
        g = shards_after(first - 1)
        out.insert(k + 1, RankMark("backward", "root reduce-scatter", {
            "weights": ref["weights"], "optimizer": ref["optimizer"],
            "gradients": g + (u.root_grad_shard if bench_holds_unsharded_grads else 0),
            "unsharded_grads": u.root_grads_whole, "fsdp_reduce_scatter": u.root_reduce,
            "activations": ref["activations"], "transient": 0}))
    return out
