"""Activations: what a forward pass keeps, for training and for inference (chapter 03).

Training.  Autograd keeps, for every op whose backward needs them, some of its inputs or
outputs until the backward pass frees them.  For one decoder layer of a Llama-style
model in bf16 with SDPA (flash) attention and ``T = batch × seq_len`` tokens, hidden
``H``, query width ``q = n_heads·head_dim``, key/value width ``kv = n_kv·head_dim`` and MLP
width ``I``, the saved tensors are::

    2 RMSNorms    2 × (4TH fp32 copy + 4T rsqrt + 2TH normalised + 2TH output)
    attention     2Tq (q after RoPE) + 2·2Tkv (k after RoPE, v) + 2Tq (output) + 4·T·n_heads (logsumexp)
    SwiGLU MLP    4 × 2TI (gate, up, silu(gate), silu(gate)·up)

which is Korthikanti et al.'s ``34·s·b·h + 5·a·s²·b`` adapted to RMSNorm (PyTorch upcasts
to fp32 inside the norm), SwiGLU, GQA, no dropout and flash attention (no ``s²`` term).
Eager attention adds the score matrix: ``4·B·n_heads·S²`` (fp32 softmax) + ``2·B·n_heads·S²``
(its bf16 copy).  Each family's quirks (q/k norms, fused projections, MoE routing, ...)
come from the spec's behaviour fields (:mod:`memlib.spec`).  Every entry names a tensor
the bench sees (``memlib.measure``); chapter 03 walks through them.

Each saved tensor is a :class:`Saved` record: its name, bytes, the block it belongs to,
which half of the layer's backward frees it, its axes (``T`` tokens, ``H`` hidden, ``q``
query width, ``I`` MLP width, ``S2`` the ``S × S`` score axes ...) and, where only a
weight's gradient needs it, which weights.  Recompute, LoRA, the plots and the parallel
splits are rules over these fields (:func:`is_quadratic`, :func:`without_frozen`).

All sizes are bytes (ints, or integer numpy arrays when ``batch_size``/``seq_len`` are
arrays).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .breakdown import Breakdown
from .params import layer_linear_params, total_params
from .scenario import RECOMPUTE, Scenario, attention_used, check_seq_len
from .spec import ModelSpec, load_spec
from .symbolic import evaluate
from .validation import choice, exact_sweeps, positive_int, traced

#: The blocks a decoder layer's saved tensors belong to (chapter 03's figures group by them).
BLOCKS = ("norms", "attention", "mlp", "autocast")


class Saved(NamedTuple):
    """One tensor autograd keeps for the backward (chapter 03).

    ``half``: ``"attn"`` or ``"mlp"``, the part of the layer whose backward frees it (the
    MLP's backward runs first).  ``axes``: symbolic axes (``("T", "q")``, ``("B", "nh",
    "S2")``).  ``needed_by``: the weights whose gradient is the only reason it is kept
    (``("o",)`` for o_proj's input, ``("norm",)`` for a norm's normalised tensor); empty
    when the backward needs it anyway.  (A named tuple: a sweep builds many of them.)
    """

    name: str
    nbytes: object
    block: str
    half: str = "attn"
    axes: tuple = ()
    needed_by: tuple = ()


def is_quadratic(t: Saved) -> bool:
    """True for the ``S × S`` score-matrix tensors, what selective recompute drops (chapter 03)."""
    return "S2" in t.axes


def total_bytes(tensors) -> object:
    """Bytes of a collection of :class:`Saved` records, ``Σ nbytes`` (a dict's values or a list; chapter 03)."""
    return sum(t.nbytes for t in (tensors.values() if isinstance(tensors, dict) else tensors))


def without_frozen(tensors: dict, trained: set) -> dict:
    """The records still needed when only ``trained`` weights get gradients (LoRA, chapter 04):
    a record kept only for some weights' gradients goes when none of them trains."""
    return {k: t for k, t in tensors.items() if not t.needed_by or set(t.needed_by) & trained}


_new_record = tuple.__new__        # builds a named tuple without its __new__'s argument handling


class _Layer:
    """Collects one layer's :class:`Saved` records; ``half`` is the part being built."""

    def __init__(self):
        self.out: dict[str, Saved] = {}
        self.half = "attn"

    def put(self, name, nbytes, block, axes=(), needed_by=()):
        self.out[name] = _new_record(Saved, (name, nbytes, block, self.half, axes, needed_by))

    def drop(self, name):
        self.out.pop(name, None)


#: Which projections read each norm's output (their weight gradients need it).
_READS_ATTN_NORM = ("q", "k", "v", "qkv", "q_a", "kv_a")
_READS_MLP_NORM = ("gate", "up", "gate_up", "shared_gate", "shared_up")


# ------------------------------------------------------------------------------------
# building blocks: each adds Saved records to a layer


def _rmsnorm(layer: _Layer, prefix: str, spec: ModelSpec, sc: Scenario, width: int, rows, consumers: int,
             readers=(), width_axis="H", block="norms"):
    """One RMSNorm over ``rows × width`` feeding ``consumers`` linears.

    transformers computes ``w * (x.float() * rsqrt(mean(x²) + eps)).to(x.dtype)``: the
    fp32 copy of ``x`` and ``rsqrt`` are saved, the normalised tensor is saved for the
    weight's gradient, and the output is saved by the linears that read it.  Under mixed
    precision ``x`` is already fp32 (the copy is ``x`` itself), the normalised tensor stays
    fp32, and autocast casts the output to bf16 once per consumer.  With ``norm_plus_one``
    (Gemma 2) the norm multiplies by ``(1 + w)`` in fp32 and casts the product back.
    """
    r = sc.residual_bytes
    axes = ("T", width_axis)
    layer.put(f"{prefix}.input_fp32", 4 * rows * width, block, axes)
    layer.put(f"{prefix}.rsqrt", 4 * rows, block, ("T",))
    layer.put(f"{prefix}.normalised", (4 if spec.norm_plus_one else r) * rows * width, block, axes, ("norm",))
    if spec.norm_plus_one:
        layer.put(f"{prefix}.one_plus_w_fp32", 4 * width, block, (width_axis,))
    if consumers:
        layer.put(f"{prefix}.output", (2 * consumers if sc.mixed else r) * rows * width, block, axes, readers)


def _layernorm(layer: _Layer, prefix: str, sc: Scenario, width: int, rows, consumers: int, readers=(),
               block="norms"):
    """One LayerNorm (GPT-2, OPT, Falcon): its input, mean and rstd, and its output.

    Under CUDA autocast ``layer_norm`` runs in fp32, so its output is cast to bf16 once
    per consumer; in bf16 the one output is shared.  (The LoRA model keeps the output of a
    decoder layer's LayerNorm even when the projections reading it are frozen; only the
    final norm's is marked as ``lm_head``'s input.)
    """
    r = sc.residual_bytes
    layer.put(f"{prefix}.input", r * rows * width, block, ("T", "H"))
    layer.put(f"{prefix}.mean_rstd", 2 * r * rows, block, ("T",))
    if consumers:
        layer.put(f"{prefix}.output", (2 * consumers if sc.mixed else r) * rows * width, block, ("T", "H"),
                  readers)


def _dropout_mask(layer: _Layer, name: str, sc: Scenario, p: float, numel, axes, dtype_bytes: int = 2,
                  block="attention"):
    if p > 0:
        layer.put(name, sc.mask_bytes(dtype_bytes) * numel, block, axes)


def _scores(layer: _Layer, spec: ModelSpec, sc: Scenario, softmax_bytes: int, copy_bytes: int = 0):
    """Eager attention's saved ``B × heads × S × S`` tensors: the softmax output, the copy
    the next matmul reads (if any), and with attention dropout its mask and output."""
    n = sc.batch_size * spec.num_heads * sc.seq_len * sc.seq_len
    axes = ("B", "nh", "S2")
    layer.put("attn.softmax", softmax_bytes * n, "attention", axes)
    if spec.attention_dropout > 0:
        _dropout_mask(layer, "attn.dropout_mask", sc, spec.attention_dropout, n, axes)
        layer.put("attn.dropout_out", 2 * n, "attention", axes)
    elif copy_bytes:
        layer.put("attn.probs_bf16", copy_bytes * n, "attention", axes)
    if spec.attn_softcap:
        layer.put("attn.softcap_tanh", 2 * n, "attention", axes)    # tanh's output is saved for its backward


def _standard_attention(layer: _Layer, spec: ModelSpec, sc: Scenario):
    """Multi-, grouped- or multi-query attention of the Llama family."""
    B, S, T = sc.batch_size, sc.seq_len, sc.tokens
    nh, nkv, hd = spec.num_heads, spec.num_kv_heads, spec.head_dim
    q, kv = nh * hd, nkv * hd
    if spec.qk_norm:  # Qwen3: RMSNorm per head on q and k, before RoPE (bf16 matmul outputs)
        for name, width, heads, axis in (("q_norm", q, nh, "q"), ("k_norm", kv, nkv, "kv")):
            layer.put(f"attn.{name}.input_fp32", 4 * T * width, "attention", ("T", axis))
            layer.put(f"attn.{name}.rsqrt", 4 * T * heads, "attention", ("T", "nh" if axis == "q" else "nkv"))
            layer.put(f"attn.{name}.normalised", 2 * T * width, "attention", ("T", axis), ("norm",))
    if attention_used(spec, sc.attention) == "sdpa":
        # SDPA saves q, k, v (bf16: autocast casts fp32 q/k), its output and logsumexp
        layer.put("attn.q", 2 * T * q, "attention", ("T", "q"))
        layer.put("attn.k", 2 * T * kv, "attention", ("T", "kv"))
        layer.put("attn.v", 2 * T * kv, "attention", ("T", "kv"))
        layer.put("attn.out", 2 * T * q, "attention", ("T", "q"))
        layer.put("attn.logsumexp", 4 * B * nh * S, "attention", ("B", "nh", "S"))
        if spec.sliding_window and spec.num_sliding_layers:
            # from the window on, the causal mask is no longer implicit: each layer builds and
            # saves a (B, 1, S, S) additive mask, and with a mask transformers repeats K and V
            # to every query head instead of using SDPA's grouped-query mode
            beyond = S >= spec.sliding_window
            layer.put("attn.sliding_mask", 2 * B * S * S * beyond, "attention", ("B", "S2"))
            repeated = 2 * T * (kv + (q - kv) * beyond)
            layer.put("attn.k", repeated, "attention", ("T", "kv"))
            layer.put("attn.v", repeated, "attention", ("T", "kv"))
        if spec.qkv_views:
            # v is a view of the fused qkv output: the whole qkv tensor stays alive, and the
            # output is copied before o_proj
            layer.put("attn.v", 2 * T * (q + 2 * kv), "attention", ("T", "qkv"))
            layer.put("attn.out_copy", 2 * T * q, "attention", ("T", "q"))
    else:
        # eager: q and K/V repeated to every head are made contiguous for the matmuls;
        # softmax in fp32, then a bf16 copy for the matmul with v
        layer.put("attn.q", 2 * T * q, "attention", ("T", "q"))
        layer.put("attn.k", 2 * T * (q if nkv != nh else kv), "attention", ("T", "q"))
        v = 2 * T * (q if nkv != nh else kv)
        if spec.qkv_views:
            # at batch 1 the matmul reads v (a view of the fused qkv output) without a copy,
            # which keeps the whole qkv tensor alive
            v = v + (B == 1) * 2 * T * (q + kv)
        layer.put("attn.v", v, "attention", ("T", "q"))
        _scores(layer, spec, sc, softmax_bytes=4, copy_bytes=2)
        layer.put("attn.out", 2 * T * q, "attention", ("T", "q"), ("o",))


def _latent_attention(layer: _Layer, spec: ModelSpec, sc: Scenario):
    """Multi-head latent attention (DeepSeek): low-rank q and kv paths with their norms."""
    B, S, T = sc.batch_size, sc.seq_len, sc.tokens
    nh, qhd = spec.num_heads, spec.qk_nope_head_dim + spec.qk_rope_head_dim
    if spec.q_lora_rank:
        _rmsnorm(layer, "attn.q_a_norm", spec, sc, spec.q_lora_rank, T, consumers=1, width_axis="r_q",
                 block="attention")
    _rmsnorm(layer, "attn.kv_a_norm", spec, sc, spec.kv_lora_rank, T, consumers=1, width_axis="r_kv",
             block="attention")
    layer.put("attn.q", 2 * T * nh * qhd, "attention", ("T", "q"))        # q_pass and rotated q_rot
    layer.put("attn.k", 2 * T * nh * qhd, "attention", ("T", "q"))        # k_pass and the shared k_rot, per head
    layer.put("attn.v", 2 * T * nh * spec.v_head_dim, "attention", ("T", "v"))
    if attention_used(spec, sc.attention) == "sdpa":
        layer.put("attn.logsumexp", 4 * B * nh * S, "attention", ("B", "nh", "S"))
    else:
        _scores(layer, spec, sc, softmax_bytes=4, copy_bytes=2)
    eager = attention_used(spec, sc.attention) == "eager"
    layer.put("attn.out", 2 * T * nh * spec.v_head_dim, "attention", ("T", "v"), ("o",) if eager else ())


def _gated_mlp(layer: _Layer, width: int, rows, prefix="mlp", axes=("T", "I"), down_input_for=(),
               dtype_bytes: int = 2):
    """A SwiGLU MLP over ``rows`` tokens keeps gate, up, act(gate) and act·up (down's input,
    needed only for down's gradient when ``down_input_for`` names it), ``dtype_bytes`` each."""
    for name in ("gate", "up", "act"):
        layer.put(f"{prefix}.{name}", dtype_bytes * rows * width, "mlp", axes)
    layer.put(f"{prefix}.act_times_up", dtype_bytes * rows * width, "mlp", axes, down_input_for)


def _moe(layer: _Layer, spec: ModelSpec, sc: Scenario):
    """A routed MoE block as transformers runs it (grouped matmuls over gathered tokens).

    The routed experts compute in the master weights' dtype: transformers calls
    ``grouped_mm(input.to(weight.dtype), weight)`` (``integrations/moe.py``), which has no
    autocast rule, so under mixed precision the gathered tokens, the fused gate/up output,
    ``act(gate)``, ``act·up`` and the experts' output are fp32 (``e = 4`` bytes, else 2):
    ``e·T·k·(2H + 4·I_moe)`` per layer.
    """
    T, H, E, k = sc.tokens, spec.hidden_size, spec.num_experts, spec.experts_per_token
    e = sc.residual_bytes                        # the experts' dtype: the parameters'
    if spec.router_fp32:                         # the router casts its input and weight to fp32
        if sc.mixed:                             # ... which autocast casts back to bf16 for the matmul
            layer.put("moe.router_input", 2 * T * H, "mlp", ("T", "H"))
        else:
            layer.put("moe.router_input_fp32", 4 * T * H, "mlp", ("T", "H"))
            layer.put("moe.router_weight_fp32", 4 * E * H, "mlp", ("E", "H"))
    layer.put("moe.router_probs_fp32", 4 * T * E, "mlp", ("T", "E"))
    layer.put("moe.routing_indices", 4 * 8 * T * k, "mlp", ("T", "k"))   # top-k, sort, expert ids, positions (int64)
    layer.put("moe.routing_weights", 2 * T * k, "mlp", ("T", "k"))
    layer.put("moe.tokens_gathered", e * T * k * H, "mlp", ("T", "k", "H"), ("expert",))
    _gated_mlp(layer, spec.moe_intermediate_size, T * k, prefix="moe.experts", axes=("T", "k", "I_moe"),
               dtype_bytes=e)
    layer.put("moe.experts.down_out", e * T * k * H, "mlp", ("T", "k", "H"))
    if spec.shared_intermediate_size:
        _gated_mlp(layer, spec.shared_intermediate_size, T, prefix="moe.shared", axes=("T", "I_shared"))


def _llama_layer(spec: ModelSpec, sc: Scenario, moe: bool) -> dict:
    """Llama-style layers: Llama, Mistral, Mixtral, Qwen2/3 (+MoE), Phi-3, Gemma 2, DeepSeek."""
    layer = _Layer()
    T, H = sc.tokens, spec.hidden_size
    consumers_in = 2 if spec.is_mla else 1 if spec.fused_qkv else 3
    _rmsnorm(layer, "input_norm", spec, sc, H, T, consumers=consumers_in, readers=_READS_ATTN_NORM)
    (_latent_attention if spec.is_mla else _standard_attention)(layer, spec, sc)
    layer.half = "mlp"
    if spec.norm_plus_one:        # Gemma 2: a norm after attention, one before and one after the MLP
        _rmsnorm(layer, "post_attn_norm", spec, sc, H, T, consumers=0)
        _rmsnorm(layer, "pre_mlp_norm", spec, sc, H, T, consumers=2, readers=_READS_MLP_NORM)
        _rmsnorm(layer, "post_mlp_norm", spec, sc, H, T, consumers=0)
    elif moe:
        # the routed experts gather rows of the norm's output (an index saves only the
        # indices); under autocast each Linear reading it saves its own bf16 cast: the
        # router (unless it upcasts, see _moe) and the shared experts' gate and up
        readers = 2 if spec.shared_intermediate_size else 0
        _rmsnorm(layer, "post_attn_norm", spec, sc, H, T, consumers=readers + (not spec.router_fp32),
                 readers=_READS_MLP_NORM)
    else:
        _rmsnorm(layer, "post_attn_norm", spec, sc, H, T, consumers=1 if spec.fused_gate_up else 2,
                 readers=_READS_MLP_NORM)
    if moe:
        _moe(layer, spec, sc)
    else:
        _gated_mlp(layer, spec.intermediate_size, T, down_input_for=("down",))
    return layer.out


def _gpt2_layer(spec: ModelSpec, sc: Scenario, moe: bool = False) -> dict:
    """GPT-2: LayerNorms, fused qkv with biases, dropout everywhere, tanh-GELU MLP."""
    layer = _Layer()
    T, H, I = sc.tokens, spec.hidden_size, spec.intermediate_size
    _layernorm(layer, "ln_1", sc, H, T, consumers=1, readers=("qkv",))
    for name in ("attn.q", "attn.k", "attn.v"):              # heads split, made contiguous
        layer.put(name, 2 * T * H, "attention", ("T", "q"))
    if attention_used(spec, sc.attention) == "sdpa":
        layer.put("attn.logsumexp", 4 * sc.batch_size * spec.num_heads * sc.seq_len, "attention", ("B", "nh", "S"))
    else:
        _scores(layer, spec, sc, softmax_bytes=4 if sc.mixed else 2, copy_bytes=2 if sc.mixed else 0)
    # the merged heads are read only by c_proj ("o"): kept for its weight's gradient
    eager = attention_used(spec, sc.attention) == "eager"
    layer.put("attn.out", 2 * T * H, "attention", ("T", "q"), ("o",) if eager else ())
    _dropout_mask(layer, "attn.resid_dropout_mask", sc, spec.hidden_dropout, T * H, ("T", "H"))
    layer.half = "mlp"
    _layernorm(layer, "ln_2", sc, H, T, consumers=1, readers=("up",))
    # gelu_new = 0.5·x·(1 + tanh(c·(x + 0.044715·x³))): x (fp32 for pow under CUDA autocast),
    # tanh, 1 + tanh, 0.5·x and the product are saved
    wide = 4 if sc.mixed else 2
    layer.put("mlp.fc_in", wide * T * I, "mlp", ("T", "I"))
    layer.put("mlp.tanh", wide * T * I, "mlp", ("T", "I"))
    layer.put("mlp.one_plus_tanh", wide * T * I, "mlp", ("T", "I"))
    layer.put("mlp.half_x", 2 * T * I, "mlp", ("T", "I"))
    layer.put("mlp.gelu_out", 2 * T * I, "mlp", ("T", "I"), ("down",))     # read only by the MLP's c_proj
    _dropout_mask(layer, "mlp.resid_dropout_mask", sc, spec.hidden_dropout, T * H, ("T", "H"), block="mlp")
    return layer.out


def _opt_layer(spec: ModelSpec, sc: Scenario, moe: bool = False) -> dict:
    """OPT: pre-LayerNorm, separate q/k/v with biases, ReLU MLP, dropout after each block."""
    layer = _Layer()
    T, H, I = sc.tokens, spec.hidden_size, spec.intermediate_size
    _layernorm(layer, "ln_attn", sc, H, T, consumers=3, readers=("q", "k", "v"))
    for name in ("attn.q", "attn.k", "attn.v"):
        layer.put(name, 2 * T * H, "attention", ("T", "q"))
    if attention_used(spec, sc.attention) == "sdpa":
        layer.put("attn.logsumexp", 4 * sc.batch_size * spec.num_heads * sc.seq_len, "attention", ("B", "nh", "S"))
    else:
        _scores(layer, spec, sc, softmax_bytes=4, copy_bytes=2)
    eager = attention_used(spec, sc.attention) == "eager"
    layer.put("attn.out", 2 * T * H, "attention", ("T", "q"), ("o",) if eager else ())
    _dropout_mask(layer, "attn.dropout_mask", sc, spec.hidden_dropout, T * H, ("T", "H"))
    layer.half = "mlp"
    _layernorm(layer, "ln_mlp", sc, H, T, consumers=1, readers=("up",))
    layer.put("mlp.relu", 2 * T * I, "mlp", ("T", "I"))
    _dropout_mask(layer, "mlp.dropout_mask", sc, spec.hidden_dropout, T * H, ("T", "H"), block="mlp")
    return layer.out


def _falcon_layer(spec: ModelSpec, sc: Scenario, moe: bool = False) -> dict:
    """Falcon: one LayerNorm feeds attention and MLP in parallel; K/V broadcast to every head."""
    layer = _Layer()
    T, H, I = sc.tokens, spec.hidden_size, spec.intermediate_size
    nh, nkv, hd = spec.num_heads, spec.num_kv_heads, spec.head_dim
    if spec.norms_per_layer == 2:     # new_decoder_architecture: one LayerNorm per branch
        _layernorm(layer, "ln_attn", sc, H, T, consumers=1, readers=("qkv",))
        layer.half = "mlp"
        _layernorm(layer, "ln_mlp", sc, H, T, consumers=1, readers=("up",))
        layer.drop("ln_mlp.input")       # both read the same input tensor
        layer.half = "attn"
    else:
        _layernorm(layer, "ln", sc, H, T, consumers=2, readers=("qkv", "up"))
    if attention_used(spec, sc.attention) == "sdpa":
        layer.put("attn.q", 2 * T * nh * hd, "attention", ("T", "q"))
        layer.put("attn.k", 2 * T * nkv * hd, "attention", ("T", "kv"))
        layer.put("attn.v", 2 * T * nkv * hd, "attention", ("T", "kv"))
        layer.put("attn.logsumexp", 4 * sc.batch_size * nh * sc.seq_len, "attention", ("B", "nh", "S"))
    else:
        layer.put("attn.q", 2 * T * nh * hd, "attention", ("T", "q"))
        # K/V are broadcast to every head; the matmul copies the expansion, except at batch 1
        kv = 2 * T * (nh * hd - (sc.batch_size == 1) * (nh - nkv) * hd)
        layer.put("attn.k", kv, "attention", ("T", "q"))
        layer.put("attn.v", kv, "attention", ("T", "q"))
        # softmax in the hidden states' dtype: bf16, or fp32 + a bf16 copy under mixed
        _scores(layer, spec, sc, softmax_bytes=4 if sc.mixed else 2, copy_bytes=2 if sc.mixed else 0)
    eager = attention_used(spec, sc.attention) == "eager"
    layer.put("attn.out", 2 * T * nh * hd, "attention", ("T", "q"), ("o",) if eager else ())
    layer.half = "mlp"
    layer.put("mlp.fc_out", 2 * T * I, "mlp", ("T", "I"))
    layer.put("mlp.gelu", 2 * T * I, "mlp", ("T", "I"), ("down",))          # read only by dense_4h_to_h
    if sc.mixed and not spec.autocast_caches_weights:
        # FalconLinear computes `x @ W.T`: autocast casts the view W.T, which it does not
        # cache, and the matmul saves the bf16 copy for its backward
        layer.half = "attn"
        layer.put("autocast.weight_copies", 2 * layer_linear_params(spec), "autocast", ("params",))
    return layer.out


_LAYERS = {"llama": _llama_layer, "gpt2": _gpt2_layer, "opt": _opt_layer, "falcon": _falcon_layer}


def layer_tensors(spec: ModelSpec, sc: Scenario, moe: bool = False) -> dict:
    """The :class:`Saved` records autograd keeps for one decoder layer: ``{name: Saved}``.

    The formula for a dense Llama-style layer is in the module docstring; the spec's
    ``block_style`` picks how the layer is built.  Chapter 03 §"what training saves"
    derives them one by one.
    """
    return _LAYERS[spec.block_style](spec, sc, moe)


def layer_saved(spec: ModelSpec, sc: Scenario, moe: bool = False) -> dict:
    """Bytes autograd keeps for one decoder layer until its backward: ``{tensor: bytes}`` (chapter 03)."""
    return {k: t.nbytes for k, t in layer_tensors(spec, sc, moe).items()}


def causal_mask_bytes(spec: ModelSpec, sc: Scenario):
    """The mask the model builds once per forward when it cannot stay implicit: with eager
    attention (for families that build one) a (B, 1, S, S) additive mask in the parameters'
    dtype; with SDPA from a sliding window's length on, the window's (1, 1, S, S) boolean
    mask (``S²`` bytes).  It lives through the forward (and, under full recompute, as a
    checkpoint input through the backward).  Chapter 03."""
    B, S = sc.batch_size, sc.seq_len
    used = attention_used(spec, sc.attention)
    if spec.sliding_window and spec.num_sliding_layers and used == "sdpa":
        # the window's (1, 1, S, S) boolean mask; each layer makes its own (B, 1, S, S)
        # additive copy (activations' attn.sliding_mask)
        return S * S * (S >= spec.sliding_window)
    explicit = used == "eager" and spec.eager_mask
    return sc.residual_bytes * B * S * S * explicit * eager_masks(spec)


def eager_masks(spec: ModelSpec) -> int:
    """How many (B, 1, S, S) masks an eager forward builds: one per kind of layer, two when
    full-attention and sliding-window layers alternate (Gemma 2), whatever the length
    (chapter 03)."""
    return 2 if spec.sliding_window and 0 < spec.num_sliding_layers < spec.num_layers else 1


def model_tensors(spec: ModelSpec, sc: Scenario) -> dict:
    """:class:`Saved` records kept outside the decoder layers: RoPE tables, final norm, loss.

    The loss keeps the fp32 log-softmax of the logits, ``4·T·V`` bytes: transformers
    upcasts the logits to fp32 before the cross-entropy (chapter 03 §logits).
    """
    S, T, H = sc.seq_len, sc.tokens, spec.hidden_size
    layer = _Layer()
    layer.half = "model"
    if spec.is_mla:            # complex rotary frequencies, fp32 pairs
        layer.put("rope.cos_sin", 8 * S * (spec.qk_rope_head_dim // 2), "model", ("S",))
    elif not spec.learned_positions:
        layer.put("rope.cos_sin", 2 * S * spec.head_dim * (4 if sc.mixed else 2), "model", ("S",))
    else:
        layer.put("rope.cos_sin", 0, "model", ("S",))
    if spec.norm == "layer":
        _layernorm(layer, "final_norm", sc, H, T, consumers=1, readers=("lm_head",), block="model")
    else:
        _rmsnorm(layer, "final_norm", spec, sc, H, T, consumers=1, readers=("lm_head",), block="model")
    _dropout_mask(layer, "embedding.dropout_mask", sc, spec.embedding_dropout, T * H, ("T", "H"), block="model")
    if spec.final_softcap:
        layer.put("loss.softcap_tanh", 2 * T * spec.vocab_size, "model", ("T", "V"))
    layer.put("loss.log_softmax_fp32", 4 * T * spec.vocab_size, "model", ("T", "V"))
    layer.put("loss.shifted_labels", 8 * T, "model", ("T",))
    return layer.out


def model_saved(spec: ModelSpec, sc: Scenario) -> dict:
    """Bytes kept outside the decoder layers: ``{tensor: bytes}`` (see :func:`model_tensors`, chapter 03)."""
    return {k: t.nbytes for k, t in model_tensors(spec, sc).items()}


# ------------------------------------------------------------------------------------
# inference: the prefill's transient tensors (nothing is saved for a backward)

#: Eager prefill: the ``B·heads·S²`` score tensors alive at once, in bytes per element
#: summed (Llama family: bf16 masked scores + fp32 copy + fp32 softmax = 10; GPT-2: two
#: bf16 tensors at a time, the product ``q·kᵀ`` and its scaled copy, then the scaled and
#: the masked scores, then the masked scores and the softmax = 4; Falcon, whose K/V head is
#: broadcast to every query head, 8).
_EAGER_PREFILL_SCORES = {"llama": 10, "gpt2": 4, "falcon": 8, "opt": 10}
#: Prefill MLP intermediates of ``T·I`` alive at once (SwiGLU: act(gate), up and their
#: product; GPT-2's tanh GELU: 4; OPT's ReLU and Falcon's GELU: 2).
_PREFILL_MLP = {"gpt2": 4, "opt": 2, "falcon": 2}


def prefill_transients(spec: ModelSpec, sc: Scenario, dtype_bytes: int = 2, residual_bytes: int | None = None) -> dict:
    """Candidates for the transient peak of a prefill, above the weights and the KV cache.

    Under ``torch.no_grad()`` a tensor lives only while a Python variable holds it.  In the
    last layer (where the cache is complete) transformers holds the embedding output
    (``inputs_embeds``), the layer's input, its residual and the norm output, plus:

    * in the MLP: ``act(gate)``, ``up`` and their product, ``3·T·I`` values (a fused
      ``gate_up`` output, Phi-3's, stays alive as well: ``4·T·I``; GPT-2's tanh
      GELU keeps 4 intermediate ``T·I`` tensors, OPT's ReLU and Falcon's GELU 2);
    * with SDPA and a sliding window no longer than the sequence: the window's
      ``(1, 1, S, S)`` boolean mask, for the whole forward;
    * in an MoE block, when the experts' outputs are combined: the gathered tokens, the
      experts' outputs, their weighted copy and the scattered result, ``4·T·k·H``;
    * in eager attention: the query states, the masked scores (bf16), their fp32 copy and
      the fp32 softmax, ``10·B·n_heads·S²`` bytes, plus the causal mask (two where full and
      sliding-window layers alternate, :func:`eager_masks`; Phi-3 also holds
      its fused q/k/v output, whose views q, k and v are; DeepSeek's MLA the projected
      query, its rotated part, the concatenated query states, the latents, ``kv_b``'s
      output and the assembled keys).  GPT-2 and Falcon keep the softmax
      in bf16: GPT-2 holds two score tensors at a time (4) and c_attn's fused output
      (``3·T·H``, q, k and v are its views); Falcon, whose K/V head is broadcast to every
      query head, 8;
    * GPT-2's block keeps the attention's output (and in eager its softmax, with the
      causal mask) alive through the MLP.

    ``residual_bytes`` (default ``dtype_bytes``): bytes per element of the residual stream,
    the embedding output and RoPE's tables; 4 for fp32 weights under autocast, whose
    matmul outputs (the MLP's and attention's) are bf16 while the residual stream is fp32.

    Returns ``{candidate: bytes}``; the peak is the largest (chapter 03 §inference).
    """
    a = dtype_bytes
    r = a if residual_bytes is None else residual_bytes
    B, S, T = sc.batch_size, sc.seq_len, sc.tokens
    H, I, nh, hd = spec.hidden_size, spec.intermediate_size, spec.num_heads, spec.head_dim
    hidden = r * T * H
    rope_hd = spec.qk_rope_head_dim if spec.is_mla else hd
    always = hidden + (hidden if spec.num_layers > 1 else 0) + 8 * S   # inputs_embeds, layer input, positions
    if attention_used(spec, sc.attention) == "sdpa" and spec.sliding_window and spec.num_sliding_layers:
        always = always + S * S * (S >= spec.sliding_window)   # the window's (1, 1, S, S) boolean mask
    if spec.learned_positions:          # GPT-2 keeps a (1, S, H) position output, OPT a (B, S, H) one
        always = always + r * (T if spec.positions_per_sequence else S) * H
    else:
        always = always + 2 * r * S * rope_hd                              # RoPE cos and sin
    out = {}
    if spec.parallel_attn:               # parallel attention: its output waits for the MLP
        out["mlp"] = always + 2 * hidden + 2 * a * T * I
    elif spec.gated_mlp:      # a fused gate_up output stays alive while its halves are views
        out["mlp"] = always + 2 * hidden + (4 if spec.fused_gate_up else 3) * a * T * I
    else:
        out["mlp"] = always + 2 * hidden + _PREFILL_MLP[spec.block_style] * a * T * I
    if spec.block_style == "gpt2":
        # GPT2Block keeps `attn_output, self_attn_weights = self.attn(...)` alive through the
        # MLP: attention's output (a·T·H) and, in eager, its softmax (a·B·heads·S²), next
        # to the causal mask (a·B·S², built once per forward)
        out["mlp"] = out["mlp"] + a * T * H
        if attention_used(spec, sc.attention) == "eager":
            out["mlp"] = out["mlp"] + a * B * S * S + a * B * nh * S * S
    if spec.is_moe and spec.moe_layers[-1]:
        k, Im = spec.experts_per_token, spec.moe_intermediate_size
        out["mlp"] = always + 2 * hidden + a * T * k * (H + 3 * Im)
        out["moe_combine"] = always + 2 * hidden + 4 * a * T * k * H
    if attention_used(spec, sc.attention) == "eager":
        scores = _EAGER_PREFILL_SCORES[spec.block_style] * B * nh * S * S
        mask = a * B * S * S * eager_masks(spec)
        repeated = 2 * a * T * nh * hd if spec.num_kv_heads != nh else 0
        q_dim = nh * hd
        held = q_dim                       # the query states
        if spec.qkv_views:                 # q, k and v are views: the fused output stays alive
            held = 2 * q_dim + 2 * spec.num_kv_heads * hd
        elif spec.block_style == "gpt2":   # c_attn's fused output, whose splits q, k and v are
            held = 3 * q_dim
        if spec.is_mla:                    # q, its rotated part, the query states, the latents,
            rope, kv_b = spec.qk_rope_head_dim, nh * (spec.qk_nope_head_dim + spec.v_head_dim)
            held = 3 * q_dim + nh * rope + spec.kv_lora_rank + rope + kv_b   # kv_b's output, the keys
        out["attention"] = always + hidden + mask + scores + a * T * held + repeated
    return out


# ------------------------------------------------------------------------------------
# what a training step keeps at the end of its forward, by block (chapter 03's figures)

#: How chapter 03 groups a layer's saved tensors (:func:`display_block`).
BLOCK_LABELS = ("norms", "attention", "attention S²", "MLP / experts", "autocast weight copies")


def display_block(t: Saved) -> str:
    """The group of a :class:`Saved` record in chapter 03's figures: norms, attention, the
    ``S × S`` score tensors (attention S²), MLP / experts, or autocast weight copies."""
    if t.block == "autocast":
        return "autocast weight copies"
    if is_quadratic(t):
        return "attention S²"
    if t.block == "norms":
        return "norms"
    if t.block == "mlp":
        return "MLP / experts"
    return "attention"


def saved_by_block(spec: ModelSpec, sc: Scenario, tensors: dict | None = None) -> dict:
    """Bytes the decoder layers save, summed over all layers and grouped by :func:`display_block` (chapter 03).

    ``tensors``: ``{moe: layer_tensors(spec, sc, moe)}`` when the caller has them already."""
    out = dict.fromkeys(BLOCK_LABELS, 0)
    n_moe = sum(spec.moe_layers)
    for moe, count in ((False, spec.num_layers - n_moe), (True, n_moe)):
        if count:                         # identical layers: one kind's records, times its count
            records = tensors[moe] if tensors is not None else layer_tensors(spec, sc, moe=moe)
            for t in records.values():
                block = display_block(t)
                out[block] = out[block] + count * t.nbytes
    return out


def model_state_bytes(spec: ModelSpec, precision: str) -> int:
    """Bytes of the parameters in a step's precision (chapter 04): ``params × 2`` (bf16) or ``× 4`` (mixed)."""
    return total_params(spec) * (4 if precision == "mixed" else 2)


@exact_sweeps("batch_size", "seq_len")
def activation_breakdown(model, batch_size, seq_len, precision: str = "bf16", attention: str = "sdpa",
                         recompute: str = "none"):
    """What one training step keeps at the end of its forward pass, by block (chapter 03).

    Components (bytes over the whole model): the decoder layers' saved tensors split into
    ``norms``, ``attention``, ``attention S²`` and ``MLP / experts`` (with
    ``recompute="selective"`` the S² part is dropped; with ``"full"`` only each layer's
    input is kept: ``layer inputs (checkpoints)``), ``outside the layers`` (RoPE tables, final
    norm, labels) and ``loss log-softmax (fp32)``, ``4·T·V``.  The total equals
    ``train_memory(...).meta["activations_saved"]``.

    ``meta`` holds the step's peak from :func:`memlib.training.train_memory` (``train``, the
    Breakdown at the peak, and ``peak``, ``peak_phase``, ``peak_at``), the first layer's
    saved tensors (``per_layer``, ``per_layer_total``, ``per_layer_per_token``), the extra
    bytes one layer's recomputation brings back in the backward (``recompute_extra``, for
    scalar inputs) and the model states (``states``: weights + gradients + optimizer state).
    ``batch_size`` and ``seq_len`` may be numpy arrays (components are then arrays).
    """
    spec = load_spec(model)
    seq_len = check_seq_len(spec, seq_len)
    batch_size = positive_int("batch_size", batch_size)
    choice("recompute", recompute, RECOMPUTE)
    Scenario(1, 1, precision, attention, recompute)      # checks the knobs
    return evaluate(_activation_result, (batch_size, seq_len), spec, precision, attention, recompute)


def _activation_result(batch_size, seq_len, spec: ModelSpec, precision: str, attention: str, recompute: str):
    """:func:`activation_breakdown` for checked knobs (evaluated through :mod:`memlib.symbolic`:
    compiled once per model and knobs)."""
    from .training import checkpointed_inputs, train_memory, train_result    # training imports this module
    sc = Scenario(batch_size, seq_len, precision, attention, recompute)
    if isinstance(batch_size, np.ndarray) or isinstance(seq_len, np.ndarray):   # a sweep: train_memory checks its range
        train = train_memory(spec, batch_size, seq_len, precision=precision, recompute=recompute, attention=attention)
    else:
        train = train_result(batch_size, seq_len, spec, precision=precision, recompute=recompute, attention=attention)
    tensors = {m: layer_tensors(spec, sc, moe=m) for m in set(spec.moe_layers)}
    blocks = saved_by_block(spec, sc, tensors)
    T, H, L = sc.tokens, spec.hidden_size, spec.num_layers
    scalar = traced(T) or np.ndim(T) == 0
    comps: dict = {}
    if recompute == "full":
        comps["layer inputs (checkpoints)"] = L * sc.residual_bytes * T * H + checkpointed_inputs(spec, sc, recompute)
    else:
        copies = blocks["autocast weight copies"]      # shown only where a family saves them
        comps.update({k: v for k, v in blocks.items()
                      if k != "autocast weight copies" or (copies != 0 if scalar else np.any(copies))})
        if recompute == "selective":
            comps["attention S²"] = 0 * blocks["attention S²"]
    ms = model_saved(spec, sc)
    loss = ms.pop("loss.log_softmax_fp32")
    other = 0
    for v in ms.values():
        other = other + v
    comps["outside the layers"] = other
    comps["loss log-softmax (fp32)"] = loss
    first = {k: t.nbytes for k, t in tensors[spec.moe_layers[0]].items()}     # layer_saved of layer 0
    per_layer = sum(first.values())
    full = {m: total_bytes(d) for m, d in tensors.items()}
    if recompute == "full":
        extra = max(full[m] - sc.residual_bytes * T * H for m in full) if scalar else None
    elif recompute == "selective":
        extra = max(total_bytes([t for t in d.values() if is_quadratic(t)]) for d in tensors.values()) \
            if scalar else None
    else:
        extra = 0
    states = (train.meta.get("optimizer_state", 0) + 2 * model_state_bytes(spec, precision)
              if scalar else None)
    meta = {"model": spec.name, "spec": spec, "batch_size": batch_size, "seq_len": seq_len, "precision": precision,
            "attention": attention_used(spec, attention), "attention_requested": attention,
            "recompute": recompute, "tokens": T, "num_layers": L, "hidden_size": H,
            "vocab_size": spec.vocab_size, "per_layer": first, "per_layer_total": per_layer,
            "per_layer_per_token": per_layer // T,
            "recompute_extra": extra, "saved_by_block": blocks, "train": train,
            "peak": train.total, "peak_phase": train.peak_phase if scalar else train.meta.get("peak_phase"),
            "peak_at": train.peak_at, "states": states,
            "max_position_embeddings": spec.max_position_embeddings}
    title = (f"{spec.name} activations saved by the forward, b={batch_size} s={seq_len} {precision} "
             f"{meta['attention']} recompute={recompute}")
    return Breakdown(comps, title=title, kinds="activation", meta=meta)
