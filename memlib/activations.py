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
are listed in :func:`layer_saved`.  Every entry names a tensor the bench sees
(``memlib.measure``); chapter 03 walks through them.

All sizes are bytes (ints, or integer numpy arrays when ``batch_size``/``seq_len`` are
arrays).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .params import layer_linear_params
from .spec import ModelSpec
from .validation import choice

PRECISIONS = ("bf16", "mixed")
ATTENTIONS = ("sdpa", "eager")
RECOMPUTE = ("none", "selective", "full")


DEVICES = ("cuda", "cpu")


@dataclass(frozen=True)
class Scenario:
    """The knobs of one training or prefill step (``B`` sequences of ``S`` tokens).

    ``device`` matters for one detail only: a dropout mask is a 1-byte bool tensor on
    CUDA but has the activation's dtype on the CPU (where the bench measures).
    """

    batch_size: object
    seq_len: object
    precision: str = "bf16"      # "bf16": everything bf16; "mixed": fp32 master + autocast bf16
    attention: str = "sdpa"      # "sdpa" (flash / memory-efficient kernel) or "eager"
    device: str = "cuda"

    def __post_init__(self):
        choice("precision", self.precision, PRECISIONS)
        choice("attention", self.attention, ATTENTIONS)
        choice("device", self.device, DEVICES)

    @property
    def tokens(self):
        return self.batch_size * self.seq_len

    @property
    def residual_bytes(self) -> int:
        """Bytes per element of the residual stream: the parameter dtype (fp32 under mixed)."""
        return 4 if self.precision == "mixed" else 2

    @property
    def mixed(self) -> bool:
        return self.precision == "mixed"

    def mask_bytes(self, dtype_bytes: int = 2) -> int:
        """Bytes per element of a dropout mask."""
        return 1 if self.device == "cuda" else dtype_bytes


def attention_used(spec: ModelSpec, attention: str) -> str:
    """The attention implementation transformers really runs (Gemma 2 has no SDPA path)."""
    if attention == "sdpa" and spec.model_type == "gemma2":
        return "eager"
    return attention


# ------------------------------------------------------------------------------------
# building blocks: each adds {tensor: bytes} entries to ``out``


def _rmsnorm(out: dict, prefix: str, spec: ModelSpec, sc: Scenario, width: int, rows, consumers: int):
    """One RMSNorm over ``rows × width`` feeding ``consumers`` linears.

    transformers computes ``w * (x.float() * rsqrt(mean(x²) + eps)).to(x.dtype)``: the
    fp32 copy of ``x`` and ``rsqrt`` are saved, the normalised tensor is saved for the
    weight's gradient, and the output is saved by the linears that read it.  Under mixed
    precision ``x`` is already fp32 (the copy is ``x`` itself), the normalised tensor stays
    fp32, and autocast casts the output to bf16 once per consumer.  Gemma 2 multiplies
    by ``(1 + w)`` in fp32 and casts the product back.
    """
    r = sc.residual_bytes
    out[f"{prefix}.input_fp32"] = 4 * rows * width
    out[f"{prefix}.rsqrt"] = 4 * rows
    out[f"{prefix}.normalised"] = (4 if spec.model_type == "gemma2" else r) * rows * width
    if spec.model_type == "gemma2":
        out[f"{prefix}.one_plus_w_fp32"] = 4 * width
    if consumers:
        out[f"{prefix}.output"] = (2 * consumers if sc.mixed else r) * rows * width


def _layernorm(out: dict, prefix: str, sc: Scenario, width: int, rows, consumers: int):
    """One LayerNorm (GPT-2, OPT, Falcon): its input, mean and rstd, and its output.

    Under CUDA autocast ``layer_norm`` runs in fp32, so its output is cast to bf16 once
    per consumer; in bf16 the one output is shared.
    """
    r = sc.residual_bytes
    out[f"{prefix}.input"] = r * rows * width
    out[f"{prefix}.mean_rstd"] = 2 * r * rows
    if consumers:
        out[f"{prefix}.output"] = (2 * consumers if sc.mixed else r) * rows * width


def _dropout_mask(out: dict, name: str, sc: Scenario, p: float, numel, dtype_bytes: int = 2):
    if p > 0:
        out[name] = sc.mask_bytes(dtype_bytes) * numel


