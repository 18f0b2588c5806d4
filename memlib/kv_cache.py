"""The KV cache: MHA, MQA, GQA, MLA, sliding windows, paging and concurrency (chapter 02).

Per token and per layer, attention keeps a key and a value vector for every KV head::

    MHA/MQA/GQA:  2 · n_kv_heads · head_dim · bytes
    MLA latent:   (kv_lora_rank + qk_rope_head_dim) · bytes   (what serving engines keep)
    MLA expanded: n_heads · (qk_nope + qk_rope + v_head_dim) · bytes

A full-attention layer holds every token; a sliding-window layer holds at most
``window - 1`` past tokens (the new token makes the window), or ``window`` with
``window_tokens="window"``.  ``window_tokens="all"`` is what transformers holds right
after a prefill: its sliding cache keeps the last ``window - 1`` tokens as a *view* of the
prefill's K/V tensors, and a view keeps the whole storage alive (chapter 02 names this
quirk).  Totals are ``batch_size ×`` the per-sequence bytes.  All
functions take numpy arrays for ``batch_size`` and ``seq_len`` and return arrays.
"""
from __future__ import annotations

import numpy as np

from .breakdown import Breakdown
from .spec import ModelSpec, load_spec
from .units import canonical_dtype, dtype_bytes
from .validation import choice, fraction, positive_int

KV_DTYPES = ("fp32", "fp16", "bf16", "fp8", "int8")
MLA_FORMS = ("latent", "expanded")
WINDOW_TOKENS = ("window-1", "window", "all")


def _kv_dtype(kv_dtype) -> float:
    return dtype_bytes(canonical_dtype(kv_dtype, "kv_dtype", allowed=KV_DTYPES), "kv_dtype")


def layer_bytes_per_token(model, kv_dtype: str = "bf16", mla_form: str = "latent") -> int:
    """Bytes one layer adds to the cache per token (the formulas in the module docstring)."""
    spec = load_spec(model)
    b = _kv_dtype(kv_dtype)
    choice("mla_form", mla_form, MLA_FORMS)
    if spec.is_mla:
        if mla_form == "latent":
            return int((spec.kv_lora_rank + spec.qk_rope_head_dim) * b)
        return int(spec.num_heads * (spec.qk_nope_head_dim + spec.qk_rope_head_dim + spec.v_head_dim) * b)
    return int(2 * spec.num_kv_heads * spec.head_dim * b)


def bytes_per_token(model, kv_dtype: str = "bf16", mla_form: str = "latent") -> int:
    """KV bytes per token of context over all layers, before any window caps it."""
    spec = load_spec(model)
    return spec.num_layers * layer_bytes_per_token(spec, kv_dtype, mla_form)


def cached_tokens(spec: ModelSpec, seq_len, window_tokens: str = "window-1"):
    """(full-layer tokens, sliding-layer tokens) held for a sequence of ``seq_len``."""
    choice("window_tokens", window_tokens, WINDOW_TOKENS)
    if spec.sliding_window is None or not spec.num_sliding_layers:
        return seq_len, 0
    if window_tokens == "all":
        return seq_len, seq_len
    cap = spec.sliding_window - (window_tokens == "window-1")
    return seq_len, np.minimum(seq_len, cap)


def check_seq_len(spec: ModelSpec, seq_len, field: str = "seq_len"):
    """Validate ``seq_len`` (int or array) against the model's ``max_position_embeddings``."""
    seq_len = positive_int(field, seq_len)
    biggest = int(np.max(seq_len))
    if biggest > spec.max_position_embeddings:
        raise ValueError(f"{field}: {biggest} is beyond {spec.name}'s max_position_embeddings "
                         f"= {spec.max_position_embeddings}")
    return seq_len


