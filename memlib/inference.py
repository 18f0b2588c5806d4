"""Inference memory: weights + the prefill's peak, KV cache included (chapter 03).

The bench's reference prefill (chapter 08): ``model.eval()``, ``torch.no_grad()``, one forward of
``batch_size`` sequences of ``seq_len`` tokens with ``use_cache=True, logits_to_keep=1``.
``total = weights + prefill_peak``, where ``prefill_peak`` is the peak of live bytes above
the weights: the whole KV cache (the last layer's entry is written before its attention
runs) plus the largest transient of :func:`memlib.activations.prefill_transients`.
"""
from __future__ import annotations

import numpy as np

from .activations import prefill_transients
from .breakdown import Breakdown
from .kv_cache import kv_cache
from .scenario import Scenario, attention_used, check_seq_len
from .spec import load_spec
from .symbolic import evaluate
from .units import canonical_dtype, dtype_bytes
from .validation import as_int, exact_sweeps, positive_int, traced
from .params import total_params


@exact_sweeps("batch_size", "seq_len")
def inference_memory(model, batch_size, seq_len, dtype: str = "bf16", kv_dtype: str | None = None,
                     attention: str = "sdpa", runtime: str = "minimal") -> Breakdown:
    """Weights + prefill peak of one batch (chapter 03 §inference).

    ``total = weights + kv_cache + max(prefill transients)``.  Components: ``weights``,
    ``kv_cache``, ``activations`` (the transient at the peak).  ``peak_at`` names where in
    the layer the peak happens (``"mlp"``, ``"moe_combine"`` or ``"attention"``).
    ``kv_dtype`` defaults to ``dtype``; ``runtime`` is passed to :func:`memlib.kv_cache`
    (``"transformers"`` reproduces what transformers holds right after a prefill, which
    the bench measures).
    """
    spec = load_spec(model)
    seq_len = check_seq_len(spec, seq_len)
    batch_size = positive_int("batch_size", batch_size)
    dtype = canonical_dtype(dtype, "dtype", allowed=("fp32", "fp16", "bf16"))
    kv_dtype = dtype if kv_dtype is None else kv_dtype
    Scenario(1, 1, "bf16", attention, runtime=runtime)       # checks the knobs
    return evaluate(_inference_result, (batch_size, seq_len), spec, dtype, kv_dtype, attention, runtime)


def _inference_result(batch_size, seq_len, spec, dtype, kv_dtype, attention, runtime) -> Breakdown:
    """:func:`inference_memory` for checked knobs (evaluated through :mod:`memlib.symbolic`)."""
    sc = Scenario(batch_size, seq_len, "bf16", attention, runtime=runtime)
    weights = total_params(spec) * int(dtype_bytes(dtype))       # = weight_memory(spec, dtype).total
    kv = kv_cache(spec, seq_len, batch_size, kv_dtype, runtime=runtime).total
    cands = prefill_transients(spec, sc, int(dtype_bytes(dtype)))
    scalar = traced(kv) or np.ndim(kv) == 0
    if scalar:
        where = max(cands, key=cands.get)
        transient = as_int(cands[where])
    else:
        names = list(cands)
        stacked = np.stack([np.broadcast_to(cands[n], np.shape(kv)) for n in names])
        transient, where = stacked.max(axis=0), np.array(names)[stacked.argmax(axis=0)]
    comps = {"weights": weights, "kv_cache": kv, "activations": transient}
    meta = {"model": spec.name, "prefill_peak": kv + transient, "attention": attention_used(spec, attention),
            "batch_size": batch_size, "seq_len": seq_len, "dtype": dtype, "kv_dtype": kv_dtype,
            "runtime": runtime}
    return Breakdown(comps, title=f"{spec.name} prefill, b={batch_size} s={seq_len} {dtype}",
                     kinds={"weights": "model_state", "kv_cache": "kv", "activations": "transient"},
                     peak_at=where if scalar else None,
                     meta=meta if scalar else {**meta, "peak_at": where})