def _scores(out: dict, spec: ModelSpec, sc: Scenario, softmax_bytes: int, copy_bytes: int = 0):
    """Eager attention's saved ``B × heads × S × S`` tensors: the softmax output, the copy
    the next matmul reads (if any), and with attention dropout its mask and output."""
    n = sc.batch_size * spec.num_heads * sc.seq_len * sc.seq_len
    out["attn.softmax"] = softmax_bytes * n
    if spec.attention_dropout > 0:
        _dropout_mask(out, "attn.dropout_mask", sc, spec.attention_dropout, n)
        out["attn.dropout_out"] = 2 * n
    elif copy_bytes:
        out["attn.probs_bf16"] = copy_bytes * n
    if spec.attn_softcap:
        out["attn.softcap_tanh"] = 2 * n       # tanh's output is saved for its backward


def _standard_attention(out: dict, spec: ModelSpec, sc: Scenario):
    """Multi-, grouped- or multi-query attention of the Llama family."""
    B, S, T = sc.batch_size, sc.seq_len, sc.tokens
    nh, nkv, hd = spec.num_heads, spec.num_kv_heads, spec.head_dim
    q, kv = nh * hd, nkv * hd
    if spec.qk_norm:  # Qwen3: RMSNorm per head on q and k, before RoPE (bf16 matmul outputs)
        for name, width, heads in (("q_norm", q, nh), ("k_norm", kv, nkv)):
            out[f"attn.{name}.input_fp32"] = 4 * T * width
            out[f"attn.{name}.rsqrt"] = 4 * T * heads
            out[f"attn.{name}.normalised"] = 2 * T * width
    if attention_used(spec, sc.attention) == "sdpa":
        # SDPA saves q, k, v (bf16: autocast casts fp32 q/k), its output and logsumexp
        out["attn.q"] = 2 * T * q
        out["attn.k"] = 2 * T * kv
        out["attn.v"] = 2 * T * kv
        out["attn.out"] = 2 * T * q
        out["attn.logsumexp"] = 4 * B * nh * S
        if spec.sliding_window and spec.num_sliding_layers:
            # from the window on, the causal mask is no longer implicit: each layer builds and
            # saves a (B, 1, S, S) additive mask, and with a mask transformers repeats K and V
            # to every query head instead of using SDPA's grouped-query mode
            beyond = S >= spec.sliding_window
            out["attn.sliding_mask"] = 2 * B * S * S * beyond
            out["attn.k"] = out["attn.v"] = 2 * T * (kv + (q - kv) * beyond)
        if spec.model_type == "phi3":
            # v is a view of the fused qkv output: the whole qkv tensor stays alive, and the
            # output is copied before o_proj
            out["attn.v"] = 2 * T * (q + 2 * kv)
            out["attn.out_copy"] = 2 * T * q
    else:
        # eager: q and K/V repeated to every head are made contiguous for the matmuls;
        # softmax in fp32, then a bf16 copy for the matmul with v
        out["attn.q"] = 2 * T * q
        out["attn.k"] = 2 * T * (q if nkv != nh else kv)
        out["attn.v"] = 2 * T * (q if nkv != nh else kv)
        if spec.model_type == "phi3":
            # at batch 1 the matmul reads v (a view of the fused qkv output) without a copy,
            # which keeps the whole qkv tensor alive
            out["attn.v"] = out["attn.v"] + (B == 1) * 2 * T * (q + kv)
        _scores(out, spec, sc, softmax_bytes=4, copy_bytes=2)
        out["attn.out"] = 2 * T * q


def _latent_attention(out: dict, spec: ModelSpec, sc: Scenario):
    """Multi-head latent attention (DeepSeek): low-rank q and kv paths with their norms."""
    B, S, T = sc.batch_size, sc.seq_len, sc.tokens
    nh, qhd = spec.num_heads, spec.qk_nope_head_dim + spec.qk_rope_head_dim
    if spec.q_lora_rank:
        _rmsnorm(out, "attn.q_a_norm", spec, sc, spec.q_lora_rank, T, consumers=1)
    _rmsnorm(out, "attn.kv_a_norm", spec, sc, spec.kv_lora_rank, T, consumers=1)
    out["attn.q"] = 2 * T * nh * qhd             # q_pass and rotated q_rot, concatenated
    out["attn.k"] = 2 * T * nh * qhd             # k_pass and the shared k_rot, per head
    out["attn.v"] = 2 * T * nh * spec.v_head_dim
    if attention_used(spec, sc.attention) == "sdpa":
        out["attn.logsumexp"] = 4 * B * nh * S
    else:
        _scores(out, spec, sc, softmax_bytes=4, copy_bytes=2)
    out["attn.out"] = 2 * T * nh * spec.v_head_dim


