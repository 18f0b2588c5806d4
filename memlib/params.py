"""Parameter counting from a config, component by component (chapter 01).

Per decoder layer with hidden size ``H``, ``n_h`` query heads and ``n_kv`` key/value
heads of size ``d``::

    attention = H·n_h·d (q) + 2·H·n_kv·d (k, v) + n_h·d·H (o)   [+ biases, + q/k norms]
    gated MLP = 3·H·I            (gate, up, down)               [+ biases]
    plain MLP = 2·H·I                                           [+ biases]
    MoE layer = E·H (router) + E·3·H·I_moe (experts) + 3·H·I_shared (shared experts)
    norms     = norms_per_layer · H   (RMSNorm; LayerNorm has a bias too: 2·H)

plus the token embedding ``V·H`` (and a learned position table for GPT-2/OPT), the
final norm, and ``lm_head = V·H`` unless it is tied to the embedding.  Tied weights are
counted once, as ``sum(p.numel() for p in model.parameters())`` does.
"""
from __future__ import annotations

from functools import lru_cache

from .breakdown import Breakdown
from .spec import ModelSpec, load_spec


def norm_params(spec: ModelSpec, width: int) -> int:
    """Parameters of one norm over `width` values: `width` (RMSNorm), `2·width` (LayerNorm's bias too)."""
    return width * (2 if spec.norm == "layer" else 1)


def attention_params(spec: ModelSpec) -> int:
    """Parameters of one attention block (chapter 01 §attention; MLA in chapter 02)."""
    H = spec.hidden_size
    if spec.is_mla:
        q_dim = spec.num_heads * (spec.qk_nope_head_dim + spec.qk_rope_head_dim)
        if spec.q_lora_rank:
            q = H * spec.q_lora_rank + spec.q_lora_rank + spec.q_lora_rank * q_dim  # q_a, q_a_norm, q_b
            q += spec.q_lora_rank if spec.qkv_bias else 0
        else:
            q = H * q_dim
        kv = (H * (spec.kv_lora_rank + spec.qk_rope_head_dim)             # kv_a_proj_with_mqa
              + (spec.kv_lora_rank + spec.qk_rope_head_dim if spec.qkv_bias else 0)
              + spec.kv_lora_rank                                           # kv_a_layernorm
              + spec.kv_lora_rank * spec.num_heads * (spec.qk_nope_head_dim + spec.v_head_dim))
        o = spec.num_heads * spec.v_head_dim * H + (H if spec.o_bias else 0)
        return q + kv + o
    q_out = spec.num_heads * spec.head_dim
    kv_out = 2 * spec.num_kv_heads * spec.head_dim
    n = H * (q_out + kv_out) + q_out * H
    if spec.qkv_bias:
        n += q_out + kv_out
    if spec.o_bias:
        n += H
    if spec.qk_norm:
        n += 2 * spec.head_dim
    return n


def mlp_params(spec: ModelSpec, width: int) -> int:
    """Parameters of one dense MLP of inner ``width`` (chapter 01): ``3·H·I`` gated, ``2·H·I`` plain (+ biases)."""
    H = spec.hidden_size
    n = (3 if spec.gated_mlp else 2) * H * width
    if spec.mlp_bias:
        n += (2 * width if spec.gated_mlp else width) + H
    return n


def count_params(model) -> Breakdown:
    """Exact parameter count of ``model``, split into components (``unit="params"``).

    Components: ``embeddings``, ``attention``, ``mlp`` (dense layers), ``router``,
    ``experts`` (routed), ``shared_experts``, ``norms``, ``lm_head``; zero ones are left
    out.  ``meta["active"]`` is the count used per token (router + top-k experts +
    shared experts + everything dense); ``meta["active_excluding_input_embedding"]``
    follows DeepSeek's "activated" convention, which does not count the embedding lookup.  Chapter 01 derives each term.
    """
    comps, meta, title = _count_params(load_spec(model))
    return Breakdown(dict(comps), title=title, unit="params", meta=dict(meta))


@lru_cache(maxsize=512)
def _count_params(spec: ModelSpec):
    H, V, L = spec.hidden_size, spec.vocab_size, spec.num_layers
    n_moe = sum(spec.moe_layers)
    expert = mlp_params(spec, spec.moe_intermediate_size) if spec.is_moe else 0
    embeddings = V * spec.embed_dim + spec.learned_positions * H
    if spec.embed_dim != H:  # OPT-350m style project_in / project_out
        embeddings += 2 * H * spec.embed_dim
    comps = {
        "embeddings": embeddings,
        "attention": L * attention_params(spec),
        "mlp": (L - n_moe) * mlp_params(spec, spec.intermediate_size),
        "router": n_moe * spec.num_experts * H,
        "experts": n_moe * spec.num_experts * expert,
        "shared_experts": n_moe * (mlp_params(spec, spec.shared_intermediate_size)
                                   if spec.shared_intermediate_size else 0),
        "norms": (L * spec.norms_per_layer + spec.final_norm) * norm_params(spec, H),
        "lm_head": 0 if spec.tie_word_embeddings else V * spec.embed_dim,
    }
    comps = {k: v for k, v in comps.items() if v}
    total = sum(comps.values())
    active = total - n_moe * (spec.num_experts - spec.experts_per_token) * expert
    input_embedding = spec.vocab_size * spec.embed_dim
    meta = {"active": active,
            # DeepSeek's "activated" convention leaves out the embedding lookup
            "active_excluding_input_embedding": active - input_embedding,
            "non_embedding": total - comps["embeddings"] - comps.get("lm_head", 0)}
    return tuple(comps.items()), tuple(meta.items()), f"{spec.name} parameters"


