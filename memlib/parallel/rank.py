"""One rank's training step under a parallel plan (chapter 05).

:func:`rank_memory` turns chapter 04's step into one rank's step and runs the same
timeline (:func:`memlib.training.step_timeline`):

1. **the rank's share of the work**: ``batch_size`` sequences (per rank, per micro-batch)
   of ``seq_len / cp`` tokens, over the layers of its pipeline stage;
2. **what it saves**: each layer's :class:`~memlib.activations.Saved` records cut by the
   tensor/sequence-parallel rules (:mod:`memlib.parallel.activations`);
3. **its model state**: the tensors it holds (:mod:`memlib.parallel.state`) in the
   precision's dtypes: parameters, gradients (appearing part by part in each layer's
   backward, as on one GPU), optimizer state, and its own optimizer-step temporaries;
4. **what the plan adds at each moment**: FSDP2's gathered parameters and buffers
   (:mod:`memlib.parallel.fsdp`), DDP's buckets, the pipeline's other micro-batches and
   receive buffers (:mod:`memlib.parallel.pipeline`), ring attention's K/V blocks
   (:mod:`memlib.parallel.context`), the all-to-all dispatch buffers of expert
   parallelism (:mod:`memlib.parallel.experts`);
5. **offload**: what moves to the host leaves the device and is reported as host memory
   (``meta["host"]``).

Precision: ``"bf16"`` keeps everything in bf16.  ``"mixed"`` keeps fp32 parameters,
gradients and optimizer state; without FSDP2 the forward runs under autocast (chapter 04:
bf16 weight copies cached); with FSDP2 it runs FSDP2's ``MixedPrecisionPolicy(param_dtype=
bf16, reduce_dtype=fp32)``: the gathered parameters are bf16, activations are those of a
bf16 model, and gradients are reduced in fp32.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ..activations import model_tensors, total_bytes
from ..breakdown import Breakdown
from ..scenario import DEFAULT_OPTIMIZER_IMPL, attention_used, check_seq_len
from ..spec import ModelSpec, load_spec
from ..symbolic import memo
from ..training import Stage, StepInputs, kept_per_layer, mlp_backward_extra, prepare_step, step_timeline
from ..validation import choice, positive_int
from .activations import sp_model_records, tp_records
from .fsdp import LayerFacts, fsdp_marks, fsdp_units
from .plan import Plan
from .state import held_elements, optimizer_state, split_tensors, stage_layers
from .timeline import RankMark, from_step_mark, interpolate_layers, summarize


@dataclass(frozen=True)
class BenchSettings:
    """Settings of the bench's CPU runs (set by :mod:`memlib.measure.compare` only).

    ``cpu``: dropout masks have the activation's dtype; ``holds_unsharded_grads``: the
    bench's FSDP2 instrumentation keeps the unsharded gradients alive through the
    reduce-scatter (:func:`memlib.parallel.fsdp.fsdp_marks`).
    """

    cpu: bool = False
    holds_unsharded_grads: bool = False


_ATTN = ("q", "k", "v", "o", "qkv", "q_a", "q_b", "kv_a", "kv_b")
_MLP = ("gate", "up", "down", "gate_up", "router")


def _is_cached(name: str, block: str) -> bool:
    """Whether autocast caches a bf16 copy of this tensor (every Linear weight and bias of
    ``block``, not norms, not routed experts; chapter 04)."""
    base = name[:-5] if name.endswith(".bias") else name
    if block == "attention":
        return base in _ATTN
    return base in _MLP or base.startswith("shared.")


def rank_memory(model, batch_size, seq_len, plan: Plan, precision: str = "bf16", optimizer: str = "adamw",
                recompute: str = "none", attention: str = "sdpa", optimizer_impl: str = DEFAULT_OPTIMIZER_IMPL,
                stage: int = 0, grad_accum: int = 1, rank: int = 0, _bench: BenchSettings | None = None) -> Breakdown:
    """Peak memory of rank 0 of pipeline stage ``stage`` under ``plan`` (chapter 05).

    ``rank`` picks another data-parallel rank, which differs from rank 0 only under ZeRO-1
    (its own whole tensors' optimizer state).

    ``peak = max over the step's moments of Σ components`` (module docstring for what is
    counted); ``batch_size`` is per rank and per micro-batch.  Returns the one Breakdown
    type: components at the peak, each phase's peak, ``peak_phase``, ``peak_at`` and
    ``meta`` (``marks``, ``host`` for offloaded bytes, the plan).
    """
    bench = _bench or BenchSettings()
    spec = load_spec(model)
    plan = plan.check(spec)
    batch_size = positive_int("batch_size", batch_size)
    seq_len = check_seq_len(spec, seq_len)
    if seq_len % plan.cp:
        raise ValueError(f"seq_len: {seq_len} is not divisible by cp={plan.cp}")
    if plan.cp > 1 and attention_used(spec, attention) != "sdpa":
        raise ValueError("attention: context parallelism runs ring (flash) attention; use attention='sdpa'")
    stage = int(stage)
    if not 0 <= stage < plan.pp:
        raise ValueError(f"stage: must be 0..{plan.pp - 1} for pp={plan.pp}, got {stage}")
    choice("precision", precision, ("bf16", "mixed"))
    mixed = precision == "mixed"
    fsdp = plan.fsdp
    first, end = stage_layers(spec, plan.pp, stage)
    has_emb, has_head = stage == 0, stage == plan.pp - 1
    st = None if plan.pp == 1 else Stage(first, end, has_emb, has_head)
    act_precision = "bf16" if fsdp else precision
    spec, sc, x0 = _prepared(spec, batch_size, seq_len // plan.cp, act_precision, optimizer, recompute, attention,
                             grad_accum, st, bench.cpu, optimizer_impl)
    m = 4 if mixed else 2                    # parameters, gradients, optimizer state
    c = 2                                    # what FSDP2 gathers (bf16 under both recipes)
    tp, sp = plan.tp, plan.sp
    x = _inputs(spec, sc, x0, plan, m, c, fsdp, mixed, first, end, has_emb, has_head, optimizer,
                optimizer_impl, rank, stage)
    marks, saved = step_timeline(spec, sc, x, recompute, grad_accum)
    kept = {k: kept_per_layer(sc, spec, d, recompute) for k, d in x.layers.items()}
    full = {k: total_bytes(d) for k, d in x.layers.items()}
    units = _units(spec, tp, plan.ep, plan.dp, plan.pp, stage, c, 4 if mixed else 2, m, plan.resharded) if fsdp else None

    def decorate(step_marks):
        if fsdp:
            # between two layers of the forward: the next layer's input and, on the stage that embeds,
            # the embedding's output (the model's forward holds it to the end)
            hidden = sc.residual_bytes * sc.tokens * spec.hidden_size * (2 if has_emb else 1)
            facts = LayerFacts(kept, full, x.grads_head if has_head else 0, x.flowing, hidden)
            runs = _runs_of(spec.moe_layers, first, end)
            step_marks = interpolate_layers(step_marks, {j for a, b in runs for j in (a + 1, b - 2)})
            out = fsdp_marks(step_marks, units, first, end, spec.moe_layers, facts, bench.holds_unsharded_grads)
        else:
            out = [from_step_mark(mk) for mk in step_marks]
        if tp > 1 and not fsdp and has_emb and has_head and spec.tie_word_embeddings:
            # a tied vocabulary-parallel embedding: DTensor's embedding_dense_backward builds the whole
            # vocabulary's gradient; this rank's rows are copied out of it and added to lm_head's
            # gradient (the step timeline counts those two shard-sized tensors)
            extra = spec.vocab_size * spec.embed_dim * m
            out = [mk._replace(parts=dict(mk.parts, transient=mk.parts["transient"] + extra))
                   if mk.label == "embedding" else mk for mk in out]
        if plan.dp > 1 and plan.zero < 2:      # DDP's buckets: a flat copy of every gradient, always allocated
            buckets = held_elements(spec, tp, plan.ep, 1, plan.pp, stage)[1] * m
            out = [mk._replace(parts=dict(mk.parts, ddp_buckets=buckets)) for mk in out]
        return out

    rmarks = decorate(marks)
    if plan.pp > 1:
        from .pipeline import pipeline_marks, receive_buffers, stage_output_bytes
        if fsdp:       # later micro-batches: every gradient shard exists already
            total_g = sum(units.grad_shard.values()) + units.root_grad_shard
            again = [mk._replace(parts=dict(mk.parts, gradients=total_g)) if mk.phase != "step" else mk
                     for mk in rmarks]
        else:
            again = decorate(step_timeline(spec, sc, x, recompute, max(grad_accum, 2))[0])
        output = stage_output_bytes(spec, sc, has_head)
        kept_cache = x.autocast_cache if recompute != "full" else x.cache_head
        rmarks = pipeline_marks(rmarks, again, saved + kept_cache + output, output,
                                receive_buffers(spec, sc, plan.pp, plan.microbatches, stage), plan.schedule,
                                plan.pp, plan.microbatches, stage)
    if plan.cp > 1:
        from .context import cp_marks
        rmarks = cp_marks(spec, sc, plan, rmarks, seq_len)
    if plan.ep > 1:
        from .experts import ep_marks
        rmarks = ep_marks(spec, sc, plan, rmarks)
    host = {}
    if plan.offload != "none":
        from .offload import offload_marks
        rmarks, host = offload_marks(rmarks, plan.offload)
    meta = {"model": spec.name, "plan": plan, "plan_label": plan.label(), "stage": stage,
            "layers": (first, end), "batch_size": batch_size, "seq_len": seq_len, "tokens_per_rank": sc.tokens,
            "precision": precision, "optimizer": optimizer, "optimizer_impl": optimizer_impl,
            "recompute": recompute, "attention": attention_used(spec, attention), "world_size": plan.world_size,
            "host": host, "activations_saved": saved,
            "held_params": held_elements(spec, tp, plan.ep, plan.dp if fsdp else 1, plan.pp, stage)[0]}
    title = (f"{spec.name}, {plan.label()}, rank {rank}{f' of stage {stage}' if plan.pp > 1 else ''}: "
             f"b={batch_size} s={seq_len} {precision}")
    return summarize(rmarks, title, meta, label=f"stage {stage}" if plan.pp > 1 else f"rank {rank}")


def _inputs(spec: ModelSpec, sc, x0: StepInputs, plan: Plan, m: int, c: int, fsdp: bool, mixed: bool,
            first: int, end: int, has_emb: bool, has_head: bool, optimizer: str, optimizer_impl: str,
            rank: int = 0, stage: int = 0) -> StepInputs:
    """One rank's :class:`StepInputs`: its tensors' bytes, its saved records (module docstring)."""
    tp, sp = plan.tp, plan.sp
    tied_here = spec.tie_word_embeddings and has_emb and has_head
    layer_bytes = c if fsdp else m          # a layer's gradients while it is differentiated
    kinds, root = split_tensors(spec, tp, plan.ep, plan.dp if fsdp else 1, plan.pp, stage)
    per = {moe: kinds.get(moe, ()) for moe in x0.layers}      # one layer of each kind: identical layers hold the same
    grads_per_layer = {moe: sum(t.held for t in ts) * m for moe, ts in per.items()}
    before_mlp = {moe: sum(t.numel for t in ts if t.p.part == "mlp_first") * layer_bytes for moe, ts in per.items()}
    before_attn = {moe: sum(t.numel for t in ts if t.p.part in ("mlp_first", "mlp", "o")) * layer_bytes
                   for moe, ts in per.items()}
    mlp_weight = {moe: max((t.numel for t in ts if t.p.part in ("mlp_first", "mlp") and t.cols > 1
                            and t.p.name != "router"), default=0) * layer_bytes for moe, ts in per.items()}
    emb_matrix = next((t for t in root if t.p.name == "embed"), None)
    tied = emb_matrix.numel * layer_bytes if (tied_here and emb_matrix) else 0
    head = sum(t.numel for t in root if t.p.part in ("head", "final_norm")) * layer_bytes + tied
    emb = 0
    for t in root:
        if t.p.part != "embed":
            continue
        n = t.numel
        if t.p.name == "embed" and tp > 1 and not fsdp and not tied_here:
            # DTensor's embedding_dense_backward builds the whole vocabulary's gradient on every rank
            n = t.p.rows * t.p.cols
        emb += n * layer_bytes
    emb -= tied
    # autocast's bf16 copies (mixed precision without FSDP2): of the rank's own matmul weights
    if mixed and not fsdp and spec.autocast_caches_weights:
        cache_attn = {moe: 2 * sum(t.numel for t in ts if _is_cached(t.p.name, "attention")) for moe, ts in per.items()}
        cache_mlp = {moe: 2 * sum(t.numel for t in ts if _is_cached(t.p.name, "mlp")) for moe, ts in per.items()}
    else:
        cache_attn = {moe: 0 for moe in per}
        cache_mlp = {moe: 0 for moe in per}
    head_t = next((t for t in root if t.p.part == "head" and t.p.name == "lm_head"), None)
    if head_t is None and tied_here:
        head_t = emb_matrix
    cache_head = 2 * head_t.numel if (mixed and not fsdp and has_head and head_t is not None) else 0
    cache = cache_head + sum(cache_attn[spec.moe_layers[i]] + cache_mlp[spec.moe_layers[i]] for i in range(first, end))
    # the optimizer: ZeRO-1 keeps state for this rank's whole tensors only
    opt, step_extra = optimizer_state(spec, tp, plan.ep, plan.dp if fsdp else 1, plan.pp, stage,
                                      optimizer, optimizer_impl, m, plan.dp if plan.zero == 1 else 1, rank)
    layers, model_level, flowing, mlp_extra = _records(spec, sc, tp, sp)
    return StepInputs(
        weights=held_elements(spec, tp, plan.ep, plan.dp if fsdp else 1, plan.pp, stage)[0] * m,
        optimizer=opt,
        grads_head=head if has_head else 0, grads_per_layer=grads_per_layer, grads_before_mlp=before_mlp,
        grads_before_attention=before_attn, mlp_weight_grad=mlp_weight, grads_embedding=emb if has_emb else 0, grads_tied=tied,
        autocast_cache=cache, cache_attn=cache_attn, cache_mlp=cache_mlp, cache_head=cache_head,
        step_extra=step_extra, layers=layers, backward_mlp_extra=mlp_extra,
        stage=x0.stage, model_level=model_level, flowing=flowing)


def _runs_of(flags, first: int, end: int) -> list[tuple[int, int]]:
    """``[(a, b), ...]``: the runs of identical layers among layers ``[first, end)``."""
    runs, a = [], first
    for i in range(first + 1, end + 1):
        if i == end or flags[i] != flags[a]:
            runs.append((a, i))
            a = i
    return runs


@lru_cache(maxsize=512)
def _units(spec: ModelSpec, tp: int, ep: int, dp: int, pp: int, stage: int, c: int, reduce_bytes: int,
           grad_bytes: int, resharded: bool):
    """FSDP2's unit sizes of a rank (cached: every layout of the planner with these shards shares them)."""
    first, end = stage_layers(spec, pp, stage)
    per, root = split_tensors(spec, tp, ep, dp, pp, stage)
    return fsdp_units(per, root, spec.moe_layers, first, end, c, reduce_bytes, grad_bytes, resharded)


