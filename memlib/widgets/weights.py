"""Chapter 01 explorers: weight bytes by dtype, and quantisation formats with their overheads.

Three layers (DESIGN §3):

1. compute: :func:`memlib.weight_memory`, :func:`memlib.count_params` and
   :func:`memlib.weights.quantization_split`;
2. plot functions that draw on a matplotlib ``ax``: :func:`plot_weight_bytes`,
   :func:`plot_params_by_component`, :func:`plot_bits_per_param`;
3. explorers: :func:`weights_explorer` and :func:`quantization_explorer`.

Chapter 00's first budget lives here too: :func:`anatomy_explorer` over
:func:`memlib.serving.serving_breakdown` (weights + KV cache).

ipywidgets and matplotlib are imported only inside the functions that need them.
"""
from __future__ import annotations

from ..breakdown import Breakdown
from ..units import DTYPE_BITS, GB, GiB
from ..weights import quantization_split, weight_formats, weight_memory

PLAIN_DTYPES = tuple(DTYPE_BITS)            # fp32 fp16 bf16 fp8 int8 int4
BASE_DTYPES = ("bf16", "fp16", "fp32")

#: Colours of the three roles of quantised-weight bytes.
ROLE_COLORS = {"quantized": "#4C72B0", "quant_overhead": "#C44E52", "unquantized": "#CCB974"}


# -- plot functions -------------------------------------------------------------------------
from .base import Explorer, model_dropdown


def plot_weight_bytes(breakdowns, ax, unit: str = "GiB", labels=None, legend: bool = True):
    """One stacked bar per weight :class:`Breakdown` (components = model parts); returns ``ax``."""
    from ..plotting import stacked_bar
    if isinstance(breakdowns, Breakdown):
        breakdowns = [breakdowns]
    ax = stacked_bar(list(breakdowns), ax=ax, unit=unit, labels=labels, legend=legend)
    ax.set_ylabel(f"weight memory ({unit})")
    return ax


def plot_params_by_component(counts, ax, labels=None, share: bool = True):
    """Horizontal stacked bars of parameter counts by component, one per model.

    ``counts``: Breakdowns from :func:`memlib.count_params` (``unit="params"``).  With
    ``share=True`` each bar is split in percent of its model's total (models of very
    different sizes stay readable) and the total is written at the end of the bar;
    otherwise the bars are in billions of parameters.  Returns ``ax``.
    """
    from ..plotting import color_for
    if isinstance(counts, Breakdown):
        counts = [counts]
    counts = list(counts)
    labels = list(labels or [c.title.replace(" parameters", "") for c in counts])
    names: list[str] = []
    for c in counts:
        names += [k for k in c.components if k not in names]
    y = range(len(counts))
    left = [0.0] * len(counts)
    for name in names:
        vals = [(c.get(name, 0) / c.total * 100) if share else c.get(name, 0) / 1e9 for c in counts]
        if not any(vals):
            continue
        ax.barh(y, vals, left=left, label=name, color=color_for(name), height=0.65)
        left = [a + v for a, v in zip(left, vals)]
    for i, c in enumerate(counts):
        active = c.meta.get("active", c.total)
        note = f" {c.total / 1e9:,.2f}B" + (f" ({active / 1e9:,.2f}B active)" if active != c.total else "")
        ax.text(left[i], i, note, va="center", ha="left", fontsize=8)
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels)
    ax.invert_yaxis()
    ax.set_xlabel("share of parameters (%)" if share else "parameters (billions)")
    if share:
        ax.set_xlim(0, 135)
        ax.set_xticks(range(0, 101, 20))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return ax


def plot_bits_per_param(splits, ax, labels=None, reference: float | None = 16):
    """Effective bits per parameter, one horizontal bar per format, split by role.

    ``splits``: Breakdowns from :func:`memlib.weights.quantization_split`; each bar is
    ``8 × bytes / params`` stacked as quantised weights, quantisation overhead and
    tensors kept in the base dtype.  A dashed line marks ``reference`` bits (bf16).
    Returns ``ax``.
    """
    if isinstance(splits, Breakdown):
        splits = [splits]
    splits = list(splits)
    labels = list(labels or [s.meta.get("dtype", s.title) for s in splits])
    y = range(len(splits))
    left = [0.0] * len(splits)
    text = {"quantized": "quantised weights", "quant_overhead": "scales / zeros / absmax",
            "unquantized": "kept in base dtype"}
    for role in ("quantized", "quant_overhead", "unquantized"):
        vals = [8 * s.get(role, 0) / s.meta["params"] for s in splits]
        if not any(vals):
            continue
        ax.barh(y, vals, left=left, label=text[role], color=ROLE_COLORS[role], height=0.65)
        left = [a + v for a, v in zip(left, vals)]
    for i, s in enumerate(splits):
        ax.text(left[i], i, f" {8 * s.total / s.meta['params']:.2f}", va="center", ha="left", fontsize=8)
    if reference:
        ax.axvline(reference, color="k", ls="--", lw=0.8)
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels)
    ax.invert_yaxis()
    ax.set_xlabel("effective bits per parameter (8 × bytes / params)")
    ax.set_xlim(0, max(max(left) * 1.15, (reference or 0) * 1.1))
    ax.legend(fontsize=8, loc="lower right")
    return ax