def kv_cache(model, seq_len, batch_size=1, kv_dtype: str = "bf16", mla_form: str = "latent",
             block_size: int | None = None, window_tokens: str = "window-1") -> Breakdown:
    """KV-cache bytes of ``batch_size`` sequences of ``seq_len`` tokens (chapter 02).

    ``total = batch · Σ_layers tokens_held(layer) · layer_bytes_per_token``.  Components:
    ``full_layers`` and ``sliding_layers``; with ``block_size`` (paged attention, e.g. 16)
    each layer's tokens are rounded up to whole blocks and the rounding is the
    ``paging_waste`` component.  ``seq_len``/``batch_size`` may be numpy arrays.
    """
    spec = load_spec(model)
    seq_len = check_seq_len(spec, seq_len)
    batch_size = positive_int("batch_size", batch_size)
    per_layer = layer_bytes_per_token(spec, kv_dtype, mla_form)
    n_sliding = spec.num_sliding_layers if spec.sliding_window else 0
    n_full = spec.num_layers - n_sliding
    full_tok, slide_tok = cached_tokens(spec, seq_len, window_tokens)
    comps = {"full_layers": batch_size * n_full * full_tok * per_layer}
    if n_sliding:
        comps["sliding_layers"] = batch_size * n_sliding * slide_tok * per_layer
    if block_size is not None:
        block_size = positive_int("block_size", block_size)

        def rounded(t):
            return -(-t // block_size) * block_size
        waste = n_full * (rounded(full_tok) - full_tok) + n_sliding * (rounded(slide_tok) - slide_tok)
        comps["paging_waste"] = batch_size * waste * per_layer
    meta = {"bytes_per_token": spec.num_layers * per_layer, "attention": spec.attention_kind,
            "kv_dtype": kv_dtype, "seq_len": seq_len, "batch_size": batch_size}
    if spec.is_mla:
        meta["mla_form"] = mla_form
    return Breakdown(comps, title=f"{spec.name} KV cache", meta=meta)


def kv_bytes(model, seq_len, batch_size=1, kv_dtype: str = "bf16", **knobs):
    """Total KV-cache bytes (int, or an array for array inputs); see :func:`kv_cache`."""
    return kv_cache(model, seq_len, batch_size, kv_dtype, **knobs).total


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
    from .weights import weight_memory

    spec = load_spec(model)
    n = max_requests(spec, seq_len, gpu_memory, gpu_memory_utilization, weight_dtype, kv_dtype,
                     activation_reserve, block_size)
    util = float(gpu_memory_utilization)
    weights = weight_memory(spec, weight_dtype).total
    per_request = kv_cache(spec, seq_len, 1, kv_dtype, block_size=block_size).total
    usable = int(gpu_memory * util)
    budget = usable - weights - activation_reserve
    meta = {"requests": int(n), "kv_per_request": int(per_request), "budget": int(budget),
            "usable": usable, "gpu_memory": gpu_memory}
    if budget <= 0:
        meta["reason"] = (f"weights ({weights / 2**30:.1f} GiB) + reserve exceed "
                          f"{util:.0%} of the GPU ({usable / 2**30:.1f} GiB)")
    comps = {"weights": weights, "activation_reserve": activation_reserve,
             "kv_cache": int(n * per_request), "free": max(usable - weights - activation_reserve - int(n * per_request), 0)}
    return Breakdown(comps, title=f"{spec.name} on {gpu_memory / 1e9:.0f} GB, {seq_len} tokens/request", meta=meta)


def max_requests(model, seq_len, gpu_memory, gpu_memory_utilization: float = 0.9,
                 weight_dtype: str = "bf16", kv_dtype: str = "bf16", activation_reserve: int = 0,
                 block_size: int | None = 16):
    """Requests of ``seq_len`` tokens that fit at once: the number :func:`max_concurrency`
    reports, vectorised over ``seq_len`` and ``gpu_memory`` (numpy arrays welcome) (chapter 02).

    ``requests = ⌊max(⌊gpu_memory × utilization⌋ − weights − reserve, 0) / kv_per_request⌋``
    with ``kv_per_request = kv_cache(model, seq_len, 1, kv_dtype, block_size=block_size).total``.
    """
    from .weights import weight_memory

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


def kv_crossover_tokens(model, batch_size=1, weight_dtype: str = "bf16", kv_dtype: str = "bf16",
                        mla_form: str = "latent", window_tokens: str = "window-1"):
    """Context length at which the KV cache of ``batch_size`` sequences reaches the weights (chapter 02).

    The smallest ``s`` with ``kv_bytes(model, s, batch_size) >= weight bytes``.  With full
    attention only, ``s = ⌈W / (batch_size · bytes_per_token)⌉``.  Sliding-window layers
    stop growing at the window, so beyond it only the full layers count:
    ``s = ⌈(W − batch · n_sliding · window_cap · b_layer) / (batch · n_full · b_layer)⌉``.
    ``max_position_embeddings`` is not applied (compare it yourself).

    Returns an int for a scalar ``batch_size`` (``math.inf`` when the cache can never reach
    the weights, e.g. when every layer is windowed); for an array ``batch_size``, a float
    array of whole numbers with ``inf`` where it never happens.
    """
    import math

    from .weights import weight_memory

    spec = load_spec(model)
    batch = positive_int("batch_size", batch_size)
    W = weight_memory(spec, weight_dtype).total
    pl = layer_bytes_per_token(spec, kv_dtype, mla_form)
    L = spec.num_layers
    n_sliding = spec.num_sliding_layers if spec.sliding_window else 0
    n_full = L - n_sliding
    array = isinstance(batch, np.ndarray)
    b = batch if array else np.asarray(batch, dtype=np.int64)
    s_all = -(-W // (b * pl * L))                       # every layer still growing
    if not n_sliding:
        out = s_all.astype(np.float64)
    else:
        _, cap = cached_tokens(spec, np.int64(spec.sliding_window + 1), window_tokens)
        cap = int(cap)
        if n_full:
            s_full = -(-(W - b * pl * n_sliding * cap) // (b * pl * n_full))
            beyond = s_full.astype(np.float64)
        else:
            beyond = np.full(np.shape(b), np.inf)
        out = np.where(s_all <= cap, s_all.astype(np.float64), beyond)
    if array:
        return out
    v = float(out)
    return int(v) if math.isfinite(v) else math.inf


def beam_search_kv(model, prompt_len: int, new_tokens: int, num_beams, kv_dtype: str = "bf16",
                   mla_form: str = "latent", share_prefix: bool = True,
                   block_size: int | None = None) -> Breakdown:
    """KV cache of beam search (or parallel sampling) with ``num_beams`` beams (chapter 02).

    Every beam keeps its own generated tokens, so the cache grows *linearly* in beams:

    * ``share_prefix=False`` (transformers' ``generate`` copies the prompt per beam):
      ``num_beams · (prompt_len + new_tokens) · bytes_per_token``;
    * ``share_prefix=True`` (paged attention, vLLM): ``(prompt_len + num_beams ·
      new_tokens) · bytes_per_token``; with ``block_size`` the prompt's full blocks are
      shared, its last partial block is copied once per beam (copy-on-write) and every
      beam's blocks are rounded up (``prompt_copies`` and ``paging_waste`` components).

    This is the worst case: beams that still share generated tokens share their blocks too.
    Sliding windows are ignored (every layer is treated as full attention), an upper bound.
    ``num_beams`` may be a numpy array.
    """
    spec = load_spec(model)
    P = positive_int("prompt_len", prompt_len)
    T = positive_int("new_tokens", new_tokens, minimum=0)
    check_seq_len(spec, P + max(T, 0))
    n = positive_int("num_beams", num_beams)
    pt = bytes_per_token(spec, kv_dtype, mla_form)
    if block_size is not None:
        block_size = positive_int("block_size", block_size)
    if not share_prefix:
        comps = {"prompt": n * P * pt, "generated": n * T * pt}
        if block_size is not None:
            comps["paging_waste"] = n * (-(-(P + T) // block_size) * block_size - (P + T)) * pt
    elif block_size is None:
        comps = {"prompt": P * pt + 0 * n, "generated": n * T * pt}
    elif T == 0:                                   # nothing written yet: the prompt's blocks only
        comps = {"prompt": P * pt + 0 * n, "paging_waste": (-(-P // block_size) * block_size - P) * pt + 0 * n}
    else:
        r = P % block_size                         # tokens in the prompt's last, partial block
        private = r + T                            # each beam's own blocks: its copy of it + its tokens
        comps = {"prompt": P * pt + 0 * n, "prompt_copies": (n - 1) * r * pt,
                 "generated": n * T * pt,
                 "paging_waste": n * (-(-private // block_size) * block_size - private) * pt}
    meta = {"num_beams": n, "prompt_len": P, "new_tokens": T, "share_prefix": share_prefix,
            "bytes_per_token": pt, "block_size": block_size}
    how = "shared prompt" if share_prefix else "prompt copied per beam"
    return Breakdown(comps, title=f"{spec.name} beam search KV ({how})", meta=meta)