@memo(maxsize=256)
def _prepared(spec: ModelSpec, batch_size: int, seq_len: int, precision: str, optimizer: str, recompute: str,
              attention: str, grad_accum: int, stage, bench_cpu: bool, optimizer_impl: str):
    """Chapter 04's :func:`memlib.training.prepare_step` for one micro-batch of a rank (cached;
    its result is only read)."""
    return prepare_step(spec, batch_size, seq_len, precision, optimizer, recompute, attention, grad_accum, stage,
                        bench_cpu, optimizer_impl)


@memo(maxsize=256)
def _records(spec: ModelSpec, sc, tp: int, sp: bool):
    """``(layers, model_level, flowing, mlp_extra)``: one rank's saved records per layer kind,
    those outside the layers, the gradient passed between layers and the MLP's backward
    extra, under ``tp``/``sp`` (:mod:`memlib.parallel.activations`)."""
    from ..activations import layer_tensors
    kinds = set(spec.moe_layers)
    layers = {moe: tp_records(spec, layer_tensors(spec, sc, moe=moe), tp, sp, moe=moe, tokens=sc.tokens)
              for moe in kinds}
    model_level = model_tensors(spec, sc)
    if sp:
        model_level = sp_model_records(model_level, tp)
    flowing = sc.residual_bytes * sc.tokens * spec.hidden_size
    if sp:
        flowing = -(-flowing // tp)
    mlp_split = tp if not spec.fused_gate_up else 1
    mlp_extra = {moe: (mlp_backward_extra(spec, sc, moe) if moe else -(-mlp_backward_extra(spec, sc, moe) // mlp_split))
                 for moe in layers}
    return layers, model_level, flowing, mlp_extra
