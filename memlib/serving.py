"""Serving, engine by engine the same: a GPU's budget, blocks, tokens, requests (chapters 00, 02, 07).

The engine's accounting (vLLM's, SGLang's): ``usable = total × gpu_memory_utilization``;
what is left after the weights and an activation reserve holds the KV cache, in paged
blocks; the number of requests that fit is that budget over one request's KV bytes.
Release-specific rules (what vLLM charges, its profile run, its block arithmetic) live in
:mod:`memlib.vllm`.  Everything here is per GPU: under tensor parallelism (``tp``) a GPU
keeps ``max(1, n_kv/tp)`` KV heads (copies when ``tp > n_kv``) and the whole MLA latent,
and its shard of every weight matrix (:func:`weights_per_gpu`).

The features that change what fits (chapter 07):

* prefix caching shares a prompt's whole blocks between requests (:func:`prefix_cache_kv`);
* parallel sampling and beam search share the prompt's blocks, each sample adds its own
  tokens: :func:`memlib.kv_cache.beam_search_kv` (chapter 02) -- linear in samples;
* preemption frees a request's blocks, by swapping them to host memory or by dropping them
  and recomputing the prefill later (:func:`preemption_cost`);
* a speculative-decoding draft model adds its weights and its KV pages (:func:`draft_model_cost`);
* LoRA adapters get preallocated slots (:func:`lora_slot_bytes`).
"""
from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import numpy as np

from .breakdown import Breakdown
from .hardware import gpu_bytes
from .kv_cache import kv_cache, layer_bytes_per_token
from .lora import resolve_targets
from .params import named_linears, total_params
from .spec import ModelSpec, load_spec
from .units import GB, dtype_bytes
from .validation import as_int, choice, fraction, positive_int
from .weights import _matrix_bytes, weight_memory


def serving_breakdown(model, dtype: str = "bf16", kv_dtype: str = "bf16", batch_size: int = 1,
                      seq_len: int = 8192) -> Breakdown:
    """Weights plus KV cache of ``batch_size`` sequences of ``seq_len`` tokens (chapter 00).

    ``weights = params × bytes(dtype)`` (chapter 01) and ``kv_cache = batch × seq_len ×
    2 · n_layers · n_kv_heads · head_dim · bytes(kv_dtype)`` (chapter 02); activations and
    overheads come later (chapters 03 and 07).
    """
    w = weight_memory(model, dtype)
    kv = kv_cache(model, seq_len=seq_len, batch_size=batch_size, kv_dtype=kv_dtype)
    name = w.title.rsplit(" weights", 1)[0]
    return Breakdown({"weights": w.total, "kv_cache": kv.total},
                     title=f"{name}: {dtype} weights + {kv_dtype} KV, {batch_size} x {seq_len} tokens",
                     kinds={"weights": "model_state", "kv_cache": "kv"},
                     meta={"params": w.meta["params"], "kv_bytes_per_token": kv.meta["bytes_per_token"],
                           "batch_size": batch_size, "seq_len": seq_len})


def max_concurrency(model, seq_len, gpu_memory: int, gpu_memory_utilization: float = 0.9,
                    weight_dtype: str = "bf16", kv_dtype: str = "bf16", activation_reserve: int = 0,
                    block_size: int | None = 16) -> Breakdown:
    """How many requests of ``seq_len`` tokens fit at once (chapter 02 §concurrency).

    ``budget = gpu_memory × gpu_memory_utilization − weights − activation_reserve`` (the
    vLLM accounting); ``requests = ⌊budget / kv_per_request⌋`` with paged blocks of
    ``block_size`` tokens (None for contiguous).  Returns a Breakdown of the used memory
    (``weights``, ``activation_reserve``, ``kv_cache`` for the requests that fit, and
    ``free``) with ``meta["requests"]``.  A model that does not fit gives 0 requests and
    ``meta["reason"]``.
    """
    spec = load_spec(model)
    n = max_requests(spec, seq_len, gpu_memory, gpu_memory_utilization, weight_dtype, kv_dtype,
                     activation_reserve, block_size)
    util = float(gpu_memory_utilization)
    weights = weight_memory(spec, weight_dtype).total
    per_request = kv_cache(spec, seq_len, 1, kv_dtype, block_size=block_size).total
    usable = int(gpu_memory * util)
    budget = usable - weights - activation_reserve
    meta = {"requests": int(n), "kv_per_request": int(per_request), "budget": int(budget),
            "usable": usable, "gpu_memory": gpu_memory, "block_size": block_size}
    if budget <= 0:
        meta["reason"] = (f"weights ({weights / 2**30:.1f} GiB) + reserve exceed "
                          f"{util:.0%} of the GPU ({usable / 2**30:.1f} GiB)")
    comps = {"weights": weights, "activation_reserve": activation_reserve,
             "kv_cache": int(n * per_request), "free": max(usable - weights - activation_reserve - int(n * per_request), 0)}
    return Breakdown(comps, title=f"{spec.name} on {gpu_memory / 1e9:.0f} GB, {seq_len} tokens/request",
                     kinds={"weights": "model_state", "activation_reserve": "activation", "kv_cache": "kv",
                            "free": "overhead"}, meta=meta)