# -- describe helpers (the text an explorer prints) ------------------------------------------
def describe_weights(b: Breakdown) -> str:
    """Table of a weight Breakdown plus params and bytes per parameter."""
    params, active = b.meta["params"], b.meta["active_params"]
    lines = [b.table(), "",
             f"parameters: {params:,}" + (f"  (active per token: {active:,})" if active != params else ""),
             f"bytes per parameter: {b.total / params:.4f}   "
             f"total: {b.total / GiB:,.2f} GiB = {b.total / GB:,.2f} GB"]
    return "\n".join(lines)


def describe_quantization(s: Breakdown) -> str:
    """Table of a quantisation split plus effective bits and what stays unquantised."""
    m = s.meta
    params, q = m["params"], m["quantized_params"]
    bf16 = 2 * params
    lines = [s.table(), "",
             f"effective bits per parameter: {m['bits_per_param']:.3f}"
             + (f"   (per quantised weight: {m['bits_per_quantized_weight']:.3f})"
                if m["bits_per_quantized_weight"] is not None else ""),
             f"quantised parameters: {q:,} of {params:,} ({q / params:.1%}); "
             f"overhead: {s['quant_overhead'] / s.total:.1%} of the bytes",
             f"vs bf16 ({bf16 / GiB:,.2f} GiB): {s.total / bf16:.1%} of the size"]
    return "\n".join(lines)


# -- explorers ------------------------------------------------------------------------------


def weights_explorer(model="Llama-3.1-8B", dtype: str = "bf16"):
    """Model × dtype → the weight :class:`Breakdown` (``params × bits/8`` per component) and a bar.

    ``ex.result`` is the Breakdown; ``ex.set(model=..., dtype=...)`` drives it headless.
    """
    import ipywidgets as w

    controls = {"model": model_dropdown(model),
                "dtype": w.Dropdown(options=list(PLAIN_DTYPES), value=dtype, description="dtype")}

    def compute(model, dtype):
        return weight_memory(model, dtype)

    def plot(b, ax):  # every plain dtype of the same model, the selected one marked
        model = controls["model"].value
        bars = [b if d == b.meta["dtype"] else weight_memory(model, d) for d in PLAIN_DTYPES]
        plot_weight_bytes(bars, ax, labels=[f"[{d}]" if d == b.meta["dtype"] else d for d in PLAIN_DTYPES])

    return Explorer(compute, controls, plot=plot, describe=describe_weights,
                    title="Weight memory: parameters × bytes per parameter")


def quantization_explorer(model="Llama-3.1-8B", dtype: str = "gptq", group_size: int = 128,
                          double_quant: bool = False, base_dtype: str = "bf16"):
    """Model × format × group size × double quant → bytes, effective bits/param and overhead.

    ``ex.result`` is :func:`memlib.weights.quantization_split`'s Breakdown (``quantized``,
    ``quant_overhead``, ``unquantized``) with ``meta["bits_per_param"]``.  ``group_size``
    applies to ``gptq``/``awq``, ``double_quant`` to ``nf4``; a group size below 1 shows
    a message.
    """
    import ipywidgets as w

    controls = {
        "model": model_dropdown(model),
        "dtype": w.Dropdown(options=weight_formats(), value=dtype, description="format"),
        "group_size": w.IntText(value=group_size, description="group size"),
        "double_quant": w.Checkbox(value=double_quant, description="double quant (nf4)"),
        "base_dtype": w.Dropdown(options=list(BASE_DTYPES), value=base_dtype, description="base dtype"),
    }

    def compute(model, dtype, group_size, double_quant, base_dtype):
        return quantization_split(model, dtype, base_dtype=base_dtype, group_size=group_size,
                                  double_quant=double_quant)

    def plot(s, ax):
        plot_bits_per_param([s], ax, labels=[s.meta["dtype"]])

    return Explorer(compute, controls, plot=plot, describe=describe_quantization, figsize=(7, 2.4),
                    title="Quantisation formats: effective bits per parameter")


# -- chapter 00: a first breakdown (weights + KV cache) ---------------------------------------
def anatomy_explorer(model="Llama-3.1-8B", dtype: str = "bf16", kv_dtype: str = "bf16",
                     batch_size: int = 8, seq_len: int = 8192):
    """Chapter 00: model × dtypes × users × context → weights + KV cache as one stacked bar.

    ``ex.result`` is :func:`serving_breakdown`'s Breakdown; a context beyond the model's
    ``max_position_embeddings`` shows a message.
    """
    import ipywidgets as w

    controls = {
        "model": model_dropdown(model),
        "dtype": w.Dropdown(options=list(PLAIN_DTYPES), value=dtype, description="weights"),
        "kv_dtype": w.Dropdown(options=["bf16", "fp16", "fp8", "fp32"], value=kv_dtype, description="KV dtype"),
        "batch_size": w.IntSlider(value=batch_size, min=1, max=256, description="users"),
        "seq_len": w.IntText(value=seq_len, description="tokens/user"),
    }

    def plot(b, ax):
        plot_weight_bytes([b], ax, labels=[f"{b.meta['batch_size']} x {b.meta['seq_len']:,} tokens"])
        ax.set_ylabel("GiB")

    from ..serving import serving_breakdown
    return Explorer(serving_breakdown, controls, plot=plot,
                    title="A first breakdown: weights + KV cache")