def _gated_mlp(out: dict, sc: Scenario, width: int, rows, prefix="mlp"):
    """A SwiGLU MLP over ``rows`` tokens keeps gate, up, act(gate) and act·up."""
    for name in ("gate", "up", "act", "act_times_up"):
        out[f"{prefix}.{name}"] = 2 * rows * width


def _moe(out: dict, spec: ModelSpec, sc: Scenario):
    """A routed MoE block as transformers runs it (grouped matmuls over gathered tokens)."""
    T, H, E, k = sc.tokens, spec.hidden_size, spec.num_experts, spec.experts_per_token
    if spec.model_type.startswith("deepseek"):   # the router casts its input and weight to fp32
        if sc.mixed:                             # ... which autocast casts back to bf16 for the matmul
            out["moe.router_input"] = 2 * T * H
        else:
            out["moe.router_input_fp32"] = 4 * T * H
            out["moe.router_weight_fp32"] = 4 * E * H
    out["moe.router_probs_fp32"] = 4 * T * E
    out["moe.routing_indices"] = 4 * 8 * T * k          # top-k, sort, expert ids, positions (int64)
    out["moe.routing_weights"] = 2 * T * k
    out["moe.tokens_gathered"] = 2 * T * k * H
    _gated_mlp(out, sc, spec.moe_intermediate_size, T * k, prefix="moe.experts")
    out["moe.experts.down_out"] = 2 * T * k * H
    if spec.shared_intermediate_size:
        _gated_mlp(out, sc, spec.shared_intermediate_size, T, prefix="moe.shared")


def _decoder_layer(spec: ModelSpec, sc: Scenario, moe: bool) -> dict:
    """Llama-style layers: Llama, Mistral, Mixtral, Qwen2/3 (+MoE), Phi-3, Gemma 2, DeepSeek."""
    out: dict = {}
    T, H = sc.tokens, spec.hidden_size
    fused = spec.model_type == "phi3"
    consumers_in = 2 if spec.is_mla else 1 if fused else 3
    _rmsnorm(out, "input_norm", spec, sc, H, T, consumers=consumers_in)
    (_latent_attention if spec.is_mla else _standard_attention)(out, spec, sc)
    if spec.model_type == "gemma2":
        _rmsnorm(out, "post_attn_norm", spec, sc, H, T, consumers=0)
        _rmsnorm(out, "pre_mlp_norm", spec, sc, H, T, consumers=2)
        _rmsnorm(out, "post_mlp_norm", spec, sc, H, T, consumers=0)
    else:
        _rmsnorm(out, "post_attn_norm", spec, sc, H, T, consumers=1 if fused else 2)
    if moe:
        _moe(out, spec, sc)
    else:
        _gated_mlp(out, sc, spec.intermediate_size, T)
    return out


def _gpt2_layer(spec: ModelSpec, sc: Scenario, moe: bool = False) -> dict:
    """GPT-2: LayerNorms, fused qkv with biases, dropout everywhere, tanh-GELU MLP."""
    out: dict = {}
    T, H, I = sc.tokens, spec.hidden_size, spec.intermediate_size
    _layernorm(out, "ln_1", sc, H, T, consumers=1)
    out["attn.q"] = out["attn.k"] = out["attn.v"] = 2 * T * H   # heads split, made contiguous
    if attention_used(spec, sc.attention) == "sdpa":
        out["attn.logsumexp"] = 4 * sc.batch_size * spec.num_heads * sc.seq_len
    else:
        _scores(out, spec, sc, softmax_bytes=4 if sc.mixed else 2, copy_bytes=2 if sc.mixed else 0)
    out["attn.out"] = 2 * T * H
    _dropout_mask(out, "attn.resid_dropout_mask", sc, spec.hidden_dropout, T * H)
    _layernorm(out, "ln_2", sc, H, T, consumers=1)
    # gelu_new = 0.5·x·(1 + tanh(c·(x + 0.044715·x³))): x (fp32 for pow under CUDA autocast),
    # tanh, 1 + tanh, 0.5·x and the product are saved
    out["mlp.fc_in"] = (4 if sc.mixed else 2) * T * I
    out["mlp.tanh"] = (4 if sc.mixed else 2) * T * I
    out["mlp.one_plus_tanh"] = (4 if sc.mixed else 2) * T * I
    out["mlp.half_x"] = 2 * T * I
    out["mlp.gelu_out"] = 2 * T * I
    _dropout_mask(out, "mlp.resid_dropout_mask", sc, spec.hidden_dropout, T * H)
    return out


