"""What vLLM reserves on each GPU, and how many tokens its KV cache then holds (chapter 07).

vLLM starts by measuring, then hands what is left of a budget to the KV cache::

    budget      = total_gpu_memory × gpu_memory_utilization
    available   = budget − weights − activation_peak − non_torch [− cuda_context] [− cuda_graphs]
    num_blocks  = ⌊available / (block_size × Σ_layers kv_bytes_per_token_per_layer)⌋
    kv_tokens   = num_blocks × block_size
    concurrency = num_blocks / ⌈max_model_len / block_size⌉        (vLLM ≥ 0.9.1; see below)

Which terms are charged, and how each is measured, changed between releases (the
``family`` of :func:`accounting_family`; ``data/serving/VLLM_ACCOUNTING.md`` cites the
source lines of every release):

* ``v0-total-used`` (V0, < 0.3.1): everything in use after the profile run, CUDA context
  and other processes included;
* ``v0-init-free`` (V0, 0.3.1 - 0.6.3): the drop in free memory since the worker started
  (the CUDA context already existed, so it is *not* charged);
* ``torch-peak`` (V0 0.6.4, and V1 0.7.0 - 0.9.0): torch's allocated peak (weights
  included) plus all non-torch memory in use, CUDA context included;
* ``profiling`` (V0 ≥ 0.6.5, V1 0.9.1 - 0.20): weights + torch peak *increase* + non-torch
  *increase* since the worker started (context not charged);
* ``profiling+graphs`` (V1 ≥ 0.21): as ``profiling``, minus an estimate of the CUDA-graph
  memory (``VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS``, on by default since 0.21).

Before 0.21 the CUDA graphs are captured *after* the KV cache is allocated, so they sit on
top of the budget (``meta["outside_budget"]``).

The profile run executes one forward of ``max_num_batched_tokens`` tokens spread over
``S = min(max_num_seqs, max_num_batched_tokens)`` dummy requests, then samples one token
for each.  memlib models its torch peak as the larger of two phases (per GPU, ``b`` bytes
per activation, ``T`` tokens, ``tp`` tensor-parallel ranks)::

    forward = T · b · max(3H + (2·n_q/tp + 2·n_kv/tp)·d,     # attention block
                          3H + 3·I/tp)                       # gated MLP (MoE: k·3·I_e/tp)
    sampler = T·H·b + S·V·c                                  # c = 38 B (sort) or 10 B

The MLP term holds the residual, the normed input, ``gate_up`` (2I), the activation (I)
and ``down``'s output at once; the sampler holds the final hidden states and, per logit,
the bf16 logits (2 B), their fp32 copy (4), the sorted values and indices (12) and the
sort's scratch (20) in the top-k/top-p path that the dummy requests take
(``top_k = V-1, top_p < 1``).  FlashInfer's and the Triton top-k/top-p kernels do not
sort: ``c = 10`` (bf16 + fp32 logits + probabilities).

Non-torch memory (cuBLAS workspaces, NCCL and custom all-reduce buffers, attention
workspaces) and the CUDA context are not derived: they are medians of what real logs
printed (``data/serving/OVERHEADS.md``), and the API lets you pass your own.

Everything here is per GPU.  ``tp`` shards attention heads, MLP and expert widths and
the vocabulary; KV heads are copied when ``tp > n_kv_heads`` and the MLA latent is
replicated on every rank.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from .breakdown import Breakdown
from .hardware import GPU, get_gpu
from .kv_cache import beam_search_kv
from .params import count_params, named_linears
from .spec import ModelSpec, load_spec
from .validation import choice, fraction, positive_int

GIB = 2**30

ENGINES = ("v0", "v1")
KV_DTYPES = ("auto", "bf16", "fp16", "fp8", "fp8_e4m3", "fp8_e5m2")
DTYPES = ("bf16", "fp16", "fp32")
QUANTIZATIONS = (None, "fp8", "gptq", "awq")
SAMPLERS = ("sort", "flashinfer", "triton")
USAGES = ("serve", "llm")
FAMILIES = ("v0-total-used", "v0-init-free", "torch-peak", "profiling", "profiling+graphs")

#: Bytes per logit the dummy sampling step holds at its peak (see the module docstring).
SAMPLER_BYTES_PER_LOGIT = {"sort": 38, "flashinfer": 10, "triton": 10}

#: Non-torch memory measured by vLLM's profiler, per GPU: the median of the logs in
#: ``data/serving/OVERHEADS.md`` (tp = 1: 0.01-0.28 GiB over 9 logs, median 0.07;
#: tp > 1: 0.20 GiB in all 3 logs).  A measured range, not a derivation.
NON_TORCH_TP1 = int(0.07 * GIB)
NON_TORCH_TPN = int(0.20 * GIB)
#: CUDA context charged by the ``torch-peak`` family: 0.35 GiB of non-torch memory on an
#: RTX 3090 under vLLM 0.6.4 (vllm#10517) minus the 0.07 GiB tp = 1 median above.  This
#: constant is calibrated on that log (so logs 02/03 cannot test it); a second, independent
#: reading (A100 40GB, vLLM 0.9.2: process total minus budget minus CUDA graphs) gives 0.45 GiB.
CUDA_CONTEXT = int(0.28 * GIB)
#: CUDA-graph memory printed by "Graph capturing finished in N secs, took X GiB"
#: (medians of the logs in OVERHEADS.md): V0 captures decode graphs only, V1 piecewise
#: graphs of the whole model.
CUDA_GRAPHS = {"v0": int(0.27 * GIB), "v1": int(0.74 * GIB)}
#: vLLM pads the vocabulary of its embedding and lm_head to a multiple of this.
VOCAB_PADDING = 64


# ---------------------------------------------------------------------------------------
# versions, engines, defaults


def parse_version(version) -> tuple[int, int, int]:
    """``"0.6.4.post1"`` -> ``(0, 6, 4)``; ``"0.19"`` -> ``(0, 19, 0)`` (chapter 07)."""
    if isinstance(version, tuple):
        return tuple(version) + (0,) * (3 - len(version))
    m = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?", str(version).strip())
    if not m:
        raise ValueError(f"vllm_version: cannot read {version!r}; give e.g. '0.6.4' or '0.19'")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def default_engine(vllm_version) -> str:
    """The engine a release runs by default: V1 from 0.8.0 (V0 is gone in 0.11), else V0 (chapter 07)."""
    return "v1" if parse_version(vllm_version) >= (0, 8, 0) else "v0"


def accounting_family(vllm_version, engine: str | None = None) -> str:
    """How a release measures its non-KV memory (module docstring; chapter 07)."""
    v = parse_version(vllm_version)
    engine = choice("engine", engine or default_engine(v), ENGINES)
    if engine == "v0":
        if v >= (0, 11, 0):
            raise ValueError("engine: V0 was removed in vLLM 0.11; allowed for this version: v1")
        if v < (0, 3, 1):
            return "v0-total-used"
        if v < (0, 6, 4):
            return "v0-init-free"
        if v < (0, 6, 5):
            return "torch-peak"
        return "profiling"
    if v < (0, 7, 0):
        raise ValueError("engine: V1 exists from vLLM 0.7.0; allowed for this version: v0")
    if v < (0, 9, 1):
        return "torch-peak"
    if v < (0, 21, 0):
        return "profiling"
    return "profiling+graphs"


def scheduler_defaults(vllm_version, engine: str, gpu_bytes: int, gpu_name: str, max_model_len: int,
                       usage: str = "serve", tp: int = 1, long_context_chunking: bool = True):
    """``(max_num_batched_tokens, max_num_seqs)`` a release picks when you set neither (chapter 07).

    V0: ``max(max_model_len, 2048)``, or with chunked prefill (on by default above 32K
    tokens) 512 before 0.6.5 and 2048 after; 256 sequences.  V1: 8192 (serve) / 16384
    (``LLM``) tokens and 1024 sequences on GPUs of >= 70 GiB (A100 excluded from 0.9),
    else 2048 / 8192 tokens and 256 sequences (1024 sequences everywhere before 0.8.4).
    ``tp`` does not enter on CUDA.
    """
    v = parse_version(vllm_version)
    choice("usage", usage, USAGES)
    if engine == "v0":
        chunked = long_context_chunking and max_model_len > 32768
        if chunked:
            return (512 if v < (0, 6, 5) else 2048), 256
        return max(max_model_len, 2048), 256
    big = gpu_bytes >= 70 * GIB and not (v >= (0, 9, 0) and "a100" in gpu_name.lower())
    if v < (0, 8, 0):
        big = any(k in gpu_name.lower() for k in ("h100", "h200"))
    tokens = (16384 if usage == "llm" else 8192) if big else (8192 if usage == "llm" else 2048)
    if v >= (0, 28, 0) and gpu_bytes >= 160 * GIB:        # absent in 0.25.0, present in 0.28.0
        tokens = 16384
    seqs = 1024 if (big or (0, 8, 0) <= v < (0, 8, 4)) else 256
    if v < (0, 8, 0):
        seqs = 256
    return tokens, seqs


def default_sampler(vllm_version, engine: str) -> str:
    """Which top-k/top-p path the profile's dummy sampling takes by default (chapter 07).

    V0 and V1 up to 0.18 sort (V1 0.8-0.11 uses FlashInfer only where it is installed: pass
    ``sampler="flashinfer"`` when the log says "Using FlashInfer for top-p & top-k
    sampling"); V1 from 0.19 runs a Triton kernel that does not sort.
    """
    if engine == "v1" and parse_version(vllm_version) >= (0, 19, 0):
        return "triton"
    return "sort"


# ---------------------------------------------------------------------------------------
# weights per GPU


def _act_bytes(dtype: str) -> int:
    return {"bf16": 2, "fp16": 2, "fp32": 4}[choice("dtype", dtype, DTYPES)]


def _kv_heads_per_rank(spec: ModelSpec, tp: int) -> int:
    """vLLM's ``get_num_kv_heads``: ``max(1, n_kv // tp)`` (KV heads copied when tp > n_kv)."""
    return max(1, spec.num_kv_heads // tp)


def _rank_out(spec: ModelSpec, module: str, out: int, tp: int) -> int:
    """Output width one rank holds of a column-parallel matrix."""
    if module in ("k", "v"):
        return _kv_heads_per_rank(spec, tp) * spec.head_dim
    if module == "qkv":
        return (spec.num_heads // tp + 2 * _kv_heads_per_rank(spec, tp)) * spec.head_dim
    return -(-out // tp)


_ROW_PARALLEL = ("o", "down", "expert_down", "shared_down")
_REPLICATED = ("q_a", "kv_a")


def _matrix_bytes(fmt: str, rows_in: int, cols_out: int, group_size: int = 128) -> int:
    """Bytes of one ``in × out`` weight matrix stored as ``fmt`` (chapter 01's formulas).

    ``gptq``: n/2 + groups·out·2 (fp16 scales) + groups·out/2 (4-bit zeros) + 4·in (g_idx);
    ``awq`` the same without g_idx; ``fp8``: n + 4·out (one fp32 scale per output channel).
    """
    n = rows_in * cols_out
    if fmt == "fp8":
        return n + 4 * cols_out
    groups = -(-rows_in // group_size)
    b = n // 2 + groups * cols_out * 2 + groups * cols_out // 2
    return b + 4 * rows_in if fmt == "gptq" else b


def weights_per_gpu(model, dtype: str = "bf16", tp: int = 1, quantization: str | None = None,
                    group_size: int = 128) -> Breakdown:
    """Bytes of the weights one GPU holds, as vLLM loads them (chapter 07).

    Components: ``matrices`` (the decoder's linear layers, sharded: column-parallel
    outputs and row-parallel inputs divided by ``tp``, KV projections kept at
    ``max(1, n_kv/tp)`` heads, MLA's ``q_a``/``kv_a`` replicated), ``vocab`` (embedding
    and untied ``lm_head``, padded to a multiple of 64 rows and split over ``tp``),
    ``other`` (norms, biases, routers: replicated) and ``rope_cache`` (vLLM's cos/sin
    table, ``max_position_embeddings × rotary_dim`` in the model dtype).  ``quantization``
    (``fp8``, ``gptq``, ``awq``) applies to the matrices only.  With ``tp=1`` and no
    quantization the sum equals :func:`memlib.weight_memory` plus the rope cache.
    """
    spec = load_spec(model)
    tp = positive_int("tp", tp)
    choice("quantization", quantization, QUANTIZATIONS)
    b = _act_bytes(dtype)
    counts = count_params(spec)
    mats = 0
    mat_params = 0
    for comp, module, rows_in, cols_out, count in named_linears(spec):
        mat_params += rows_in * cols_out * count
        base = module.split("_", 1)[1] if module.startswith(("expert_", "shared_")) else module
        if module in _REPLICATED:
            r_in, r_out = rows_in, cols_out
        elif module in _ROW_PARALLEL or base == "down":
            r_in, r_out = -(-rows_in // tp), cols_out
        else:
            r_in, r_out = rows_in, _rank_out(spec, module, cols_out, tp)
        if quantization is None:
            mats += r_in * r_out * count * b
        else:
            mats += _matrix_bytes(quantization, r_in, r_out, group_size) * count
    V, E = spec.vocab_size, spec.embed_dim
    v_pad = -(-V // VOCAB_PADDING) * VOCAB_PADDING
    n_tables = 1 if spec.tie_word_embeddings else 2
    vocab = n_tables * (-(-v_pad // tp)) * E * b
    other_params = counts.total - mat_params - n_tables * V * E
    rotary = spec.qk_rope_head_dim if spec.is_mla else spec.head_dim
    rope = 0 if spec.learned_positions else spec.max_position_embeddings * rotary * b
    comps = {"matrices": mats, "vocab": vocab, "other": other_params * b, "rope_cache": rope}
    return Breakdown(comps, title=f"{spec.name} weights per GPU (tp={tp})",
                     meta={"tp": tp, "dtype": dtype, "quantization": quantization})


# ---------------------------------------------------------------------------------------
# the KV cache: pages, blocks, tokens


def kv_bytes_per_token_per_layer(model, tp: int = 1, kv_dtype: str = "auto", dtype: str = "bf16") -> int:
    """Bytes one layer of one GPU stores per token (chapter 07).

    ``2 · max(1, n_kv/tp) · head_dim · b`` for MHA/GQA/MQA; ``(kv_lora_rank + rope_dim) · b``
    for MLA, the same on every rank.  ``kv_dtype="auto"`` uses the model dtype; fp8 is 1 byte.
    """
    spec = load_spec(model)
    choice("kv_dtype", kv_dtype, KV_DTYPES)
    b = _act_bytes(dtype) if kv_dtype == "auto" else (1 if kv_dtype.startswith("fp8") else 2)
    if spec.is_mla:
        return (spec.kv_lora_rank + spec.qk_rope_head_dim) * b
    return 2 * _kv_heads_per_rank(spec, positive_int("tp", tp)) * spec.head_dim * b


def _layer_counts(spec: ModelSpec) -> tuple[int, int]:
    n_sliding = spec.num_sliding_layers if spec.sliding_window else 0
    return spec.num_layers - n_sliding, n_sliding


def kv_cache_layout(model, available_bytes: int, max_model_len: int, tp: int = 1, kv_dtype: str = "auto",
                    dtype: str = "bf16", block_size: int = 16, vllm_version="0.19", engine: str | None = None,
                    max_num_batched_tokens: int = 2048, hybrid: bool | None = None) -> dict:
    """How vLLM turns ``available_bytes`` into blocks, tokens and concurrency (chapter 07).

    V0 and V1 < 0.9.1 give every layer the full context (sliding layers too):
    ``num_blocks = ⌊available / (block_size · L · page_per_token_layer)⌋``.
    From 0.9.1 a model with sliding-window layers gets the hybrid allocator (``hybrid``,
    default on there): layers are grouped in ``g = min(n_full, n_sliding)``, every group
    shares one pool, ``num_blocks = ⌊available / (g · page)⌋`` and the printed tokens are
    ``num_blocks // n_groups · block_size``.

    Concurrency: V0 and V1 < 0.9.1 print ``tokens / max_model_len``; from 0.9.1 it is
    ``num_blocks / blocks_per_request``, where a full layer needs ``⌈L/bs⌉`` blocks and a
    sliding one ``⌈min(window - 1 + max_num_batched_tokens, L)/bs⌉ + 1`` (also when every
    layer slides, e.g. Mistral-7B-v0.1).  From 0.25 the
    printed token count is ``⌊concurrency · max_model_len⌋``.

    Returns a dict: ``num_blocks``, ``kv_cache_tokens``, ``max_concurrency``,
    ``kv_cache_bytes`` (what the blocks occupy), ``page_bytes_per_token`` (all layers),
    ``hybrid``.
    """
    spec = load_spec(model)
    v = parse_version(vllm_version)
    engine = engine or default_engine(v)
    block_size = positive_int("block_size", block_size)
    L = positive_int("max_model_len", max_model_len)
    per_layer = kv_bytes_per_token_per_layer(spec, tp, kv_dtype, dtype)
    page = block_size * per_layer
    n_full, n_slide = _layer_counts(spec)
    n_layers = spec.num_layers
    avail = max(int(available_bytes), 0)
    new_v1 = engine == "v1" and v >= (0, 9, 1)
    if hybrid is None:
        hybrid = new_v1 and n_slide > 0 and n_full > 0
    blocks_req_full = -(-L // block_size)
    if hybrid:
        g = min(n_full, n_slide)
        n_groups = -(-n_full // g) + -(-n_slide // g)
        num_blocks = avail // page // g
        tokens = num_blocks // n_groups * block_size
        slide_tokens = min(spec.sliding_window - 1 + max_num_batched_tokens, L)
        per_req = g * (-(-n_full // g) * blocks_req_full + -(-n_slide // g) * (-(-slide_tokens // block_size) + 1))
        concurrency = num_blocks * g / per_req
        kv_bytes = num_blocks * page * g
    else:
        num_blocks = avail // (page * n_layers)
        tokens = num_blocks * block_size
        per_req = blocks_req_full
        if n_full == 0 and n_slide and new_v1:          # every layer slides: SlidingWindowSpec
            slide_tokens = min(spec.sliding_window - 1 + max_num_batched_tokens, L)
            per_req = -(-slide_tokens // block_size) + 1
        concurrency = num_blocks / per_req if new_v1 else tokens / L
        kv_bytes = num_blocks * page * n_layers
    if engine == "v1" and v >= (0, 25, 0):
        tokens = int(concurrency * L)
    return {"num_blocks": int(num_blocks), "kv_cache_tokens": int(tokens), "max_concurrency": float(concurrency),
            "kv_cache_bytes": int(kv_bytes), "page_bytes_per_token": int(per_layer * n_layers),
            "hybrid": bool(hybrid)}


def kv_bytes_per_request(model, max_model_len: int, tp: int = 1, kv_dtype: str = "auto", dtype: str = "bf16",
                         block_size: int = 16) -> int:
    """KV bytes one request of ``max_model_len`` tokens needs on one GPU, in whole blocks.

    ``⌈L / block_size⌉ · block_size · layers · page_per_token_layer`` -- the number vLLM
    prints in "To serve at least one request ... (X GiB KV cache is needed ...)" for a
    model without sliding layers (chapter 07).
    """
    spec = load_spec(model)
    per_layer = kv_bytes_per_token_per_layer(spec, tp, kv_dtype, dtype)
    return -(-positive_int("max_model_len", max_model_len) // block_size) * block_size * spec.num_layers * per_layer


# ---------------------------------------------------------------------------------------
# the profile run


def _mlp_width_per_token(spec: ModelSpec, tp: int) -> int:
    """Elements per token the MLP keeps beyond the residual stream, on one rank."""
    widths = []
    n_moe = sum(spec.moe_layers)
    if spec.num_layers - n_moe:
        mult = 3 if spec.gated_mlp else 2
        widths.append(mult * -(-spec.intermediate_size // tp))
    if n_moe:
        e = 3 * -(-spec.moe_intermediate_size // tp) * spec.experts_per_token
        e += 3 * -(-spec.shared_intermediate_size // tp) if spec.shared_intermediate_size else 0
        widths.append(e)
    return max(widths)


def _attn_width_per_token(spec: ModelSpec, tp: int) -> int:
    nq = -(-spec.num_heads // tp)
    if spec.is_mla:
        qk = spec.qk_nope_head_dim + spec.qk_rope_head_dim
        return nq * (2 * qk + spec.qk_nope_head_dim + 2 * spec.v_head_dim) + spec.kv_lora_rank + spec.qk_rope_head_dim
    return (2 * nq + 2 * _kv_heads_per_rank(spec, tp)) * spec.head_dim


def activation_peak(model, max_num_batched_tokens: int, max_num_seqs: int, tp: int = 1, dtype: str = "bf16",
                    sampler: str = "sort", engine: str = "v1", rank: int = 0) -> Breakdown:
    """Torch's peak during vLLM's profile run, above the weights (chapter 07).

    ``T = max_num_batched_tokens`` tokens in ``S = min(max_num_seqs, T)`` requests::

        forward = T·b·(3H + max(attention width, MLP width))
        sampler = T·H·b + S·V·c       (c from SAMPLER_BYTES_PER_LOGIT)

    The result's ``phases`` hold both, ``total`` is the larger.  Under V0 only rank 0
    samples; other ranks hold their slice of the logits (``S·V/tp·b``).
    """
    spec = load_spec(model)
    T = positive_int("max_num_batched_tokens", max_num_batched_tokens)
    S = min(positive_int("max_num_seqs", max_num_seqs), T)
    tp = positive_int("tp", tp)
    choice("sampler", sampler, SAMPLERS)
    b = _act_bytes(dtype)
    H = spec.hidden_size
    width = max(_attn_width_per_token(spec, tp), _mlp_width_per_token(spec, tp))
    forward = T * b * (3 * H + width)
    V = spec.vocab_size
    if engine == "v0" and rank != 0:
        logits = S * (-(-V // tp)) * b
    else:
        logits = S * V * SAMPLER_BYTES_PER_LOGIT[sampler]
    sampling = T * H * b + logits
    peak = max(forward, sampling)
    phase = "forward" if forward >= sampling else "sampler"
    return Breakdown({"activation_peak": peak}, title=f"{spec.name} profile-run peak",
                     phases={"forward": forward, "sampler": sampling}, peak_phase=phase,
                     meta={"tokens": T, "seqs": S, "sampler": sampler})


def non_torch_bytes(tp: int = 1) -> int:
    """Non-torch memory vLLM's profiler measures per GPU: the log medians (chapter 07)."""
    return NON_TORCH_TP1 if positive_int("tp", tp) == 1 else NON_TORCH_TPN


# ---------------------------------------------------------------------------------------
# the budget


def _total_bytes(gpu, total_gpu_memory):
    if total_gpu_memory is not None:
        return positive_int("total_gpu_memory", total_gpu_memory), "given"
    g = get_gpu(gpu)
    return g.usable_bytes, g.usable_source


def vllm_budget(model, gpu="H100-80GB", tp: int = 1, gpu_memory_utilization: float = 0.9,
                max_model_len: int | None = None, max_num_batched_tokens: int | None = None,
                max_num_seqs: int | None = None, kv_dtype: str = "auto", dtype: str = "bf16",
                quantization: str | None = None, block_size: int = 16, vllm_version="0.19",
                engine: str | None = None, enforce_eager: bool = False, sampler: str | None = None,
                usage: str = "serve", total_gpu_memory: int | None = None, weights: int | None = None,
                non_torch: int | None = None, activation: int | None = None,
                cuda_graphs: int | None = None, enable_chunked_prefill: bool | None = None,
                hybrid: bool | None = None) -> Breakdown:
    """vLLM's per-GPU memory budget and the KV cache it leaves (chapter 07).

    Follows the release's accounting (:func:`accounting_family`).  Components, in bytes:
    ``weights``, ``activation_peak``, ``non_torch``, ``cuda_context`` (charged by the
    ``torch-peak`` family only), ``cuda_graphs`` (charged from 0.21 unless
    ``enforce_eager``), ``kv_cache`` (whole blocks) and ``unallocated`` (what block
    rounding leaves); they sum to ``total × utilization``.  ``meta`` holds
    ``kv_cache_tokens``, ``kv_cache_bytes``, ``num_blocks``, ``max_concurrency``,
    ``available_kv_bytes``, the scheduler values used, and ``outside_budget`` (memory
    vLLM uses on top of the budget: the CUDA context where it is not charged, CUDA graphs
    before 0.21).  ``weights``, ``non_torch``, ``activation`` and ``cuda_graphs`` accept
    measured values instead of memlib's.  A model that does not fit gives
    ``kv_cache = 0`` and a negative ``meta["available_kv_bytes"]``.
    """
    spec = load_spec(model)
    v = parse_version(vllm_version)
    engine = choice("engine", engine or default_engine(v), ENGINES)
    family = accounting_family(v, engine)
    tp = positive_int("tp", tp)
    util = fraction("gpu_memory_utilization", gpu_memory_utilization)
    choice("usage", usage, USAGES)
    total, total_source = _total_bytes(gpu, total_gpu_memory)
    gpu_name = gpu.name if isinstance(gpu, GPU) else str(gpu)
    L = positive_int("max_model_len", max_model_len or spec.max_position_embeddings)
    chunking = True if enable_chunked_prefill is None else bool(enable_chunked_prefill)
    d_tokens, d_seqs = scheduler_defaults(v, engine, total, gpu_name, L, usage, tp, chunking)
    T = positive_int("max_num_batched_tokens", max_num_batched_tokens or d_tokens)
    S = positive_int("max_num_seqs", max_num_seqs or d_seqs)
    sampler = choice("sampler", sampler or default_sampler(v, engine), SAMPLERS)
    budget = int(total * util)

    w = weights if weights is not None else weights_per_gpu(spec, dtype, tp, quantization).total
    act = activation if activation is not None else activation_peak(spec, T, S, tp, dtype, sampler, engine).total
    nt = non_torch if non_torch is not None else non_torch_bytes(tp)
    comps = {"weights": int(w), "activation_peak": int(act), "non_torch": int(nt)}
    outside = {}
    if family == "torch-peak":
        comps["cuda_context"] = CUDA_CONTEXT
    else:
        outside["cuda_context"] = CUDA_CONTEXT
    graphs = 0 if enforce_eager else (cuda_graphs if cuda_graphs is not None else CUDA_GRAPHS[engine])
    if family == "profiling+graphs" and graphs:
        comps["cuda_graphs"] = int(graphs)
    elif graphs:
        outside["cuda_graphs"] = int(graphs)
    available = budget - sum(comps.values())
    lay = kv_cache_layout(spec, available, L, tp, kv_dtype, dtype, block_size, v, engine, T, hybrid)
    comps["kv_cache"] = lay["kv_cache_bytes"]
    comps["unallocated"] = max(budget - sum(comps.values()), 0)
    meta = {"model": spec.name, "gpu": gpu_name, "tp": tp, "gpu_memory_utilization": util,
            "total_gpu_memory": total, "total_source": total_source, "budget": budget,
            "vllm_version": ".".join(map(str, v)), "engine": engine, "family": family,
            "max_model_len": L, "max_num_batched_tokens": T, "max_num_seqs": S, "sampler": sampler,
            "block_size": block_size, "kv_dtype": kv_dtype, "dtype": dtype, "quantization": quantization,
            "available_kv_bytes": int(available), **lay, "outside_budget": outside}
    return Breakdown(comps, title=f"{spec.name} on {gpu_name} (vLLM {meta['vllm_version']}, tp={tp}), per GPU",
                     meta=meta)


# ---------------------------------------------------------------------------------------
# features that change the budget


def prefix_cache_savings(model, prefix_len: int, requests: int, tp: int = 1, kv_dtype: str = "auto",
                         dtype: str = "bf16", block_size: int = 16) -> int:
    """Bytes prefix caching saves when ``requests`` requests share a ``prefix_len`` prompt.

    Only whole blocks are shared: ``(requests - 1) · ⌊prefix_len / bs⌋ · bs · page_per_token``
    (the partial last block is computed again per request) (chapter 07).
    """
    spec = load_spec(model)
    n = positive_int("requests", requests)
    shared = positive_int("prefix_len", prefix_len, minimum=0) // block_size * block_size
    per_token = kv_bytes_per_token_per_layer(spec, tp, kv_dtype, dtype) * spec.num_layers
    return (n - 1) * shared * per_token


def parallel_sampling_kv(model, prompt_len: int, new_tokens: int, n: int, block_size: int = 16,
                         kv_dtype: str = "bf16") -> Breakdown:
    """KV cache of ``n`` samples (or beams) of one prompt in vLLM: the prompt's full blocks
    are shared, its last block is copied per sample, each sample's new tokens are its own.

    Thin wrapper of :func:`memlib.kv_cache.beam_search_kv` with ``share_prefix=True`` and
    paged blocks (chapter 02 derives it; chapter 07 uses it for serving).
    """
    return beam_search_kv(model, prompt_len, new_tokens, n, kv_dtype=kv_dtype, share_prefix=True,
                          block_size=block_size)


def preemption_cost(model, context_len: int, mode: str = "recompute", tp: int = 1, kv_dtype: str = "auto",
                    dtype: str = "bf16", block_size: int = 16) -> dict:
    """What preempting one request of ``context_len`` tokens costs (chapter 07).

    ``swap`` (V0 only) moves its blocks to host memory: ``cpu_bytes = blocks · block_bytes``
    and the same bytes cross PCIe twice; ``recompute`` frees the blocks and pays a prefill of
    ``context_len`` tokens later (``recompute_tokens``).  Either way the GPU gets
    ``freed_bytes`` back.
    """
    choice("mode", mode, ("swap", "recompute"))
    spec = load_spec(model)
    blocks = -(-positive_int("context_len", context_len) // block_size)
    block_bytes = block_size * spec.num_layers * kv_bytes_per_token_per_layer(spec, tp, kv_dtype, dtype)
    freed = blocks * block_bytes
    if mode == "swap":
        return {"freed_bytes": freed, "cpu_bytes": freed, "pcie_bytes": 2 * freed, "recompute_tokens": 0}
    return {"freed_bytes": freed, "cpu_bytes": 0, "pcie_bytes": 0, "recompute_tokens": int(context_len)}


def swap_blocks(model, swap_space_gib: float = 4.0, tp: int = 1, kv_dtype: str = "auto", dtype: str = "bf16",
                block_size: int = 16) -> int:
    """CPU blocks V0 reserves for swapping: ``⌊swap_space · 2³⁰ / block_bytes⌋`` (chapter 07);
    the "# CPU blocks" of V0's log (``swap_space`` defaults to 4 GiB per GPU)."""
    spec = load_spec(model)
    block_bytes = block_size * spec.num_layers * kv_bytes_per_token_per_layer(spec, tp, kv_dtype, dtype)
    return int(swap_space_gib * GIB) // block_bytes


def draft_model_cost(target, draft, max_model_len: int, tp: int = 1, dtype: str = "bf16",
                     kv_dtype: str = "auto") -> dict:
    """What a speculative-decoding draft model adds per GPU (chapter 07).

    Its weights (``draft_weights``) are loaded beside the target's, and its layers get KV
    pages in the same pool, so every cached token costs the sum of both models' bytes
    (``kv_bytes_per_token`` vs ``target_kv_bytes_per_token``): the same pool holds
    ``target / (target + draft)`` as many tokens.
    """
    t, d = load_spec(target), load_spec(draft)
    tw = kv_bytes_per_token_per_layer(t, tp, kv_dtype, dtype) * t.num_layers
    dw = kv_bytes_per_token_per_layer(d, tp, kv_dtype, dtype) * d.num_layers
    return {"draft_weights": weights_per_gpu(d, dtype, tp).total, "target_kv_bytes_per_token": tw,
            "kv_bytes_per_token": tw + dw, "token_fraction": tw / (tw + dw),
            "draft_kv_per_request": kv_bytes_per_request(d, max_model_len, tp, kv_dtype, dtype)}


def lora_slot_bytes(model, max_loras: int = 1, max_lora_rank: int = 16, tp: int = 1, dtype: str = "bf16",
                    targets=("qkv", "o", "gate_up", "down")) -> int:
    """Bytes of the LoRA slots vLLM preallocates on one GPU (chapter 07).

    For every targeted projection of every layer, each of ``max_loras`` slots holds
    ``A (r × in)`` and ``B (out × r)``; column-parallel layers shard ``out``, row-parallel
    layers shard ``in`` (``q k v`` count as ``qkv``, ``gate up`` as ``gate_up``)::

        Σ_layers Σ_targets max_loras · r · (in_rank + out_rank) · b
    """
    spec = load_spec(model)
    n = positive_int("max_loras", max_loras)
    r = positive_int("max_lora_rank", max_lora_rank)
    tp = positive_int("tp", tp)
    b = _act_bytes(dtype)
    total = 0
    for comp, module, rows_in, cols_out, count in named_linears(spec):
        if comp != "attention" and comp != "mlp":
            continue
        group = {"q": "qkv", "k": "qkv", "v": "qkv", "gate": "gate_up", "up": "gate_up"}.get(module, module)
        if group not in targets:
            continue
        if module in _ROW_PARALLEL:
            r_in, r_out = -(-rows_in // tp), cols_out
        else:
            r_in, r_out = rows_in, _rank_out(spec, module, cols_out, tp)
        total += n * r * (r_in + r_out) * b * count
    return total


def max_model_len_that_fits(model, available_bytes: int, tp: int = 1, kv_dtype: str = "auto",
                            dtype: str = "bf16", block_size: int = 16) -> int:
    """The longest request one pool of ``available_bytes`` holds, in whole blocks (chapter 07):
    ``⌊available / (block_size · layers · page_per_token_layer)⌋ · block_size``."""
    spec = load_spec(model)
    block_bytes = block_size * spec.num_layers * kv_bytes_per_token_per_layer(spec, tp, kv_dtype, dtype)
    return max(int(available_bytes), 0) // block_bytes * block_size


# ---------------------------------------------------------------------------------------
# the logs (data/serving/vllm_logs): what vLLM printed, and memlib's prediction of it

LOGS_DIR = Path(__file__).resolve().parent.parent / "data" / "serving" / "vllm_logs"


def load_vllm_logs(directory=None) -> list[dict]:
    """Every stored vLLM start-up log record (one JSON file each), sorted by id (chapter 07)."""
    d = Path(directory) if directory is not None else LOGS_DIR
    if not d.is_dir():
        raise ValueError(f"directory: {str(d)!r} is not a directory of vLLM log records")
    return [json.loads(f.read_text()) for f in sorted(d.glob("*.json"))]


def _record_model(record: dict):
    m = record["model"]
    root = LOGS_DIR.parent.parent.parent
    src = m.get("memlib") or str(root / m["config"])
    if not m.get("overrides"):
        return load_spec(src)
    from .catalog import load_config
    name, cfg = load_config(src)
    return load_spec({**cfg, **m["overrides"], "_name_or_path": f"{name} ({m['id']})"})


def predict_vllm_log(record: dict) -> dict:
    """memlib's prediction of every number a stored vLLM log printed (chapter 07).

    Returns ``{"predicted": {...}, "logged": {...}, "from_logged_kv": {...}}`` in GiB
    (floats) and counts: ``weights``, ``activation``, ``non_torch`` (plus the CUDA
    context where the release charges it), ``kv_cache_gib``, ``num_blocks``,
    ``kv_cache_tokens``, ``max_concurrency``, ``kv_needed_gib``.  ``from_logged_kv``
    turns the *logged* KV memory into blocks, tokens and concurrency, which isolates the
    block arithmetic from the memory prediction.  End-to-end values are ``None`` where
    the record does not give the GPU's total memory.
    """
    spec = _record_model(record)
    f = record["flags"]
    logged = dict(record["logged"])
    engine, v = record["engine"], record["vllm_version"]
    family = accounting_family(v, engine)
    gpu = record["gpu"].get("memlib")
    total = None
    if logged.get("total_gpu_memory_gib") is not None:
        total = int(round(logged["total_gpu_memory_gib"] * GIB))
    elif gpu is not None:
        total = get_gpu(gpu).usable_bytes
    kw = dict(tp=f["tp"], gpu_memory_utilization=f["gpu_memory_utilization"], max_model_len=f["max_model_len"],
              max_num_batched_tokens=f["max_num_batched_tokens"], max_num_seqs=f["max_num_seqs"],
              kv_dtype=f["kv_cache_dtype"], dtype=f["dtype"], quantization=f["quantization"],
              block_size=f["block_size"], vllm_version=v, engine=engine, enforce_eager=f["enforce_eager"],
              sampler=f.get("sampler"), usage=f.get("usage", "serve"))
    pred = {}
    b = vllm_budget(spec, gpu or "H100-80GB", total_gpu_memory=total or GIB, **kw)
    m = b.meta
    pred["weights"] = b["weights"] / GIB
    pred["activation"] = b["activation_peak"] / GIB
    pred["non_torch"] = (b["non_torch"] + b.get("cuda_context")) / GIB
    if total is not None:
        pred["kv_cache_gib"] = m["available_kv_bytes"] / GIB
        pred.update(num_blocks=m["num_blocks"], kv_cache_tokens=m["kv_cache_tokens"],
                    max_concurrency=m["max_concurrency"])
    pred["kv_needed_gib"] = kv_bytes_per_request(spec, m["max_model_len"], f["tp"], f["kv_cache_dtype"],
                                                 f["dtype"], f["block_size"]) / GIB
    if logged.get("peak_torch_gib") is not None and logged.get("weights_gib") is not None:
        logged["activation_gib"] = round(logged["peak_torch_gib"] - logged["weights_gib"], 4)
    from_kv = {}
    if logged.get("kv_cache_gib") is not None:
        lay = kv_cache_layout(spec, int(logged["kv_cache_gib"] * GIB), m["max_model_len"], f["tp"],
                              f["kv_cache_dtype"], f["dtype"], f["block_size"], v, engine,
                              m["max_num_batched_tokens"])
        from_kv = {k: lay[k] for k in ("num_blocks", "kv_cache_tokens", "max_concurrency")}
    lg = {"weights": logged.get("weights_gib"), "activation": logged.get("activation_gib"),
          "non_torch": logged.get("non_torch_gib"), "kv_cache_gib": logged.get("kv_cache_gib"),
          "num_blocks": logged.get("num_blocks"), "kv_cache_tokens": logged.get("kv_cache_tokens"),
          "max_concurrency": logged.get("max_concurrency"), "kv_needed_gib": logged.get("kv_needed_gib")}
    if lg["kv_cache_tokens"] is None and lg["num_blocks"] is not None and not (engine == "v1" and parse_version(v) >= (0, 25, 0)):
        lg["kv_cache_tokens"] = lg["num_blocks"] * f["block_size"]
    return {"id": record["id"], "family": family, "total_known": total is not None, "scheduler": {
                "max_num_batched_tokens": m["max_num_batched_tokens"], "max_num_seqs": m["max_num_seqs"],
                "sampler": m["sampler"], "activation_phase": activation_peak(
                    spec, m["max_num_batched_tokens"], m["max_num_seqs"], f["tp"], f["dtype"], m["sampler"],
                    engine).peak_phase},
            "predicted": pred, "logged": lg, "from_logged_kv": from_kv}


__all__ = ["parse_version", "default_engine", "accounting_family", "scheduler_defaults", "default_sampler",
           "weights_per_gpu", "kv_bytes_per_token_per_layer", "kv_cache_layout", "kv_bytes_per_request",
           "activation_peak", "non_torch_bytes", "vllm_budget", "prefix_cache_savings", "parallel_sampling_kv",
           "preemption_cost", "swap_blocks", "draft_model_cost", "lora_slot_bytes", "max_model_len_that_fits",
           "load_vllm_logs", "predict_vllm_log"]
