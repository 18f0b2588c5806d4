"""Every parameter tensor of a model, with the facts a parallel plan needs (chapter 05).

A parallel plan splits *tensors*, not parameter counts: FSDP2 shards each tensor along
its first dimension (padded to a multiple of the ranks), tensor parallelism splits a
projection's rows or columns and leaves norms whole, ZeroRedundancyOptimizer hands whole
tensors to ranks.  :func:`param_table` lists them as :class:`Param` records, in the
order a transformers model registers them (the order AdamW walks them):

* ``unit``: ``"layer"`` (a decoder layer, an FSDP2 unit of its own) or ``"root"`` (the
  embedding, the final norm, ``lm_head``: the root FSDP2 unit);
* ``rows`` × ``cols``: the first dimension and the product of the others, as PyTorch
  stores it (``nn.Linear(in, out).weight`` is ``out × in``; MoE experts are one
  ``E × 2I × H`` and one ``E × H × I`` tensor);
* ``tp``: how transformers' tensor-parallel plan splits it (:data:`TP_STYLES`);
* ``part``: when its gradient appears in a layer's backward (:data:`PARTS`).

``Σ rows·cols`` equals :func:`memlib.params.total_params` (tied weights once).
"""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

from ..spec import ModelSpec

#: How tensor parallelism treats a tensor (transformers' ``base_model_tp_plan`` as PyTorch
#: applies it, chapter 05):
#:
#: * ``col``: ``ColwiseParallel``, rows (output features) split; its bias split too;
#: * ``kv``: a ``col`` key/value projection; with ``tp > n_kv_heads`` each rank keeps a
#:   copy of one whole KV head (Megatron-LM's rule; transformers' plan cannot split a
#:   head and fails there);
#: * ``row``: ``RowwiseParallel``, columns (input features) split; its bias whole;
#: * ``vocab``: the embedding and ``lm_head``, vocabulary rows split;
#: * ``gather``: a fused projection (``qkv``, ``gate_up``) whose rows are split but whose
#:   output is all-gathered whole (``colwise_gather_output``): its activations stay whole;
#: * ``rep``: replicated: norms, q/k norms, routers, MoE experts (transformers' plan leaves
#:   the fused 3-D expert tensors whole; expert parallelism splits them), MLA's latent
#:   down-projections and their norms, learned position tables.
TP_STYLES = ("col", "kv", "row", "vocab", "gather", "rep")

#: When a layer tensor's gradient exists during the layer's backward (chapter 04's
#: ``params_before_mlp`` / ``params_before_attention``): ``mlp_first`` at the MLP's peak
#: already; ``mlp`` and ``o`` by the attention core; ``attn`` and ``norm_in`` only at the
#: end of the layer.  Root tensors: ``embed``, ``head``, ``final_norm``.
PARTS = ("mlp_first", "mlp", "o", "attn", "norm_in", "embed", "head", "final_norm")


class Param(NamedTuple):
    """One parameter tensor: see the module docstring (chapter 05)."""

    name: str
    unit: str            # "layer" or "root"
    moe: bool            # for a layer tensor: does it belong to an MoE layer
    rows: int
    cols: int
    tp: str
    part: str

    @property
    def numel(self) -> int:
        return self.rows * self.cols


def _norm(spec: ModelSpec, name: str, width: int, part: str, unit="layer", moe=False) -> list[Param]:
    out = [Param(name, unit, moe, width, 1, "rep", part)]
    if spec.norm == "layer":
        out.append(Param(name + ".bias", unit, moe, width, 1, "rep", part))
    return out


def _linear(name, i, o, tp, part, bias=False, moe=False, bias_tp=None) -> list[Param]:
    out = [Param(name, "layer", moe, o, i, tp, part)]
    if bias:
        out.append(Param(name + ".bias", "layer", moe, o, 1, bias_tp or ("rep" if tp == "row" else tp), part))
    return out


def _attention(spec: ModelSpec) -> list[Param]:
    H = spec.hidden_size
    if spec.is_mla:
        nh = spec.num_heads
        q_dim = nh * (spec.qk_nope_head_dim + spec.qk_rope_head_dim)
        out = []
        if spec.q_lora_rank:
            out += _linear("q_a", H, spec.q_lora_rank, "rep", "attn", spec.qkv_bias)
            out += _norm(spec, "q_a_norm", spec.q_lora_rank, "attn")
            out += _linear("q_b", spec.q_lora_rank, q_dim, "col", "attn")
        else:
            out += _linear("q", H, q_dim, "col", "attn")
        out += _linear("kv_a", H, spec.kv_lora_rank + spec.qk_rope_head_dim, "rep", "attn", spec.qkv_bias)
        out += _norm(spec, "kv_a_norm", spec.kv_lora_rank, "attn")
        out += _linear("kv_b", spec.kv_lora_rank, nh * (spec.qk_nope_head_dim + spec.v_head_dim), "col", "attn")
        out += _linear("o", nh * spec.v_head_dim, H, "row", "o", spec.o_bias)
        return out
    q, kv = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    if spec.fused_qkv:
        out = _linear("qkv", H, q + 2 * kv, "gather", "attn", spec.qkv_bias)
    else:
        out = (_linear("q", H, q, "col", "attn", spec.qkv_bias) + _linear("k", H, kv, "kv", "attn", spec.qkv_bias)
               + _linear("v", H, kv, "kv", "attn", spec.qkv_bias))
    # a fused qkv's output is gathered whole: o_proj then splits its replicated input itself
    out += _linear("o", q, H, "row", "o", spec.o_bias)
    if spec.qk_norm:
        out += [Param("q_norm", "layer", False, spec.head_dim, 1, "rep", "attn"),
                Param("k_norm", "layer", False, spec.head_dim, 1, "rep", "attn")]
    return out