def _opt_layer(spec: ModelSpec, sc: Scenario, moe: bool = False) -> dict:
    """OPT: pre-LayerNorm, separate q/k/v with biases, ReLU MLP, dropout after each block."""
    out: dict = {}
    T, H, I = sc.tokens, spec.hidden_size, spec.intermediate_size
    _layernorm(out, "ln_attn", sc, H, T, consumers=3)
    out["attn.q"] = out["attn.k"] = out["attn.v"] = 2 * T * H
    if attention_used(spec, sc.attention) == "sdpa":
        out["attn.logsumexp"] = 4 * sc.batch_size * spec.num_heads * sc.seq_len
    else:
        _scores(out, spec, sc, softmax_bytes=4, copy_bytes=2)
    out["attn.out"] = 2 * T * H
    _dropout_mask(out, "attn.dropout_mask", sc, spec.hidden_dropout, T * H)
    _layernorm(out, "ln_mlp", sc, H, T, consumers=1)
    out["mlp.relu"] = 2 * T * I
    _dropout_mask(out, "mlp.dropout_mask", sc, spec.hidden_dropout, T * H)
    return out


def _falcon_layer(spec: ModelSpec, sc: Scenario, moe: bool = False) -> dict:
    """Falcon: one LayerNorm feeds attention and MLP in parallel; K/V broadcast to every head."""
    out: dict = {}
    T, H, I = sc.tokens, spec.hidden_size, spec.intermediate_size
    nh, nkv, hd = spec.num_heads, spec.num_kv_heads, spec.head_dim
    if spec.norms_per_layer == 2:     # new_decoder_architecture: one LayerNorm per branch
        _layernorm(out, "ln_attn", sc, H, T, consumers=1)
        _layernorm(out, "ln_mlp", sc, H, T, consumers=1)
        del out["ln_mlp.input"]          # both read the same input tensor
    else:
        _layernorm(out, "ln", sc, H, T, consumers=2)
    if attention_used(spec, sc.attention) == "sdpa":
        out["attn.q"] = 2 * T * nh * hd
        out["attn.k"] = out["attn.v"] = 2 * T * nkv * hd
        out["attn.logsumexp"] = 4 * sc.batch_size * nh * sc.seq_len
    else:
        out["attn.q"] = 2 * T * nh * hd
        # K/V are broadcast to every head; the matmul copies the expansion, except at batch 1
        out["attn.k"] = out["attn.v"] = 2 * T * (nh * hd - (sc.batch_size == 1) * (nh - nkv) * hd)
        # softmax in the hidden states' dtype: bf16, or fp32 + a bf16 copy under mixed
        _scores(out, spec, sc, softmax_bytes=4 if sc.mixed else 2, copy_bytes=2 if sc.mixed else 0)
    out["attn.out"] = 2 * T * nh * hd
    out["mlp.fc_out"] = 2 * T * I
    out["mlp.gelu"] = 2 * T * I
    if sc.mixed:
        # FalconLinear computes `x @ W.T`: autocast casts the view W.T, which it does not
        # cache, and the matmul saves the bf16 copy for its backward
        out["autocast.weight_copies"] = 2 * layer_linear_params(spec)
    return out


_LAYERS = {"gpt2": _gpt2_layer, "opt": _opt_layer, "falcon": _falcon_layer,
           "RefinedWeb": _falcon_layer, "RefinedWebModel": _falcon_layer}


def layer_saved(spec: ModelSpec, sc: Scenario, moe: bool = False) -> dict:
    """Bytes autograd keeps for one decoder layer until its backward: ``{tensor: bytes}``.

    The formula for a dense Llama-style layer is in the module docstring; each family's
    own tensors are added by its function above.  Chapter 03 §"what training saves"
    derives them one by one.
    """
    return _LAYERS.get(spec.model_type, _decoder_layer)(spec, sc, moe)


def causal_mask_bytes(spec: ModelSpec, sc: Scenario):
    """The (B, 1, S, S) additive mask the model builds once per forward, in the parameters'
    dtype, when the mask cannot stay implicit: eager attention, or SDPA from a sliding
    window's length on.  It lives through the forward (and, under full recompute, as a
    checkpoint input through the backward)."""
    B, S = sc.batch_size, sc.seq_len
    explicit = attention_used(spec, sc.attention) == "eager" and spec.model_type not in ("falcon", "gpt2")
    if spec.sliding_window and spec.num_sliding_layers and attention_used(spec, sc.attention) == "sdpa":
        explicit = S >= spec.sliding_window
    return sc.residual_bytes * B * S * S * explicit


