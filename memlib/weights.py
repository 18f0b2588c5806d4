"""Weight memory by precision and by quantisation format (chapter 01).

Plain dtypes: ``bytes = params × bits / 8`` for every tensor.

Quantisation formats quantise only the decoder's weight matrices
(:func:`memlib.params.linear_layers`); embeddings, ``lm_head``, norms, biases and MoE
routers stay in ``base_dtype`` (bf16 by default), as AutoGPTQ, AutoAWQ and
bitsandbytes leave them.  For a matrix of ``n = in·out`` weights:

* ``gptq``  4-bit: ``n/2`` (qweight) + ``⌈in/g⌉·out·2`` (fp16 scales)
  + ``⌈in/g⌉·out/2`` (4-bit zero points) + ``4·in`` (int32 ``g_idx``).
* ``awq``   4-bit: as GPTQ without ``g_idx``.
* ``nf4``   (bitsandbytes): ``n/2`` + one fp32 absmax per 64 weights, i.e. +0.5 bit/weight;
  with ``double_quant`` the absmax is 8-bit with one fp32 scale per 256 blocks,
  i.e. +0.127 bit/weight; plus the 16-entry (and 256-entry nested) code books.
* ``llm_int8`` (bitsandbytes): ``n`` int8 + one fp32 scale per output row.
* ``gguf:<TYPE>``: llama.cpp block formats (Q8_0 = 34 B per 32 weights, Q4_K = 144 B
  per 256, ...), applied to every 2-D tensor including embeddings and the output
  matrix (``llama-quantize --pure``); 1-D tensors stay F32.
"""
from __future__ import annotations

from .breakdown import Breakdown
from .params import count_params, linear_layers
from .spec import load_spec
from .units import DTYPE_BITS, canonical_dtype
from .validation import positive_int

#: llama.cpp block types: (weights per block, bytes per block).
GGUF_TYPES = {
    "F16": (1, 2), "BF16": (1, 2), "Q8_0": (32, 34), "Q6_K": (256, 210), "Q5_K": (256, 176),
    "Q5_0": (32, 22), "Q4_K": (256, 144), "Q4_0": (32, 18), "Q3_K": (256, 110), "Q2_K": (256, 84),
}
QUANT_FORMATS = ("gptq", "awq", "nf4", "llm_int8")


def weight_formats() -> list[str]:
    """Every value ``weight_memory``'s ``dtype`` accepts."""
    return list(DTYPE_BITS) + list(QUANT_FORMATS) + [f"gguf:{t}" for t in GGUF_TYPES]


def gguf_bits_per_weight(gguf_type: str) -> float:
    """Bits per weight of a llama.cpp block type (``Q4_K`` -> 4.5)."""
    n, b = GGUF_TYPES[gguf_type]
    return 8 * b / n


def _matrix_bytes(fmt: str, rows_in: int, cols_out: int, group_size: int, double_quant: bool):
    """(quantised weight bytes, overhead bytes) of one ``in × out`` matrix in ``fmt``."""
    n = rows_in * cols_out
    groups = -(-rows_in // group_size)
    if fmt == "gptq":
        return n // 2, groups * cols_out * 2 + groups * cols_out // 2 + 4 * rows_in
    if fmt == "awq":
        return n // 2, groups * cols_out * 2 + groups * cols_out // 2
    if fmt == "nf4":
        blocks = -(-n // 64)
        if double_quant:
            return n // 2, blocks + 4 * -(-blocks // 256) + 4 + 16 * 4 + 256 * 4
        return n // 2, 4 * blocks + 16 * 4
    if fmt == "llm_int8":
        return n, 4 * cols_out
    per_block, block_bytes = GGUF_TYPES[fmt[5:]]  # scales live inside each block
    return cols_out * -(-rows_in // per_block) * block_bytes, 0


def _canonical_format(dtype: str) -> str:
    if isinstance(dtype, str):
        if dtype.lower() in QUANT_FORMATS:
            return dtype.lower()
        if dtype.lower().startswith("gguf:"):
            t = dtype[5:].upper()
            if t not in GGUF_TYPES:
                raise ValueError(f"dtype: unknown GGUF type {dtype[5:]!r}; allowed: {', '.join(GGUF_TYPES)}")
            return "gguf:" + t
    return canonical_dtype(dtype, "dtype", allowed=weight_formats())


def weight_memory(model, dtype: str = "bf16", base_dtype: str = "bf16", group_size: int = 128,
                  double_quant: bool = False) -> Breakdown:
    """Bytes of the weights of ``model`` stored as ``dtype`` (chapter 01).

    ``dtype``: a plain dtype (``fp32 fp16 bf16 fp8 int8 int4``: ``params × bits/8``) or a
    format: ``gptq``, ``awq`` (4-bit, ``group_size`` knob), ``nf4`` (``double_quant``
    knob), ``llm_int8``, ``gguf:Q4_K`` etc.  Formats keep embeddings, lm_head, norms,
    biases and routers in ``base_dtype``; the quantisation metadata (scales, zero
    points, absmax, g_idx) is the ``quant_overhead`` component.
    """
    fmt = _canonical_format(dtype)
    group_size = positive_int("group_size", group_size)
    counts = count_params(model)
    spec = load_spec(model)
    meta = {"dtype": fmt, "params": counts.total, "active_params": counts.meta["active"]}
    if fmt in DTYPE_BITS:
        bits = DTYPE_BITS[fmt]
        comps = {k: -(-v * bits // 8) for k, v in counts.components.items()}
        return Breakdown(comps, title=f"{spec.name} weights ({fmt})", meta=meta)
    base = DTYPE_BITS[canonical_dtype(base_dtype, "base_dtype")] // 8
    plain = dict(counts.components)            # parameters left in base dtype, by component
    comps: dict[str, int] = {}
    overhead = 0
    matrices = list(linear_layers(spec))
    if fmt.startswith("gguf:"):  # llama.cpp quantises embeddings and output too
        V, E = spec.vocab_size, spec.embed_dim
        matrices.append(("embeddings", E, V, 1))
        if not spec.tie_word_embeddings:
            matrices.append(("lm_head", E, V, 1))
        base = 4  # 1-D tensors are F32 in GGUF files
    for component, rows_in, cols_out, count in matrices:
        q, extra = _matrix_bytes(fmt, rows_in, cols_out, group_size, double_quant)
        comps[component] = comps.get(component, 0) + q * count
        overhead += extra * count
        plain[component] -= rows_in * cols_out * count
    for k, v in plain.items():
        comps[k] = comps.get(k, 0) + v * base
    comps = {k: comps[k] for k in counts.components}
    comps["quant_overhead"] = overhead
    meta.update(group_size=group_size, double_quant=double_quant, base_dtype=base_dtype)
    return Breakdown(comps, title=f"{spec.name} weights ({fmt})", meta=meta)


def bits_per_param(model, dtype: str = "bf16", **knobs) -> float:
    """Effective bits per parameter: ``8 × weight bytes / params`` (overheads included)."""
    b = weight_memory(model, dtype, **knobs)
    return 8 * b.total / b.meta["params"]