def max_requests(model, seq_len, gpu_memory, gpu_memory_utilization: float = 0.9,
                 weight_dtype: str = "bf16", kv_dtype: str = "bf16", activation_reserve: int = 0,
                 block_size: int | None = 16):
    """Requests of ``seq_len`` tokens that fit at once: the number :func:`max_concurrency`
    reports, vectorised over ``seq_len`` and ``gpu_memory`` (numpy arrays welcome) (chapter 02).

    ``requests = ⌊max(⌊gpu_memory × utilization⌋ − weights − reserve, 0) / kv_per_request⌋``
    with ``kv_per_request = kv_cache(model, seq_len, 1, kv_dtype, block_size=block_size).total``.
    """
    spec = load_spec(model)
    gpu_memory = positive_int("gpu_memory", gpu_memory)
    util = fraction("gpu_memory_utilization", gpu_memory_utilization)
    activation_reserve = positive_int("activation_reserve", activation_reserve, minimum=0)
    weights = weight_memory(spec, weight_dtype).total
    per_request = kv_cache(spec, seq_len, 1, kv_dtype, block_size=block_size).total
    if isinstance(gpu_memory, np.ndarray):
        usable = np.floor(gpu_memory * util).astype(np.int64)
    else:
        usable = int(gpu_memory * util)
    budget = np.maximum(usable - weights - activation_reserve, 0)
    n = budget // per_request
    return n.astype(np.int64) if isinstance(n, np.ndarray) else int(n)


def concurrency(model, gpu, seq_len, gpu_memory_utilization=0.9, weight_dtype="bf16", kv_dtype="bf16",
                block_size=16) -> Breakdown:
    """:func:`max_concurrency` on a GPU named in :data:`memlib.hardware.GPUS` (its runtime total) or given
    in bytes (chapter 02)."""
    mem = gpu_bytes(gpu)
    r = max_concurrency(model, seq_len, mem, gpu_memory_utilization, weight_dtype, kv_dtype,
                        block_size=block_size)
    name = gpu if isinstance(gpu, str) else f"{mem / GB:.0f} GB"
    return replace(r, title=f"{load_spec(model).name} on {name}, {seq_len:,} tokens/request",
                   meta={**r.meta, "gpu": name, "seq_len": seq_len, "gpu_memory_utilization": gpu_memory_utilization,
                         "weight_dtype": weight_dtype, "kv_dtype": kv_dtype})


# -- per GPU under tensor parallelism ------------------------------------------------------

#: Checkpoint quantisations of the served matrices: ``fp8``/``int8`` (one byte per weight and
#: one fp32 scale per output channel, as memlib's ``llm_int8`` format), ``gptq``, ``awq``.
QUANTIZATIONS = (None, "fp8", "int8", "gptq", "awq")
_QUANT_FORMAT = {"fp8": "llm_int8", "int8": "llm_int8", "gptq": "gptq", "awq": "awq"}
_ROW_PARALLEL = ("o", "down", "expert_down", "shared_down")
_REPLICATED = ("q_a", "kv_a")
#: Serving engines pad the embedding and ``lm_head`` rows to a multiple of this.
VOCAB_PADDING = 64


