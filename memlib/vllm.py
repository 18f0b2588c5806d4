"""What vLLM reserves on each GPU, release by release, and the KV cache it leaves (chapter 07).

vLLM starts by measuring, then hands what is left of a budget to the KV cache::

    budget      = total_gpu_memory × gpu_memory_utilization
    available   = budget − weights − activation_peak − non_torch [− cuda_context] [− cuda_graphs]
    num_blocks  = ⌊available / (block_size × Σ_layers kv_bytes_per_token_per_layer)⌋
    kv_tokens   = num_blocks × block_size
    concurrency = num_blocks / ⌈max_model_len / block_size⌉        (vLLM ≥ 0.9.1)

Which terms are charged, and how each is measured, changed between releases (the
``family`` of :func:`accounting_family`, with the source lines of every release in the
repository's ``data/serving/VLLM_ACCOUNTING.md``):

* ``v0-total-used`` (V0, < 0.3.1): everything in use after the profile run, CUDA context
  and other processes included;
* ``v0-init-free`` (V0, 0.3.1 - 0.6.3): the drop in free memory since the worker started
  (the CUDA context already existed, so it is *not* charged);
* ``torch-peak`` (V0 0.6.4, and V1 0.7.0 - 0.9.0): torch's allocated peak (weights
  included) plus all non-torch memory in use, CUDA context included;
* ``profiling`` (V0 ≥ 0.6.5, V1 0.9.1 - 0.20): weights + torch peak *increase* + non-torch
  *increase* since the worker started (context not charged);
* ``profiling+graphs`` (V1 ≥ 0.21): as ``profiling``, minus an estimate of the CUDA-graph
  memory (on by default since 0.21).  Not yet checked against a log.

Before 0.21 the CUDA graphs are captured *after* the KV cache is allocated, so they sit on
top of the budget (``meta["outside_budget"]``), as does the CUDA context where it is not
charged.

The profile run executes one forward of ``T = max_num_batched_tokens`` tokens spread over
``S = min(max_num_seqs, T)`` dummy requests, then samples one token for each.  memlib
models its torch peak as the larger of two phases (per GPU, ``b`` bytes per activation)::

    forward = T · b · (3H + max(attention width, MLP width))   # gated MLP: 3·I/tp
    sampler = T·H·b + S·V·c                                    # c = 38 B (sort) or 10 B

The MLP term holds the residual, the normed input, ``gate_up`` (2I), the activation (I)
and ``down``'s output at once; the sampler holds the final hidden states and, per logit,
the bf16 logits (2 B), their fp32 copy (4), the sorted values and indices (12) and the
sort's scratch (20) in the top-k/top-p path the dummy requests take.  FlashInfer's and the
Triton top-k/top-p kernels do not sort: ``c = 10``.

What is **calibrated, not derived**: non-torch memory (cuBLAS handles, NCCL and custom
all-reduce buffers, attention workspaces), the CUDA context and the CUDA-graph memory are
medians of what real logs printed (the repository's ``data/serving/OVERHEADS.md``), and
every function accepts your own measured value instead.  ``CUDA_CONTEXT`` was calibrated
on one log (RTX 3090, vLLM 0.6.4), which therefore cannot test it.

Everything is per GPU (:mod:`memlib.serving`): ``tp`` shards heads, MLP and expert widths
and the vocabulary; KV heads are copied when ``tp > n_kv_heads``; the MLA latent is
replicated on every rank.  Pure numpy: no file is read, no data directory is needed.
"""
from __future__ import annotations

import re
from functools import lru_cache

from .breakdown import Breakdown
from .hardware import GPU, get_gpu
from .serving import (QUANTIZATIONS, kv_bytes_per_request, kv_heads_per_gpu, layer_kv_bytes_per_gpu,
                      lora_slot_bytes, weights_per_gpu)
from .scenario import check_seq_len
from .spec import ModelSpec, load_spec
from .symbolic import evaluate
from .units import GiB
from .validation import as_float, as_int, choice, fraction, positive_int