def model_saved(spec: ModelSpec, sc: Scenario) -> dict:
    """Bytes kept outside the decoder layers: RoPE tables, final norm, loss.

    The loss keeps the fp32 log-softmax of the logits, ``4·T·V`` bytes: transformers
    upcasts the logits to fp32 before the cross-entropy (chapter 03 §logits).
    """
    S, T, H = sc.seq_len, sc.tokens, spec.hidden_size
    out = {}
    if spec.is_mla:            # complex rotary frequencies, fp32 pairs
        out["rope.cos_sin"] = 8 * S * (spec.qk_rope_head_dim // 2)
    elif not spec.learned_positions:
        out["rope.cos_sin"] = 2 * S * spec.head_dim * (4 if sc.mixed else 2)
    else:
        out["rope.cos_sin"] = 0
    if spec.norm == "layer":
        _layernorm(out, "final_norm", sc, H, T, consumers=1)
    else:
        _rmsnorm(out, "final_norm", spec, sc, H, T, consumers=1)
    _dropout_mask(out, "embedding.dropout_mask", sc, spec.embedding_dropout, T * H)
    if spec.final_softcap:
        out["loss.softcap_tanh"] = 2 * T * spec.vocab_size
    out["loss.log_softmax_fp32"] = 4 * T * spec.vocab_size
    out["loss.shifted_labels"] = 8 * T
    return out


# ------------------------------------------------------------------------------------
# inference: the prefill's transient tensors (nothing is saved for a backward)


def prefill_transients(spec: ModelSpec, sc: Scenario, dtype_bytes: int = 2) -> dict:
    """Candidates for the transient peak of a prefill, above the weights and the KV cache.

    Under ``torch.no_grad()`` a tensor lives only while a Python variable holds it.  In the
    last layer (where the cache is complete) transformers holds the embedding output
    (``inputs_embeds``), the layer's input, its residual and the norm output, plus:

    * in the MLP: ``act(gate)``, ``up`` and their product, ``3·T·I`` values (GPT-2's tanh
      GELU keeps 4 intermediate ``T·I`` tensors, OPT's ReLU and Falcon's GELU 2);
    * in an MoE block, when the experts' outputs are combined: the gathered tokens, the
      experts' outputs, their weighted copy and the scattered result, ``4·T·k·H``;
    * in eager attention: the masked scores (bf16), their fp32 copy and the fp32 softmax,
      ``10·B·n_heads·S²`` bytes, plus the causal mask.  GPT-2 and Falcon keep the softmax
      in bf16: GPT-2 holds the scaled scores, the masked scores and the softmax (6);
      Falcon, whose K/V head is broadcast to every query head, 8.

    Returns ``{candidate: bytes}``; the peak is the largest (chapter 03 §inference).
    """
    a = dtype_bytes
    B, S, T = sc.batch_size, sc.seq_len, sc.tokens
    H, I, nh, hd = spec.hidden_size, spec.intermediate_size, spec.num_heads, spec.head_dim
    hidden = a * T * H
    rope_hd = spec.qk_rope_head_dim if spec.is_mla else hd
    always = hidden + (hidden if spec.num_layers > 1 else 0) + 8 * S   # inputs_embeds, layer input, positions
    if spec.learned_positions:          # GPT-2 keeps a (1, S, H) position output, OPT a (B, S, H) one
        always = always + a * (T if spec.model_type == "opt" else S) * H
    else:
        always = always + 2 * a * S * rope_hd                              # RoPE cos and sin
    out = {}
    if spec.model_type == "falcon":      # parallel attention: its output waits for the MLP
        out["mlp"] = always + 2 * hidden + 2 * a * T * I
    elif spec.gated_mlp:
        out["mlp"] = always + 2 * hidden + 3 * a * T * I
    else:
        out["mlp"] = always + 2 * hidden + (4 if spec.model_type == "gpt2" else 2) * a * T * I
    if spec.is_moe and spec.moe_layers[-1]:
        k, Im = spec.experts_per_token, spec.moe_intermediate_size
        out["mlp"] = always + 2 * hidden + a * T * k * (H + 3 * Im)
        out["moe_combine"] = always + 2 * hidden + 4 * a * T * k * H
    if attention_used(spec, sc.attention) == "eager":
        scores = {"falcon": 8, "gpt2": 6}.get(spec.model_type, 10) * B * nh * S * S
        mask = a * B * S * S
        repeated = 2 * a * T * nh * hd if spec.num_kv_heads != nh else 0
        out["attention"] = always + hidden + mask + scores + a * T * nh * hd + repeated
    return out