def layer_params(model, moe: bool = False) -> int:
    """Parameters of one decoder layer (chapter 01): attention + norms + its MLP, or for an
    MoE layer the router, the routed experts and the shared experts."""
    spec = load_spec(model)
    n = attention_params(spec) + spec.norms_per_layer * norm_params(spec, spec.hidden_size)
    if not moe:
        return n + mlp_params(spec, spec.intermediate_size)
    n += spec.num_experts * spec.hidden_size + spec.num_experts * mlp_params(spec, spec.moe_intermediate_size)
    if spec.shared_intermediate_size:
        n += mlp_params(spec, spec.shared_intermediate_size)
    return n


def total_params(model) -> int:
    """Unique parameters of ``model`` (tied weights once), ``Σ components`` of :func:`count_params` (chapter 01)."""
    return _total_params(load_spec(model))


@lru_cache(maxsize=512)
def _total_params(spec: ModelSpec) -> int:
    return sum(v for _, v in _count_params(spec)[0])


def active_params(model) -> int:
    """Parameters used per token (chapter 01): ``total − n_moe_layers·(E − k)·expert`` (only
    the top-k routed experts count)."""
    return count_params(model).meta["active"]


def named_linears(model) -> list[tuple[str, str, int, int, int]]:
    """The weight matrices of the decoder layers as ``(component, module, in, out, count)``.

    ``module`` is the projection's role: ``q k v o`` (or ``qkv`` where a family fuses
    them; ``q_a q_b kv_a kv_b`` for MLA), ``gate up down`` (``gate_up`` fused), with an
    ``expert_`` or ``shared_`` prefix inside MoE blocks.  LoRA targets these names
    (chapter 04); quantisation formats quantise these matrices (chapter 01).
    """
    return list(_named_linears(load_spec(model)))


@lru_cache(maxsize=512)
def _named_linears(spec: ModelSpec) -> tuple:
    H, L = spec.hidden_size, spec.num_layers
    n_moe = sum(spec.moe_layers)
    out: list[tuple[str, str, int, int, int]] = []
    if spec.is_mla:
        q_dim = spec.num_heads * (spec.qk_nope_head_dim + spec.qk_rope_head_dim)
        if spec.q_lora_rank:
            out += [("attention", "q_a", H, spec.q_lora_rank, L), ("attention", "q_b", spec.q_lora_rank, q_dim, L)]
        else:
            out += [("attention", "q", H, q_dim, L)]
        out += [("attention", "kv_a", H, spec.kv_lora_rank + spec.qk_rope_head_dim, L),
                ("attention", "kv_b", spec.kv_lora_rank,
                 spec.num_heads * (spec.qk_nope_head_dim + spec.v_head_dim), L),
                ("attention", "o", spec.num_heads * spec.v_head_dim, H, L)]
    else:
        q_out, kv_out = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
        if spec.fused_qkv:
            out += [("attention", "qkv", H, q_out + 2 * kv_out, L)]
        else:
            out += [("attention", "q", H, q_out, L), ("attention", "k", H, kv_out, L),
                    ("attention", "v", H, kv_out, L)]
        out += [("attention", "o", q_out, H, L)]

    def mlp(component, prefix, width, count):
        if not count or not width:
            return []
        if not spec.gated_mlp:
            return [(component, prefix + "up", H, width, count), (component, prefix + "down", width, H, count)]
        if spec.fused_gate_up:
            return [(component, prefix + "gate_up", H, 2 * width, count),
                    (component, prefix + "down", width, H, count)]
        return [(component, prefix + "gate", H, width, count), (component, prefix + "up", H, width, count),
                (component, prefix + "down", width, H, count)]

    out += mlp("mlp", "", spec.intermediate_size, L - n_moe)
    out += mlp("experts", "expert_", spec.moe_intermediate_size, n_moe * spec.num_experts)
    out += mlp("shared_experts", "shared_", spec.shared_intermediate_size, n_moe)
    return tuple(out)