def _mlp(spec: ModelSpec, prefix: str, width: int, moe: bool, last_part: str) -> list[Param]:
    H, b = spec.hidden_size, spec.mlp_bias and not prefix
    if not spec.gated_mlp:
        return (_linear(prefix + "up", H, width, "col", "mlp", b, moe)
                + _linear(prefix + "down", width, H, "row", last_part, b, moe))
    if spec.fused_gate_up:
        return (_linear(prefix + "gate_up", H, 2 * width, "gather", "mlp", b, moe)
                + _linear(prefix + "down", width, H, "row", last_part, b, moe))
    return (_linear(prefix + "gate", H, width, "col", "mlp", b, moe) + _linear(prefix + "up", H, width, "col", "mlp", b, moe)
            + _linear(prefix + "down", width, H, "row", last_part, b, moe))


def _layer(spec: ModelSpec, moe: bool) -> list[Param]:
    H = spec.hidden_size
    out = [p._replace(moe=moe) for p in _attention(spec)]
    if moe:
        E, I = spec.num_experts, spec.moe_intermediate_size
        out.append(Param("router", "layer", True, E, H, "rep", "mlp"))
        out.append(Param("experts.gate_up", "layer", True, E, (2 if spec.gated_mlp else 1) * I * H, "rep", "mlp"))
        out.append(Param("experts.down", "layer", True, E, H * I, "rep", "mlp"))
        if spec.shared_intermediate_size:
            out += _mlp(spec, "shared.", spec.shared_intermediate_size, True, "mlp_first")
            out = [p._replace(part="mlp_first") if p.name.startswith("shared.") else p for p in out]
    else:
        out += _mlp(spec, "", spec.intermediate_size, False, "mlp_first")
    # norms: a pre-norm layer's input norm is differentiated last; Gemma 2's post-MLP norm
    # (and a post-norm layer's second norm) before the MLP's peak; the rest with the MLP half
    n = spec.norms_per_layer
    if spec.parallel_attn:
        parts = ["norm_in"] * n
    elif not spec.pre_norm:
        parts = ["o", "mlp_first"][:n]
    elif n == 4:
        parts = ["norm_in", "o", "mlp", "mlp_first"]
    else:
        parts = ["norm_in", "mlp"][:n]
    names = ["input_norm", "post_attn_norm", "pre_mlp_norm", "post_mlp_norm"] if n == 4 else \
        ["input_norm", "post_attn_norm"][:n]
    for name, part in zip(names, parts):
        out += _norm(spec, name, H, part, moe=moe)
    return out


@lru_cache(maxsize=256)
def param_table(spec: ModelSpec) -> tuple[Param, ...]:
    """Every parameter tensor of ``spec`` as :class:`Param` records, in registration order
    (chapter 05): embedding (and position table, OPT's ``project_in``), each layer, final
    norm, ``lm_head`` (absent when tied), OPT's ``project_out``.  Layer tensors are listed
    once per layer."""
    H, V = spec.hidden_size, spec.vocab_size
    out = [Param("embed", "root", False, V, spec.embed_dim, "vocab", "embed")]
    if spec.learned_positions:
        out.append(Param("positions", "root", False, spec.learned_positions, H, "rep", "embed"))
    if spec.embed_dim != H:
        out.append(Param("project_in", "root", False, H, spec.embed_dim, "rep", "embed"))
    kinds = {m: tuple(_layer(spec, m)) for m in set(spec.moe_layers)}
    for m in spec.moe_layers:
        out += kinds[m]
    if spec.final_norm:
        out += _norm(spec, "final_norm", H, "final_norm", unit="root")
    if not spec.tie_word_embeddings:
        out.append(Param("lm_head", "root", False, V, spec.embed_dim, "vocab", "head"))
    if spec.embed_dim != H:
        out.append(Param("project_out", "root", False, spec.embed_dim, H, "rep", "head"))
    return tuple(out)


@lru_cache(maxsize=256)
def layer_table(spec: ModelSpec, moe: bool) -> tuple[Param, ...]:
    """The tensors of one decoder layer of kind ``moe`` (chapter 05)."""
    return tuple(_layer(spec, moe))


def root_table(spec: ModelSpec) -> tuple[Param, ...]:
    """The tensors outside the decoder layers: the root FSDP2 unit (chapter 05)."""
    return tuple(p for p in param_table(spec) if p.unit == "root")


def ceil_div(a: int, b: int) -> int:
    """``⌈a / b⌉``: the rows rank 0 holds when ``b`` ranks split ``a`` rows (``torch.chunk``)."""
    return -(-a // b)


def tp_local(spec: ModelSpec, p: Param, tp: int) -> tuple[int, int]:
    """``(rows, cols)`` rank 0 holds of tensor ``p`` under tensor parallelism ``tp`` (chapter 05).

    ``col``/``vocab``/``gather``: ``⌈rows / tp⌉`` rows; ``row``: ``⌈cols / tp⌉`` columns;
    ``kv``: ``n_kv/tp`` heads, or one whole head copied when ``tp > n_kv``; ``rep``: whole.
    """
    if tp == 1 or p.tp == "rep":
        return p.rows, p.cols
    if p.tp == "row":
        return p.rows, ceil_div(p.cols, tp)
    if p.tp == "kv":
        heads = max(spec.num_kv_heads // tp, 1)
        return heads * spec.head_dim, p.cols
    return ceil_div(p.rows, tp), p.cols