def kv_heads_per_gpu(model, tp: int = 1) -> int:
    """KV heads one GPU keeps under ``tp``-way tensor parallelism: ``max(1, n_kv // tp)``;
    heads are copied when ``tp > n_kv`` (vLLM's ``get_num_kv_heads``; chapter 07)."""
    return max(1, load_spec(model).num_kv_heads // positive_int("tp", tp))


def layer_kv_bytes_per_gpu(model, tp: int = 1, kv_dtype: str = "bf16") -> int:
    """Bytes one layer of one GPU caches per token (chapter 07):
    ``2 · max(1, n_kv/tp) · head_dim · bytes``, or the whole MLA latent
    ``(kv_lora_rank + rope_dim) · bytes`` on every rank (chapter 02's per-layer bytes, sharded)."""
    spec = load_spec(model)
    per_layer = layer_bytes_per_token(spec, kv_dtype)
    if spec.is_mla:
        return per_layer
    return per_layer // spec.num_kv_heads * kv_heads_per_gpu(spec, tp)


def kv_bytes_per_request(model, max_model_len: int, tp: int = 1, kv_dtype: str = "bf16",
                         block_size: int = 16) -> int:
    """KV bytes one request of ``max_model_len`` tokens needs on one GPU, in whole blocks, every
    layer holding the whole context: ``⌈L/bs⌉ · bs · layers · layer_kv_bytes_per_gpu``
    (vLLM's "X GiB KV cache is needed" message; chapter 07)."""
    spec = load_spec(model)
    bs = positive_int("block_size", block_size)
    blocks = -(-positive_int("max_model_len", max_model_len) // bs)
    return blocks * bs * spec.num_layers * layer_kv_bytes_per_gpu(spec, tp, kv_dtype)


def max_model_len_that_fits(model, available_bytes: int, tp: int = 1, kv_dtype: str = "bf16",
                            block_size: int = 16) -> int:
    """The longest request a pool of ``available_bytes`` holds, in whole blocks (chapter 07):
    ``⌊available / (bs · layers · layer_kv_bytes_per_gpu)⌋ · bs``."""
    spec = load_spec(model)
    bs = positive_int("block_size", block_size)
    block = bs * spec.num_layers * layer_kv_bytes_per_gpu(spec, tp, kv_dtype)
    return max(as_int(available_bytes), 0) // block * bs


def _shard(spec: ModelSpec, module: str, rows_in: int, cols_out: int, tp: int) -> tuple[int, int]:
    """``(in, out)`` of the slice of one weight matrix a rank holds (Megatron-style TP)."""
    if module in _REPLICATED:
        return rows_in, cols_out
    if module in _ROW_PARALLEL:
        return -(-rows_in // tp), cols_out
    if module in ("k", "v"):
        return rows_in, kv_heads_per_gpu(spec, tp) * spec.head_dim
    if module == "qkv":
        return rows_in, (spec.num_heads // tp + 2 * kv_heads_per_gpu(spec, tp)) * spec.head_dim
    return rows_in, -(-cols_out // tp)


def _matrices_per_gpu(spec: ModelSpec, tp: int, b: int, quantization: str | None, group_size) -> tuple[int, int]:
    """``(bytes, params)`` of the decoder's weight matrices one of ``tp`` GPUs holds (see :func:`weights_per_gpu`)."""
    mats = mat_params = 0
    for _, module, rows_in, cols_out, count in named_linears(spec):
        mat_params += rows_in * cols_out * count
        r_in, r_out = _shard(spec, module, rows_in, cols_out, tp)
        if quantization is None:
            mats += r_in * r_out * count * b
        else:
            q, extra = _matrix_bytes(_QUANT_FORMAT[quantization], r_in, r_out, group_size, False)
            mats += (q + extra) * count
    return mats, mat_params


@lru_cache(maxsize=512)
def _plain_matrices_per_gpu(spec: ModelSpec, tp: int, b: int) -> tuple[int, int]:
    return _matrices_per_gpu(spec, tp, b, None, None)


def weights_per_gpu(model, dtype: str = "bf16", tp: int = 1, quantization: str | None = None,
                    group_size: int = 128, vocab_padding: int = VOCAB_PADDING, rope_table: bool = True) -> Breakdown:
    """Bytes of the weights one GPU holds, as vLLM (and SGLang) load them (chapter 07).

    Components: ``matrices`` (the decoder's linear layers, :func:`memlib.params.named_linears`:
    column-parallel outputs and row-parallel inputs divided by ``tp``, KV projections kept
    at ``max(1, n_kv/tp)`` heads, MLA's ``q_a``/``kv_a`` replicated), ``vocab`` (embedding
    and untied ``lm_head``, rows padded to a multiple of ``vocab_padding`` and split over
    ``tp``), ``other`` (norms, biases, routers: replicated) and ``rope_cache`` (the cos/sin
    table, ``max_position_embeddings × rotary_dim`` in ``dtype``).  ``quantization``
    (:data:`QUANTIZATIONS`) applies to the matrices only, with chapter 01's formulas.
    With ``tp=1``, no padding and no rope table the sum is :func:`memlib.weight_memory`.
    """
    spec = load_spec(model)
    tp = positive_int("tp", tp)
    choice("quantization", quantization, QUANTIZATIONS)
    b = int(dtype_bytes(choice("dtype", dtype, ("bf16", "fp16", "fp32"))))
    if quantization is None:      # group_size unused: cached per (spec, tp, bytes)
        mats, mat_params = _plain_matrices_per_gpu(spec, tp, b)
    else:
        mats, mat_params = _matrices_per_gpu(spec, tp, b, quantization, group_size)
    V, E = spec.vocab_size, spec.embed_dim
    pad = positive_int("vocab_padding", vocab_padding)
    n_tables = 1 if spec.tie_word_embeddings else 2
    vocab = n_tables * -(-(-(-V // pad) * pad) // tp) * E * b
    other = (total_params(spec) - mat_params - n_tables * V * E) * b
    rotary = spec.qk_rope_head_dim if spec.is_mla else spec.head_dim
    rope = spec.max_position_embeddings * rotary * b if rope_table and not spec.learned_positions else 0
    return Breakdown({"matrices": mats, "vocab": vocab, "other": other, "rope_cache": rope},
                     title=f"{spec.name} weights per GPU (tp={tp})", kinds="model_state",
                     meta={"tp": tp, "dtype": dtype, "quantization": quantization, "model": spec.name})


# -- features that change what fits ----------------------------------------------------------

def prefix_cache_kv(model, prefix_len: int, suffix_len: int, requests: int, tp: int = 1,
                    kv_dtype: str = "bf16", block_size: int = 16) -> Breakdown:
    """KV cache of ``requests`` requests that share a ``prefix_len``-token prompt prefix, with
    prefix caching (chapter 07).

    Only whole blocks are shared: ``shared_prefix = ⌊P/bs⌋·bs`` tokens once; each request
    keeps the rest of its prompt and its ``suffix_len`` own tokens in its own blocks,
    ``private = requests · ⌈(P mod bs + suffix)/bs⌉·bs`` tokens.  ``meta["without_sharing"]``
    is ``requests · ⌈(P + suffix)/bs⌉·bs`` tokens' bytes, ``meta["saved"]`` the difference,
    ``(requests − 1) · ⌊P/bs⌋·bs`` tokens.
    """
    spec = load_spec(model)
    n = positive_int("requests", requests)
    P = positive_int("prefix_len", prefix_len, minimum=0)
    S = positive_int("suffix_len", suffix_len, minimum=0)
    bs = positive_int("block_size", block_size)
    per_token = spec.num_layers * layer_kv_bytes_per_gpu(spec, tp, kv_dtype)
    shared = P // bs * bs
    private = n * -(-(P - shared + S) // bs) * bs
    without = n * -(-(P + S) // bs) * bs
    return Breakdown({"shared_prefix": shared * per_token, "private": private * per_token},
                     title=f"{spec.name}: {n} requests sharing a {P:,}-token prefix", kinds="kv",
                     meta={"without_sharing": without * per_token,
                           "saved": (without - shared - private) * per_token,
                           "bytes_per_token": per_token, "block_size": bs, "requests": n})


def preemption_cost(model, context_len: int, mode: str = "recompute", tp: int = 1, kv_dtype: str = "bf16",
                    block_size: int = 16) -> Breakdown:
    """What preempting one request of ``context_len`` tokens frees, and what it costs (chapter 07).

    The component ``kv_cache`` is the GPU memory freed, ``⌈context/bs⌉`` blocks.  ``swap``
    (vLLM V0 only) copies those blocks to host memory (``meta["cpu_bytes"]``) and back:
    ``meta["pcie_bytes"] = 2 · freed``; ``recompute`` drops them and pays a prefill of
    ``context_len`` tokens when the request resumes (``meta["recompute_tokens"]``).
    """
    choice("mode", mode, ("swap", "recompute"))
    spec = load_spec(model)
    bs = positive_int("block_size", block_size)
    blocks = -(-positive_int("context_len", context_len) // bs)
    freed = blocks * bs * spec.num_layers * layer_kv_bytes_per_gpu(spec, tp, kv_dtype)
    swap = mode == "swap"
    return Breakdown({"kv_cache": freed}, title=f"{spec.name}: preempting {context_len:,} tokens ({mode})",
                     kinds="kv", meta={"mode": mode, "blocks": blocks, "cpu_bytes": freed if swap else 0,
                                       "pcie_bytes": 2 * freed if swap else 0,
                                       "recompute_tokens": 0 if swap else int(context_len)})


def draft_model_cost(target, draft, max_model_len: int, tp: int = 1, dtype: str = "bf16",
                     kv_dtype: str = "bf16", block_size: int = 16) -> Breakdown:
    """What a speculative-decoding draft model adds on one GPU (chapter 07).

    Components: ``draft_weights`` (:func:`weights_per_gpu`) and ``draft_kv`` (the draft's
    KV for one request of ``max_model_len`` tokens).  The draft's layers take pages from the
    same pool, so every cached token costs both models' bytes: the pool holds
    ``meta["token_fraction"] = target / (target + draft)`` as many tokens as without it.
    """
    t, d = load_spec(target), load_spec(draft)
    tw = t.num_layers * layer_kv_bytes_per_gpu(t, tp, kv_dtype)
    dw = d.num_layers * layer_kv_bytes_per_gpu(d, tp, kv_dtype)
    return Breakdown({"draft_weights": weights_per_gpu(d, dtype, tp).total,
                      "draft_kv": kv_bytes_per_request(d, max_model_len, tp, kv_dtype, block_size)},
                     title=f"{d.name} drafting for {t.name}", kinds={"draft_weights": "model_state", "draft_kv": "kv"},
                     meta={"target_kv_bytes_per_token": tw, "kv_bytes_per_token": tw + dw,
                           "token_fraction": tw / (tw + dw)})


def lora_slot_bytes(model, max_loras: int = 1, max_lora_rank: int = 16, tp: int = 1, dtype: str = "bf16",
                    targets="all-linear") -> int:
    """Bytes of the LoRA slots a serving engine preallocates on one GPU (chapter 07).

    Every targeted projection (chapter 04's :func:`memlib.lora.resolve_targets`; MoE experts
    excluded) of every layer gets, per slot, ``A (r × in)`` and ``B (out × r)``;
    column-parallel layers shard ``out``, row-parallel ones ``in``:
    ``Σ max_loras · r · (in_rank + out_rank) · b``.
    """
    spec = load_spec(model)
    n = positive_int("max_loras", max_loras)
    r = positive_int("max_lora_rank", max_lora_rank)
    tp = positive_int("tp", tp)
    b = int(dtype_bytes(choice("dtype", dtype, ("bf16", "fp16", "fp32"))))
    chosen = set(resolve_targets(spec, targets))
    total = 0
    for comp, module, rows_in, cols_out, count in named_linears(spec):
        if module in chosen and comp != "experts":
            r_in, r_out = _shard(spec, module, rows_in, cols_out, tp)
            total += n * r * (r_in + r_out) * b * count
    return total