ENGINES = ("v0", "v1")
KV_DTYPES = ("auto", "bf16", "fp16", "fp8", "fp8_e4m3", "fp8_e5m2")
DTYPES = ("bf16", "fp16", "fp32")
SAMPLERS = ("sort", "flashinfer", "triton")
USAGES = ("serve", "llm")
FAMILIES = ("v0-total-used", "v0-init-free", "torch-peak", "profiling", "profiling+graphs")
DEFAULT_VERSION = "0.19"

#: Bytes per logit the dummy sampling step holds at its peak (module docstring).
SAMPLER_BYTES_PER_LOGIT = {"sort": 38, "flashinfer": 10, "triton": 10}

#: Non-torch memory vLLM's profiler measures per GPU, medians of real logs (a measured
#: range, not a derivation): tp = 1, 0.01-0.28 GiB over 9 logs, median 0.07; tp > 1,
#: 0.20 GiB in all 3 logs.
NON_TORCH_TP1 = int(0.07 * GiB)
NON_TORCH_TPN = int(0.20 * GiB)
#: CUDA context charged by the ``torch-peak`` family: 0.35 GiB of non-torch memory on an
#: RTX 3090 under vLLM 0.6.4 (vllm-project/vllm#10517) minus the tp = 1 median above.
#: Calibrated on that log; an independent reading (A100 40GB, vLLM 0.9.2: process total
#: minus budget minus CUDA graphs) gives 0.46 GiB, vLLM 0.2.5 on an A100 80GB 0.77 GiB.
CUDA_CONTEXT = int(0.28 * GiB)
#: CUDA-graph memory, "Graph capturing finished in N secs, took X GiB" (medians of real
#: logs): V0 captures decode graphs only, V1 piecewise graphs of the whole model.
CUDA_GRAPHS = {"v0": int(0.27 * GiB), "v1": int(0.74 * GiB)}
#: The accountings that measure total used memory, and so charge the CUDA context.
CONTEXT_CHARGED = ("v0-total-used", "torch-peak")
#: V0's swap space for preempted requests, per GPU (``--swap-space``, GiB).
SWAP_SPACE_GIB = 4.0


# -- versions, engines, defaults ---------------------------------------------------------------

def parse_version(version) -> tuple[int, int, int]:
    """``"0.6.4.post1"`` -> ``(0, 6, 4)``; ``"0.19"`` -> ``(0, 19, 0)`` (chapter 07)."""
    if isinstance(version, tuple):
        return tuple(version) + (0,) * (3 - len(version))
    return _parse_version_text(str(version))


@lru_cache(maxsize=256)
def _parse_version_text(text: str) -> tuple[int, int, int]:
    m = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    if not m:
        raise ValueError(f"vllm_version: cannot read {text[:40]!r}; give e.g. '0.6.4' or '0.19'")
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
        return "torch-peak" if v < (0, 6, 5) else "profiling"
    if v < (0, 7, 0):
        raise ValueError("engine: V1 exists from vLLM 0.7.0; allowed for this version: v0")
    if v < (0, 9, 1):
        return "torch-peak"
    return "profiling" if v < (0, 21, 0) else "profiling+graphs"


def scheduler_defaults(vllm_version, engine: str, gpu_bytes: int, gpu_name: str, max_model_len: int,
                       usage: str = "serve", long_context_chunking: bool = True) -> tuple[int, int]:
    """``(max_num_batched_tokens, max_num_seqs)`` a release picks when you set neither (chapter 07).

    V0: ``max(max_model_len, 2048)``, or with chunked prefill (on by default above 32K
    tokens) 512 before 0.6.5 and 2048 after; 256 sequences.  V1: 8192 (serve) / 16384
    (``LLM``) tokens and 1024 sequences on GPUs of >= 70 GiB (A100 excluded from 0.9;
    H100/H200 by name in 0.7), else 2048 / 8192 tokens and 256 sequences (1024 sequences
    everywhere in 0.8.0-0.8.3); 16384 tokens on >= 160 GiB GPUs from 0.28.
    """
    v = parse_version(vllm_version)
    choice("usage", usage, USAGES)
    if engine == "v0":
        if long_context_chunking and max_model_len > 32768:
            return (512 if v < (0, 6, 5) else 2048), 256
        return max(max_model_len, 2048), 256
    name = gpu_name.lower()
    big = gpu_bytes >= 70 * GiB and not (v >= (0, 9, 0) and "a100" in name)
    if v < (0, 8, 0):
        big = any(k in name for k in ("h100", "h200"))
    tokens = (16384 if usage == "llm" else 8192) if big else (8192 if usage == "llm" else 2048)
    if v >= (0, 28, 0) and gpu_bytes >= 160 * GiB:
        tokens = 16384
    seqs = 1024 if (big or (0, 8, 0) <= v < (0, 8, 4)) else 256
    return tokens, (256 if v < (0, 8, 0) else seqs)


