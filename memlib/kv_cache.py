"""The KV cache: MHA, MQA, GQA, MLA, sliding windows, paging and concurrency (chapter 02).

Per token and per layer, attention keeps a key and a value vector for every KV head::

    MHA/MQA/GQA:  2 · n_kv_heads · head_dim · bytes
    MLA latent:   (kv_lora_rank + qk_rope_head_dim) · bytes   (what serving engines keep)
    MLA expanded: n_heads · (qk_nope + qk_rope + v_head_dim) · bytes

A full-attention layer holds every token; a sliding-window layer holds at most
``window - 1`` past tokens (the new token makes the window): the architecture's minimum,
``runtime="minimal"`` (the default).  ``runtime="transformers"`` is what Hugging Face
transformers holds right after a prefill (the bench measures it): its sliding cache keeps
the last ``window - 1`` tokens as a *view* of the prefill's K/V tensors, and a view keeps
the whole storage alive; each sliding layer also keeps an 8-byte window-size tensor; and
Falcon's ``new_decoder_architecture`` caches K/V broadcast to every query head (chapter
02 names these quirks).  ``runtime="vllm"`` is what vLLM's paged cache holds for a request
(chapter 07): every layer in blocks of ``block_size`` tokens (16 unless given), and a
sliding layer frees only the blocks wholly outside its window, holding
``⌈s/bs⌉ − ⌊max(0, s − window + 1)/bs⌋`` blocks (``SlidingWindowManager``, vLLM V1).  Totals are ``batch_size ×`` the per-sequence bytes.  All
functions take numpy arrays for ``batch_size`` and ``seq_len`` and return arrays.
"""
from __future__ import annotations

import math

import numpy as np

from .breakdown import Breakdown
from .scenario import RUNTIMES, check_seq_len
from .spec import ModelSpec, load_spec
from .units import canonical_dtype, dtype_bytes
from .validation import INT64_MAX, as_int, choice, exact_sweeps, positive_int

KV_DTYPES = ("fp32", "fp16", "bf16", "fp8", "int8")
MLA_FORMS = ("latent", "expanded")
#: Bytes of the window-size tensor (int64) transformers keeps per sliding layer.
WINDOW_SCALAR_BYTES = 8
#: vLLM's default block: 16 tokens of every layer (``--block-size``).
VLLM_BLOCK_SIZE = 16


def _kv_dtype(kv_dtype) -> float:
    return dtype_bytes(canonical_dtype(kv_dtype, "kv_dtype", allowed=KV_DTYPES), "kv_dtype")


def layer_bytes_per_token(model, kv_dtype: str = "bf16", mla_form: str = "latent",
                          runtime: str = "minimal") -> int:
    """Bytes one layer adds to the cache per token (the formulas in the module docstring, chapter 02).

    ``runtime="transformers"``: Falcon's ``new_decoder_architecture`` caches K/V broadcast
    to every query head, ``2·n_heads·head_dim·bytes``.
    """
    spec = load_spec(model)
    b = _kv_dtype(kv_dtype)
    choice("mla_form", mla_form, MLA_FORMS)
    choice("runtime", runtime, RUNTIMES)
    if spec.is_mla:
        if mla_form == "latent":
            return int((spec.kv_lora_rank + spec.qk_rope_head_dim) * b)
        return int(spec.num_heads * (spec.qk_nope_head_dim + spec.qk_rope_head_dim + spec.v_head_dim) * b)
    heads = spec.num_heads if runtime == "transformers" and spec.new_decoder_architecture else spec.num_kv_heads
    return int(2 * heads * spec.head_dim * b)


def bytes_per_token(model, kv_dtype: str = "bf16", mla_form: str = "latent", runtime: str = "minimal") -> int:
    """KV bytes per token of context over all layers, before any window caps it (chapter 02):
    ``num_layers × layer_bytes_per_token``."""
    spec = load_spec(model)
    return spec.num_layers * layer_bytes_per_token(spec, kv_dtype, mla_form, runtime)


def cached_tokens(spec: ModelSpec, seq_len, runtime: str = "minimal"):
    """``(full-layer tokens, sliding-layer tokens)`` held for a sequence of ``seq_len`` (chapter 02):
    ``min(seq_len, window − 1)`` in a sliding layer, or ``seq_len`` for transformers right
    after a prefill.  Python ints for an int ``seq_len``, arrays for an array."""
    choice("runtime", runtime, RUNTIMES)
    if spec.sliding_window is None or not spec.num_sliding_layers:
        return seq_len, 0
    if runtime == "transformers":
        return seq_len, seq_len
    cap = spec.sliding_window - 1
    return seq_len, (np.minimum(seq_len, cap) if isinstance(seq_len, np.ndarray) else min(as_int(seq_len), cap))


