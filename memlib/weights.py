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
#: What a quantised checkpoint keeps its unquantised tensors (embeddings, norms...) in.
BASE_DTYPES = ("fp32", "fp16", "bf16")
#: Bits of the integer code of each weight in a llama.cpp block type; the rest of the
#: block (fp16 ``d``/``dmin``, 6-bit sub-block scales, ...) is scale metadata (chapter 01).
GGUF_CODE_BITS = {"F16": 16, "BF16": 16, "Q8_0": 8, "Q6_K": 6, "Q5_K": 5, "Q5_0": 5, "Q4_K": 4,
                  "Q4_0": 4, "Q3_K": 3, "Q2_K": 2}


def weight_formats() -> list[str]:
    """Every value ``weight_memory``'s ``dtype`` accepts (chapter 01)."""
    return list(DTYPE_BITS) + list(QUANT_FORMATS) + [f"gguf:{t}" for t in GGUF_TYPES]


def gguf_bits_per_weight(gguf_type: str) -> float:
    """Bits per weight of a llama.cpp block type, ``8 · block bytes / block weights`` (``Q4_K`` -> 4.5; chapter 01)."""
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
    base = DTYPE_BITS[canonical_dtype(base_dtype, "base_dtype", allowed=BASE_DTYPES)] // 8
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
    """Effective bits per parameter: ``8 × weight bytes / params`` (overheads included; chapter 01)."""
    b = weight_memory(model, dtype, **knobs)
    return 8 * b.total / b.meta["params"]


def quantized_params(model, dtype: str = "gptq") -> int:
    """Parameters a format stores in its low-bit encoding (chapter 01 §what stays unquantised).

    ``Σ in·out·count`` over :func:`memlib.params.linear_layers` for ``gptq``, ``awq``,
    ``nf4`` and ``llm_int8``; plus the embedding and an untied ``lm_head`` (``V·E`` each)
    for ``gguf:*``; every parameter for a plain dtype (``fp8``, ``int4``, ... cast every
    tensor).  ``params − quantized_params`` stay in the base dtype.
    """
    fmt = _canonical_format(dtype)
    spec = load_spec(model)
    if fmt in DTYPE_BITS:
        return count_params(spec).total
    n = sum(rows_in * cols_out * count for _, rows_in, cols_out, count in linear_layers(spec))
    if fmt.startswith("gguf:"):
        n += spec.vocab_size * spec.embed_dim * (1 if spec.tie_word_embeddings else 2)
    return n


def quantization_split(model, dtype: str = "gptq", base_dtype: str = "bf16", group_size: int = 128,
                       double_quant: bool = False) -> Breakdown:
    """The weight bytes of ``model`` in ``dtype`` split by role (chapter 01 §quantisation).

    Components: ``quantized`` (the packed low-bit weights), ``quant_overhead`` (scales,
    zero points, absmax, ``g_idx``) and ``unquantized`` (tensors left in ``base_dtype``:
    embeddings, lm_head, norms, biases, routers; F32 1-D tensors for GGUF).  The total
    equals :func:`weight_memory`'s.  For ``gguf:*`` types, whose scales live inside each
    block (so :func:`weight_memory` reports no ``quant_overhead``), each block is split
    here into its codes (``GGUF_CODE_BITS`` per weight) and the rest (``Q4_K``: 4 + 0.5 bits).  A plain dtype narrower than ``base_dtype`` counts as
    quantising everything, a wider or equal one as quantising nothing.

    ``meta``: ``params``, ``quantized_params``, ``bits_per_param = 8·total/params`` and
    ``bits_per_quantized_weight = 8·(quantized + quant_overhead)/quantized_params``.
    """
    b = weight_memory(model, dtype, base_dtype=base_dtype, group_size=group_size,
                      double_quant=double_quant)
    fmt, params = b.meta["dtype"], b.meta["params"]
    total = b.total
    if fmt in DTYPE_BITS:
        narrower = DTYPE_BITS[fmt] < DTYPE_BITS[canonical_dtype(base_dtype, "base_dtype", allowed=BASE_DTYPES)]
        q_params = params if narrower else 0
        comps = {"quantized": total if narrower else 0, "quant_overhead": 0,
                 "unquantized": 0 if narrower else total}
    else:
        q_params = quantized_params(model, fmt)
        base = 4 if fmt.startswith("gguf:") else DTYPE_BITS[canonical_dtype(base_dtype, "base_dtype", allowed=BASE_DTYPES)] // 8
        unq = (params - q_params) * base
        overhead = b["quant_overhead"]
        if fmt.startswith("gguf:"):  # split each block into its codes and its scales
            per_block, block_bytes = GGUF_TYPES[fmt[5:]]
            spec = load_spec(model)
            mats = [(i, o, n) for _, i, o, n in linear_layers(spec)]
            mats += [(spec.embed_dim, spec.vocab_size, 1 if spec.tie_word_embeddings else 2)]
            blocks = sum(n * o * -(-i // per_block) for i, o, n in mats)
            overhead = blocks * (block_bytes - per_block * GGUF_CODE_BITS[fmt[5:]] // 8)
        comps = {"quantized": total - overhead - unq, "quant_overhead": overhead, "unquantized": unq}
    meta = dict(b.meta)
    meta.update(quantized_params=q_params, bits_per_param=8 * total / params,
                bits_per_quantized_weight=(8 * (comps["quantized"] + comps["quant_overhead"]) / q_params
                                           if q_params else None))
    return Breakdown(comps, title=b.title, meta=meta)