def default_sampler(vllm_version, engine: str) -> str:
    """The top-k/top-p path of the profile's dummy sampling (chapter 07): V0 and V1 up to 0.18
    sort (pass ``"flashinfer"`` when a V1 0.8-0.11 log says "Using FlashInfer for top-p &
    top-k sampling"); V1 from 0.19 runs a Triton kernel that does not sort."""
    if engine == "v1" and parse_version(vllm_version) >= (0, 19, 0):
        return "triton"
    return "sort"


def kv_dtype_of(kv_dtype: str, dtype: str = "bf16") -> str:
    """vLLM's ``--kv-cache-dtype`` in memlib's vocabulary: ``auto`` is the model dtype,
    ``fp8_e4m3``/``fp8_e5m2`` are ``fp8`` (one byte; chapter 07)."""
    choice("kv_dtype", kv_dtype, KV_DTYPES)
    choice("dtype", dtype, DTYPES)
    return dtype if kv_dtype == "auto" else ("fp8" if kv_dtype.startswith("fp8") else kv_dtype)


# -- the profile run ---------------------------------------------------------------------------

def _mlp_width(spec: ModelSpec, tp: int) -> int:
    """Elements per token the MLP keeps beyond the residual stream, on one rank."""
    widths = []
    n_moe = sum(spec.moe_layers)
    if spec.num_layers - n_moe:
        widths.append((3 if spec.gated_mlp else 2) * -(-spec.intermediate_size // tp))
    if n_moe:
        e = 3 * -(-spec.moe_intermediate_size // tp) * spec.experts_per_token
        widths.append(e + (3 * -(-spec.shared_intermediate_size // tp) if spec.shared_intermediate_size else 0))
    return max(widths)


def _attention_width(spec: ModelSpec, tp: int) -> int:
    nq = -(-spec.num_heads // tp)
    if spec.is_mla:
        qk = spec.qk_nope_head_dim + spec.qk_rope_head_dim
        return nq * (2 * qk + spec.qk_nope_head_dim + 2 * spec.v_head_dim) + spec.kv_lora_rank + spec.qk_rope_head_dim
    return (2 * nq + 2 * kv_heads_per_gpu(spec, tp)) * spec.head_dim


def activation_peak(model, max_num_batched_tokens: int, max_num_seqs: int, tp: int = 1, dtype: str = "bf16",
                    sampler: str = "sort", engine: str = "v1", rank: int = 0) -> Breakdown:
    """Torch's peak during vLLM's profile run, above the weights (chapter 07).

    ``T = max_num_batched_tokens`` tokens in ``S = min(max_num_seqs, T)`` requests::

        forward = T·b·(3H + max(attention width, MLP width))
        sampler = T·H·b + S·V·c       (c from SAMPLER_BYTES_PER_LOGIT)

    ``phases`` holds both, ``total`` is the larger (one ``activation_peak`` component of
    kind ``activation``).  Under V0 only rank 0 samples; other ranks hold their slice of
    the logits (``S·V/tp·b``).
    """
    spec = load_spec(model)
    T = positive_int("max_num_batched_tokens", max_num_batched_tokens)
    S = min(positive_int("max_num_seqs", max_num_seqs), T)
    tp = positive_int("tp", tp)
    choice("sampler", sampler, SAMPLERS)
    b = {"bf16": 2, "fp16": 2, "fp32": 4}[choice("dtype", dtype, DTYPES)]
    H, V = spec.hidden_size, spec.vocab_size
    forward = T * b * (3 * H + max(_attention_width(spec, tp), _mlp_width(spec, tp)))
    logits = S * -(-V // tp) * b if engine == "v0" and rank != 0 else S * V * SAMPLER_BYTES_PER_LOGIT[sampler]
    sampling = T * H * b + logits
    phase = "forward" if forward >= sampling else "sampler"
    return Breakdown({"activation_peak": max(forward, sampling)}, title=f"{spec.name} profile-run peak",
                     kinds="activation", phases={"forward": forward, "sampler": sampling}, peak_phase=phase,
                     meta={"tokens": T, "seqs": S, "sampler": sampler})


def non_torch_bytes(tp: int = 1) -> int:
    """Non-torch memory vLLM's profiler measures per GPU: the log medians
    ``NON_TORCH_TP1`` / ``NON_TORCH_TPN`` (calibrated, not derived; chapter 07)."""
    return NON_TORCH_TP1 if positive_int("tp", tp) == 1 else NON_TORCH_TPN


# -- from KV bytes to blocks, tokens and concurrency ------------------------------------------

def _slide_blocks(spec: ModelSpec, max_model_len: int, max_num_batched_tokens: int, bs: int) -> int:
    """Blocks a sliding layer needs per request in V1 >= 0.9.1 (``SlidingWindowSpec``)."""
    tokens = min(spec.sliding_window - 1 + max_num_batched_tokens, max_model_len)
    return -(-tokens // bs) + 1


def kv_cache_layout(model, available_bytes: int, max_model_len: int, tp: int = 1, kv_dtype: str = "auto",
                    dtype: str = "bf16", block_size: int = 16, vllm_version=DEFAULT_VERSION,
                    engine: str | None = None, max_num_batched_tokens: int = 2048,
                    hybrid: bool | None = None) -> Breakdown:
    """How vLLM turns ``available_bytes`` into blocks, tokens and concurrency (chapter 07).

    V0 and V1 < 0.9.1 give every layer the whole context (sliding layers too):
    ``num_blocks = ⌊available / (block_size · layers · page_per_token_layer)⌋``.
    From 0.9.1 a model with sliding and full layers gets the hybrid allocator (``hybrid``):
    layers are grouped in ``g = min(n_full, n_sliding)``, every group shares one pool,
    ``num_blocks = ⌊available / (g · page)⌋`` and the printed tokens are
    ``num_blocks // n_groups · block_size``.

    Concurrency: V0 and V1 < 0.9.1 print ``tokens / max_model_len``; from 0.9.1 it is
    ``num_blocks / blocks_per_request``, where a full layer needs ``⌈L/bs⌉`` blocks and a
    sliding one ``⌈min(window − 1 + max_num_batched_tokens, L)/bs⌉ + 1`` (also when every
    layer slides).  From 0.25 the printed token count is ``⌊concurrency · max_model_len⌋``.

    Returns a Breakdown: ``kv_cache`` (the whole blocks) and ``unallocated`` (what rounding
    leaves of a positive ``available_bytes``); ``meta`` has ``num_blocks``,
    ``kv_cache_tokens``, ``max_concurrency``, ``page_bytes_per_token`` (all layers) and ``hybrid``.
    """
    spec = load_spec(model)
    v = parse_version(vllm_version)
    engine = choice("engine", engine or default_engine(v), ENGINES)
    bs = positive_int("block_size", block_size)
    L = positive_int("max_model_len", max_model_len)
    per_layer = layer_kv_bytes_per_gpu(spec, tp, kv_dtype_of(kv_dtype, dtype))
    page = bs * per_layer
    n_slide = spec.num_sliding_layers if spec.sliding_window else 0
    n_full = spec.num_layers - n_slide
    avail = max(as_int(available_bytes), 0)
    new_v1 = engine == "v1" and v >= (0, 9, 1)
    if hybrid is None:
        hybrid = new_v1 and n_slide > 0 and n_full > 0
    full_blocks = -(-L // bs)
    if hybrid:
        g = min(n_full, n_slide)
        n_groups = -(-n_full // g) + -(-n_slide // g)
        num_blocks = avail // page // g
        tokens = num_blocks // n_groups * bs
        per_req = g * (-(-n_full // g) * full_blocks
                       + -(-n_slide // g) * _slide_blocks(spec, L, max_num_batched_tokens, bs))
        concurrency = num_blocks * g / per_req
        kv_bytes = num_blocks * page * g
    else:
        num_blocks = avail // (page * spec.num_layers)
        tokens = num_blocks * bs
        per_req = full_blocks
        if n_full == 0 and n_slide and new_v1:            # every layer slides
            per_req = _slide_blocks(spec, L, max_num_batched_tokens, bs)
        concurrency = num_blocks / per_req if new_v1 else tokens / L
        kv_bytes = num_blocks * page * spec.num_layers
    if engine == "v1" and v >= (0, 25, 0):
        tokens = as_int(concurrency * L)
    return Breakdown({"kv_cache": kv_bytes, "unallocated": avail - kv_bytes},
                     title=f"{spec.name} KV pool (vLLM {'.'.join(map(str, v))} {engine})",
                     kinds={"kv_cache": "kv", "unallocated": "overhead"},
                     meta={"num_blocks": as_int(num_blocks), "kv_cache_tokens": as_int(tokens),
                           "max_concurrency": as_float(concurrency), "kv_cache_bytes": as_int(kv_bytes),
                           "page_bytes_per_token": as_int(per_layer * spec.num_layers), "hybrid": bool(hybrid)})


def swap_blocks(model, swap_space_gib: float = SWAP_SPACE_GIB, tp: int = 1, kv_dtype: str = "auto",
                dtype: str = "bf16", block_size: int = 16) -> int:
    """CPU blocks V0 reserves for swapping preempted requests: ``⌊swap_space · 2³⁰ / block_bytes⌋``,
    the "# CPU blocks" of V0's log (chapter 07)."""
    spec = load_spec(model)
    block = positive_int("block_size", block_size) * spec.num_layers * layer_kv_bytes_per_gpu(
        spec, tp, kv_dtype_of(kv_dtype, dtype))
    return int(swap_space_gib * GiB) // block


# -- the budget ----------------------------------------------------------------------------------

def _total_bytes(gpu, total_gpu_memory):
    if total_gpu_memory is not None:
        return positive_int("total_gpu_memory", total_gpu_memory), "given"
    g = get_gpu(gpu)
    return g.usable_bytes, g.usable_source


_KINDS = {"weights": "model_state", "lora_slots": "model_state", "draft_weights": "model_state",
          "activation_peak": "activation", "non_torch": "overhead", "cuda_context": "overhead",
          "cuda_graphs": "overhead", "kv_cache": "kv", "unallocated": "overhead"}


def vllm_budget(model, gpu="H100-80GB", tp: int = 1, gpu_memory_utilization: float = 0.9,
                max_model_len: int | None = None, max_num_batched_tokens: int | None = None,
                max_num_seqs: int | None = None, kv_dtype: str = "auto", dtype: str = "bf16",
                quantization: str | None = None, block_size: int = 16, vllm_version=DEFAULT_VERSION,
                engine: str | None = None, enforce_eager: bool = False, sampler: str | None = None,
                usage: str = "serve", total_gpu_memory: int | None = None, weights: int | None = None,
                non_torch: int | None = None, activation: int | None = None,
                cuda_graphs: int | None = None, enable_chunked_prefill: bool | None = None,
                hybrid: bool | None = None, max_loras: int = 0, max_lora_rank: int = 16,
                draft_model=None) -> Breakdown:
    """vLLM's per-GPU memory budget and the KV cache it leaves (chapter 07).

    Follows the release's accounting (:func:`accounting_family`).  Components, in bytes
    per GPU: ``weights`` (:func:`memlib.serving.weights_per_gpu`), ``lora_slots`` (with
    ``max_loras``), ``draft_weights`` (with a ``draft_model``), ``activation_peak``,
    ``non_torch``, ``cuda_context`` (charged by the ``torch-peak`` and ``v0-total-used``
    families, :data:`CONTEXT_CHARGED`),
    ``cuda_graphs`` (charged from 0.21 unless ``enforce_eager``), ``kv_cache`` (whole
    blocks) and ``unallocated`` (what block rounding leaves); they sum to
    ``total × utilization``.  ``meta``: ``kv_cache_tokens``, ``kv_cache_bytes``,
    ``num_blocks``, ``max_concurrency``, ``available_kv_bytes``, the scheduler values used,
    and ``outside_budget`` (memory vLLM uses on top of the budget: the CUDA context where
    it is not charged, CUDA graphs before 0.21).  ``weights``, ``non_torch``,
    ``activation`` and ``cuda_graphs`` accept measured values instead of memlib's.
    ``max_model_len`` defaults to, and may not exceed, ``max_position_embeddings``.  A model
    that does not fit gives ``kv_cache = 0`` and a negative ``meta["available_kv_bytes"]``.
    A draft model's layers share the pool: its per-token bytes are added to the page.
    """
    spec = load_spec(model)
    v = parse_version(vllm_version)
    engine = choice("engine", engine or default_engine(v), ENGINES)
    family = accounting_family(v, engine)
    tp = positive_int("tp", tp)
    util = fraction("gpu_memory_utilization", gpu_memory_utilization)
    choice("usage", usage, USAGES)
    choice("quantization", quantization, QUANTIZATIONS)
    kv = kv_dtype_of(kv_dtype, dtype)
    total, total_source = _total_bytes(gpu, total_gpu_memory)
    gpu_name = gpu.name if isinstance(gpu, GPU) else str(gpu)
    L = check_seq_len(spec, max_model_len or spec.max_position_embeddings, "max_model_len")
    chunking = True if enable_chunked_prefill is None else bool(enable_chunked_prefill)
    d_tokens, d_seqs = scheduler_defaults(v, engine, total, gpu_name, L, usage, chunking)
    T = positive_int("max_num_batched_tokens", max_num_batched_tokens or d_tokens)
    S = positive_int("max_num_seqs", max_num_seqs or d_seqs)
    sampler = choice("sampler", sampler or default_sampler(v, engine), SAMPLERS)
    block_size = positive_int("block_size", block_size)
    return evaluate(_budget_result, (L, T, S), spec, v, engine, family, tp, util, usage, quantization, kv, kv_dtype,
                    dtype, total, total_source, gpu_name, sampler, block_size, weights, non_torch, activation,
                    cuda_graphs, enforce_eager, hybrid, max_loras, max_lora_rank, draft_model)


def _budget_result(L, T, S, spec, v, engine, family, tp, util, usage, quantization, kv, kv_dtype, dtype, total,
                   total_source, gpu_name, sampler, block_size, weights, non_torch, activation, cuda_graphs,
                   enforce_eager, hybrid, max_loras, max_lora_rank, draft_model) -> Breakdown:
    """:func:`vllm_budget` for checked knobs, ``L`` the context length, ``T`` the batched tokens
    and ``S`` the sequences (evaluated through :mod:`memlib.symbolic`: compiled once per model
    and knobs)."""
    budget = int(total * util)

    comps = {"weights": as_int(weights if weights is not None else
                            weights_per_gpu(spec, dtype, tp, quantization).total)}
    if max_loras:
        comps["lora_slots"] = lora_slot_bytes(spec, max_loras, max_lora_rank, tp, dtype)
    if draft_model is not None:
        comps["draft_weights"] = weights_per_gpu(draft_model, dtype, tp).total
    comps["activation_peak"] = as_int(activation if activation is not None else
                                   activation_peak(spec, T, S, tp, dtype, sampler, engine).total)
    comps["non_torch"] = as_int(non_torch if non_torch is not None else non_torch_bytes(tp))
    outside = {}
    (comps if family in CONTEXT_CHARGED else outside)["cuda_context"] = CUDA_CONTEXT
    graphs = 0 if enforce_eager else as_int(cuda_graphs if cuda_graphs is not None else CUDA_GRAPHS[engine])
    if graphs:
        (comps if family == "profiling+graphs" else outside)["cuda_graphs"] = graphs
    available = budget - sum(comps.values())
    if draft_model is None:
        lay = kv_cache_layout(spec, available, L, tp, kv, dtype, block_size, v, engine, T, hybrid).meta
    else:
        lay = _pool_with_draft(spec, load_spec(draft_model), available, L, tp, kv, block_size)
    comps["kv_cache"] = lay["kv_cache_bytes"]
    comps["unallocated"] = max(budget - sum(comps.values()), 0)
    meta = {"model": spec.name, "gpu": gpu_name, "tp": tp, "gpu_memory_utilization": util,
            "total_gpu_memory": total, "total_source": total_source, "budget": budget,
            "vllm_version": ".".join(map(str, v)), "engine": engine, "family": family,
            "max_model_len": L, "max_num_batched_tokens": T, "max_num_seqs": S, "sampler": sampler,
            "block_size": block_size, "kv_dtype": kv_dtype, "dtype": dtype, "quantization": quantization,
            "available_kv_bytes": as_int(available), **lay, "outside_budget": outside,
            "kv_needed_bytes": kv_bytes_per_request(spec, L, tp, kv, block_size)}
    return Breakdown(comps, title=f"{spec.name} on {gpu_name} (vLLM {meta['vllm_version']}, tp={tp}), per GPU",
                     kinds={k: _KINDS[k] for k in comps}, meta=meta)


def _pool_with_draft(spec, draft, available, L, tp, kv_dtype, bs) -> dict:
    """The KV pool when a draft model's layers take pages beside the target's (one block
    holds ``bs`` tokens of every layer of both models)."""
    per_token = (spec.num_layers * layer_kv_bytes_per_gpu(spec, tp, kv_dtype)
                 + draft.num_layers * layer_kv_bytes_per_gpu(draft, tp, kv_dtype))
    num_blocks = max(as_int(available), 0) // (bs * per_token)
    return {"num_blocks": num_blocks, "kv_cache_tokens": num_blocks * bs,
            "max_concurrency": num_blocks / -(-L // bs), "kv_cache_bytes": num_blocks * bs * per_token,
            "page_bytes_per_token": per_token, "hybrid": False}


def gpus_needed(model, gpu="H100-80GB", max_model_len: int = 8192, concurrency: int = 1,
                max_tp: int = 8, **knobs) -> Breakdown | None:
    """The smallest tensor-parallel size (a divisor of the attention heads, up to ``max_tp``)
    at which vLLM's KV pool on ``gpu`` holds ``concurrency`` requests of ``max_model_len``
    tokens, i.e. ``meta["max_concurrency"] >= concurrency`` (chapter 07).  Returns that :func:`vllm_budget` with ``meta["gpus"]``, or None
    when even ``max_tp`` GPUs are not enough.  ``knobs`` go to :func:`vllm_budget`."""
    spec = load_spec(model)
    need = positive_int("concurrency", concurrency)
    for tp in range(1, positive_int("max_tp", max_tp) + 1):
        if spec.num_heads % tp:
            continue
        b = vllm_budget(spec, gpu, tp=tp, max_model_len=max_model_len, **knobs)
        if b.meta["available_kv_bytes"] > 0 and b.meta["max_concurrency"] >= need:
            return Breakdown(b.components, title=b.title, kinds=b.kinds,
                             meta={**b.meta, "gpus": tp, "concurrency": need})
    return None


def which_gpus(model, max_model_len: int = 8192, concurrency: int = 1, quantization: str | None = None,
               kv_dtype: str = "auto", gpus=None, max_tp: int = 8, **knobs) -> dict:
    """For every GPU of :data:`memlib.hardware.GPU_TABLE` (or ``gpus``): the smallest number of
    them that serves ``concurrency`` requests of ``max_model_len`` tokens, as
    :func:`gpus_needed`'s per-GPU budget, or None when ``max_tp`` are not enough (chapter 07).
    Returns ``{gpu name: Breakdown | None}``; ``knobs`` go to :func:`vllm_budget`."""
    from .hardware import gpu_names
    return {g: gpus_needed(model, g, max_model_len, concurrency, max_tp, quantization=quantization,
                           kv_dtype=kv_dtype, **knobs) for g in (gpus or gpu_names())}