def vllm_window_blocks(seq_len, window: int, block_size: int = VLLM_BLOCK_SIZE):
    """Blocks a vLLM sliding-window layer holds for a request of ``seq_len`` tokens (chapter 07):
    ``⌈s/bs⌉ − ⌊max(0, s − window + 1)/bs⌋`` -- the blocks wholly before the window are freed."""
    skipped = np.maximum(seq_len - window + 1, 0) if isinstance(seq_len, np.ndarray) else max(seq_len - window + 1, 0)
    return -(-seq_len // block_size) - skipped // block_size


@exact_sweeps("seq_len", "batch_size")
def kv_cache(model, seq_len, batch_size=1, kv_dtype: str = "bf16", mla_form: str = "latent",
             block_size: int | None = None, runtime: str = "minimal") -> Breakdown:
    """KV-cache bytes of ``batch_size`` sequences of ``seq_len`` tokens (chapter 02).

    ``total = batch · Σ_layers tokens_held(layer) · layer_bytes_per_token``.  Components:
    ``full_layers`` and ``sliding_layers``; with ``block_size`` (paged attention, e.g. 16)
    each layer's tokens are rounded up to whole blocks and the rounding is the
    ``paging_waste`` component; with ``runtime="transformers"``, ``window_scalars`` (8
    bytes per sliding layer); ``runtime="vllm"`` pages by 16 tokens unless ``block_size``
    says otherwise, and a sliding layer's ``paging_waste`` counts the blocks vLLM keeps
    around its window (:func:`vllm_window_blocks`).  ``seq_len``/``batch_size`` may be numpy arrays.
    """
    spec = load_spec(model)
    seq_len = check_seq_len(spec, seq_len)
    batch_size = positive_int("batch_size", batch_size)
    per_layer = layer_bytes_per_token(spec, kv_dtype, mla_form, runtime)
    n_sliding = spec.num_sliding_layers if spec.sliding_window else 0
    n_full = spec.num_layers - n_sliding
    full_tok, slide_tok = cached_tokens(spec, seq_len, runtime)
    comps = {"full_layers": batch_size * n_full * full_tok * per_layer}
    if n_sliding:
        comps["sliding_layers"] = batch_size * n_sliding * slide_tok * per_layer
    if runtime == "vllm" and block_size is None:
        block_size = VLLM_BLOCK_SIZE
    if block_size is not None:
        block_size = positive_int("block_size", block_size)

        def rounded(t):
            return -(-t // block_size) * block_size
        slide_held = rounded(slide_tok)
        if runtime == "vllm" and n_sliding:
            slide_held = vllm_window_blocks(seq_len, spec.sliding_window, block_size) * block_size
        waste = n_full * (rounded(full_tok) - full_tok) + n_sliding * (slide_held - slide_tok)
        comps["paging_waste"] = batch_size * waste * per_layer
    if runtime == "transformers" and n_sliding:
        comps["window_scalars"] = WINDOW_SCALAR_BYTES * n_sliding + 0 * batch_size * seq_len
    meta = {"bytes_per_token": spec.num_layers * per_layer, "attention": spec.attention_kind,
            "kv_dtype": kv_dtype, "seq_len": seq_len, "batch_size": batch_size, "runtime": runtime,
            "block_size": block_size}
    if spec.is_mla:
        meta["mla_form"] = mla_form
    return Breakdown(comps, title=f"{spec.name} KV cache", kinds="kv", meta=meta)


def kv_bytes(model, seq_len, batch_size=1, kv_dtype: str = "bf16", **knobs):
    """Total KV-cache bytes (int, or an array for array inputs) of :func:`kv_cache` (chapter 02)."""
    return kv_cache(model, seq_len, batch_size, kv_dtype, **knobs).total


def kv_crossover_tokens(model, batch_size=1, weight_dtype: str = "bf16", kv_dtype: str = "bf16",
                        mla_form: str = "latent", runtime: str = "minimal"):
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
    from .weights import weight_memory

    spec = load_spec(model)
    batch = positive_int("batch_size", batch_size)
    W = weight_memory(spec, weight_dtype).total
    pl = layer_bytes_per_token(spec, kv_dtype, mla_form, runtime)
    L = spec.num_layers
    n_sliding = spec.num_sliding_layers if spec.sliding_window else 0
    n_full = L - n_sliding
    cap = int(cached_tokens(spec, spec.sliding_window + 1, runtime)[1]) if n_sliding else 0
    if not isinstance(batch, np.ndarray):           # Python ints: exact at any batch size
        s_all = -(-W // (batch * pl * L))
        if not n_sliding or s_all <= cap:
            return s_all
        if not n_full:
            return math.inf
        return -(-(W - batch * pl * n_sliding * cap) // (batch * pl * n_full))
    if int(batch.max()) * pl * L > INT64_MAX:
        raise ValueError(f"batch_size: {int(batch.max()):,} sequences of {pl * L:,} bytes per token overflow "
                         f"an int64 array; pass a Python int for an exact answer")
    b = batch
    s_all = -(-W // (b * pl * L))                       # every layer still growing
    if not n_sliding:
        return s_all.astype(np.float64)
    if n_full:
        beyond = (-(-(W - b * pl * n_sliding * cap) // (b * pl * n_full))).astype(np.float64)
    else:
        beyond = np.full(np.shape(b), np.inf)
    return np.where(s_all <= cap, s_all.astype(np.float64), beyond)


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
    return Breakdown(comps, title=f"{spec.name} beam search KV ({how})", kinds="kv", meta=meta)


def kv_summary(model, seq_len, batch_size=1, kv_dtype="bf16", mla_form="latent",
               weight_dtype="bf16", runtime: str = "minimal") -> Breakdown:
    """:func:`kv_cache` with the weights and the crossover context in ``meta`` (chapter 02):
    ``weights``, ``weight_dtype``, ``crossover_tokens`` (:func:`kv_crossover_tokens`),
    ``max_position_embeddings``."""
    from dataclasses import replace

    from .weights import weight_memory
    spec = load_spec(model)
    kv = kv_cache(spec, seq_len, batch_size, kv_dtype, mla_form=mla_form, runtime=runtime)
    w = weight_memory(spec, weight_dtype).total
    meta = {**kv.meta, "model": spec.name, "weights": w, "weight_dtype": weight_dtype,
            "crossover_tokens": kv_crossover_tokens(spec, kv.meta["batch_size"], weight_dtype, kv_dtype,
                                                    mla_form, runtime),
            "max_position_embeddings": spec.max_position_embeddings}
    return replace(kv, meta=meta)
