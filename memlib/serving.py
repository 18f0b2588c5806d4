"""Serving: a GPU's budget, the requests that fit, and a first serving breakdown (chapters 00, 02, 07).

The engine's accounting (vLLM's): ``usable = total × gpu_memory_utilization``; what is left
after the weights and an activation reserve holds the KV cache, in paged blocks; the
number of requests that fit is that budget over one request's KV bytes.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from .breakdown import Breakdown
from .hardware import gpu_bytes
from .kv_cache import kv_cache
from .spec import load_spec
from .units import GB
from .validation import fraction, positive_int
from .weights import weight_memory


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
    """:func:`max_concurrency` on a GPU named in :data:`memlib.hardware.GPUS` (or given in bytes), chapter 02."""
    mem = gpu_bytes(gpu)
    r = max_concurrency(model, seq_len, mem, gpu_memory_utilization, weight_dtype, kv_dtype,
                        block_size=block_size)
    name = gpu if isinstance(gpu, str) else f"{mem / GB:.0f} GB"
    return replace(r, title=f"{load_spec(model).name} on {name}, {seq_len:,} tokens/request",
                   meta={**r.meta, "gpu": name, "seq_len": seq_len, "gpu_memory_utilization": gpu_memory_utilization,
                         "weight_dtype": weight_dtype, "kv_dtype": kv_dtype})