def linear_layers(model) -> list[tuple[str, int, int, int]]:
    """The weight matrices of the decoder layers as ``(component, in, out, count)``.

    These are the tensors quantisation formats quantise (chapter 01 §quantisation);
    embeddings, lm_head, norms, biases and MoE routers are not in the list.  Fused
    projections (GPT-2/Falcon/Phi-3 ``qkv``, Phi-3 ``gate_up``) are one matrix.
    ``sum(in*out*count)`` plus the non-matrix parameters equals :func:`total_params`.
    """
    return [(component, i, o, n) for component, _, i, o, n in named_linears(model)]


def layer_linear_params(model) -> int:
    """Weight-matrix parameters of one (dense) decoder layer's projections, ``Σ in·out`` (chapter 01)."""
    spec = load_spec(model)
    return sum(i * o * n for comp, _, i, o, n in _named_linears(spec) if comp in ("attention", "mlp")) \
        // spec.num_layers


def linear_bias_params(model) -> int:
    """Parameters in the biases of the decoder's Linear layers (q/k/v/o and MLP biases), chapter 01."""
    spec = load_spec(model)
    if spec.is_mla:
        return 0
    per_layer = 0
    if spec.qkv_bias:
        per_layer += (spec.num_heads + 2 * spec.num_kv_heads) * spec.head_dim
    if spec.o_bias:
        per_layer += spec.hidden_size
    if spec.mlp_bias:
        per_layer += (2 if spec.gated_mlp else 1) * spec.intermediate_size + spec.hidden_size
    return spec.num_layers * per_layer


def param_tensors(model) -> tuple[list[tuple[int, int, int]], int]:
    """All parameters as ``(matrices, vector_params)``: ``matrices`` lists ``(rows, cols,
    count)`` of every 2-D tensor (decoder matrices, embeddings, position table, lm_head,
    routers); ``vector_params`` is everything else (norms, biases, q/k norms).

    Optimizers that treat matrices specially (Adafactor, 8-bit Adam) use this split (chapter 04).
    """
    spec = load_spec(model)
    mats = [(i, o, n) for _, i, o, n in linear_layers(spec)]
    mats.append((spec.vocab_size, spec.embed_dim, 1))
    if spec.learned_positions:
        mats.append((spec.learned_positions, spec.hidden_size, 1))
    if not spec.tie_word_embeddings:
        mats.append((spec.vocab_size, spec.embed_dim, 1))
    if spec.is_moe:
        mats.append((spec.num_experts, spec.hidden_size, sum(spec.moe_layers)))
    if spec.embed_dim != spec.hidden_size:
        mats.append((spec.hidden_size, spec.embed_dim, 2))
    vectors = total_params(spec) - sum(i * o * n for i, o, n in mats)
    return mats, vectors


def param_sizes(model) -> tuple[int, ...]:
    """Element counts of the parameter tensors, in the order a transformers model registers
    them (chapter 04: the optimizer walks them in this order).

    The embedding (and learned positions), then per layer the attention projections, its
    per-head norms, the MLP (or the router, the routed experts as transformers' two fused
    tensors ``E × 2I × H`` and ``E × H × I``, and the shared experts) and the layer's norms,
    then the final norm and lm_head.  Vectors (norm weights, biases) are kept as whole
    tensors; ``sum(param_sizes) == total_params``.
    """
    return _param_sizes(load_spec(model))


@lru_cache(maxsize=256)
def _param_sizes(spec: ModelSpec) -> tuple[int, ...]:
    H = spec.hidden_size
    norm = [H, H] if spec.norm == "layer" else [H]
    out = [spec.vocab_size * spec.embed_dim]
    if spec.learned_positions:
        out.append(spec.learned_positions * H)
    if spec.embed_dim != H:
        out.append(H * spec.embed_dim)                 # project_in
    attn = [i * o for comp, _, i, o, _ in _named_linears(spec) if comp == "attention"]
    dense = [i * o for comp, _, i, o, _ in _named_linears(spec) if comp == "mlp"]
    shared = [i * o for comp, _, i, o, _ in _named_linears(spec) if comp == "shared_experts"]
    for moe in spec.moe_layers:
        out += attn
        if spec.qk_norm:
            out += [spec.head_dim, spec.head_dim]
        if moe:
            I = spec.moe_intermediate_size
            out += [spec.num_experts * H]                                  # the router
            out += [spec.num_experts * (2 if spec.gated_mlp else 1) * I * H, spec.num_experts * H * I]
            out += shared
        else:
            out += dense
        out += norm * spec.norms_per_layer
    if spec.final_norm:
        out += norm
    if not spec.tie_word_embeddings:
        out.append(spec.vocab_size * spec.embed_dim)
    if spec.embed_dim != H:
        out.append(H * spec.embed_dim)                 # project_out
    rest = total_params(spec) - sum(out)               # biases and the MLA norms, as small vectors
    if rest:
        out.append(rest)
    return tuple(out)
