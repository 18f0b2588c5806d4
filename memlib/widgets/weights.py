"""Chapter 01 explorers: weight bytes by dtype, and quantisation formats with their overheads.

Three layers, as in every explorer (memlib.widgets):

1. compute: :func:`memlib.weight_memory`, :func:`memlib.count_params` and
   :func:`memlib.weights.quantization_split`;
2. plot functions that draw on a matplotlib ``ax``: :func:`plot_weight_bytes`,
   :func:`plot_params_by_component`, :func:`plot_bits_per_param`, :func:`plot_budget_on_gpu`;
3. explorers: :func:`weights_explorer` and :func:`quantization_explorer`.

Chapter 00's first budget lives here too: :func:`anatomy_explorer` over
:func:`memlib.serving.serving_breakdown` (weights + KV cache) against a GPU of
:data:`memlib.hardware.GPUS`.

The explorers redraw one figure whose margins are laid out at the first draw, so their plot
functions keep every label, title and legend inside the axes.

ipywidgets and matplotlib are imported only inside the functions that need them.
"""
from __future__ import annotations

from ..breakdown import Breakdown
from ..hardware import GPUS, gpu_bytes
from ..units import DTYPE_BITS, GB, UNITS, GiB
from ..weights import quantization_split, weight_formats, weight_memory

PLAIN_DTYPES = tuple(DTYPE_BITS)            # fp32 fp16 bf16 fp8 int8 int4
BASE_DTYPES = ("bf16", "fp16", "fp32")

#: Colours of the three roles of quantised-weight bytes.
ROLE_COLORS = {"quantized": "#4C72B0", "quant_overhead": "#C44E52", "unquantized": "#CCB974"}


# -- plot functions -------------------------------------------------------------------------
from .base import Explorer, model_dropdown


def plot_weight_bytes(breakdowns, ax, unit: str = "GiB", labels=None, legend: bool = True,
                      horizontal: bool = False):
    """One stacked bar per weight :class:`Breakdown` (components = model parts); returns ``ax``.

    ``horizontal=True`` draws the bars across, labelled on the left, with the legend and the
    totals inside the axes (what the explorer redraws: nothing can spill past its margins).
    """
    from ..plotting import color_for, stacked_bar
    if isinstance(breakdowns, Breakdown):
        breakdowns = [breakdowns]
    breakdowns = list(breakdowns)
    if not horizontal:
        ax = stacked_bar(breakdowns, ax=ax, unit=unit, labels=labels, legend=legend)
        ax.set_ylabel(f"weight memory ({unit})")
        return ax
    labels = list(labels or [b.title for b in breakdowns])
    names: list[str] = []
    for b in breakdowns:
        names += [k for k in b.components if k not in names]
    y = range(len(breakdowns))
    left = [0.0] * len(breakdowns)
    for name in names:
        vals = [b.get(name, 0) / UNITS[unit] for b in breakdowns]
        if not any(vals):
            continue
        ax.barh(y, vals, left=left, label=name, color=color_for(name), height=0.65)
        left = [a + v for a, v in zip(left, vals)]
    for i, top in enumerate(left):
        ax.text(top, i, f" {top:,.1f}", va="center", ha="left", fontsize=8)
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels)
    ax.invert_yaxis()
    ax.set_xlim(0, max(left) * 1.25)
    ax.set_xlabel(f"weight memory ({unit})")
    if legend:
        ax.legend(fontsize=7, loc="lower right", ncol=2 if len(names) > 4 else 1)
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
    if not any(labels):
        ax.set_yticks([])
    ax.invert_yaxis()
    ax.set_xlabel("effective bits per parameter (8 × bytes / params)")
    ax.set_xlim(0, max(max(left) * 1.15, (reference or 0) * 1.1))
    ax.legend(fontsize=8, loc="lower right")
    return ax


def plot_budget_on_gpu(b: Breakdown, ax, gpu_memory: int, gpu_name: str = "GPU", unit: str = "GiB",
                       utilization: float = 0.9):
    """One horizontal stacked bar of a budget (weights, KV cache...) against a GPU (chapter 00).

    A solid line marks ``gpu_memory`` (the memory a process can use: the runtime total), a
    dashed one ``utilization`` of it (vLLM's default cap).  The axis is fixed at 1.3 × the
    GPU's memory, so a change of users or tokens shows as a change of length; only a budget
    beyond that widens it.  The title states the margin.  Returns ``ax``.
    """
    from ..plotting import color_for
    u = UNITS[unit]
    mem, total = gpu_memory / u, b.total / u
    left = 0.0
    for name, v in b.components.items():
        if v:
            ax.barh([0.3], [v / u], left=left, height=0.5, label=name, color=color_for(name))
            left += v / u
    xmax = max(1.3 * mem, 1.12 * total)
    ax.set_xlim(0, xmax)
    ax.set_ylim(-1.0, 1.0)
    ax.text(total + 0.01 * xmax, 0.3, f"{total:,.2f}", va="center", ha="left", fontsize=8)
    ax.axvline(mem, color="k", lw=1.5)
    ax.axvline(utilization * mem, color="k", lw=1, ls="--")
    ax.text(mem + 0.01 * xmax, 0.8, f"{gpu_name}\n{mem:,.2f} {unit}", fontsize=7, va="center", ha="left")
    ax.text(utilization * mem - 0.01 * xmax, 0.8, f"{utilization:.0%}", fontsize=7, va="center", ha="right")
    ax.set_yticks([])
    ax.set_xlabel(f"{unit} (solid line: what the runtime reports; dashed: a server's {utilization:.0%} cap)")
    margin = mem - total
    ax.set_title(f"{total:,.2f} of {mem:,.2f} {unit}: " + (f"{margin:,.2f} {unit} to spare" if margin >= 0
                                                            else f"{-margin:,.2f} {unit} short"), fontsize=10)
    ax.legend(fontsize=7, loc="lower left", ncol=4)
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
        plot_weight_bytes(bars, ax, labels=[f"[{d}]" if d == b.meta["dtype"] else d for d in PLAIN_DTYPES],
                          horizontal=True)

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

    def plot(s, ax):   # the format goes in the title: a tick label would be cut by the first layout
        plot_bits_per_param([s], ax, labels=[""])
        ax.set_title(f"{s.meta['dtype']}: {s.meta['bits_per_param']:.2f} bits per parameter", fontsize=10)

    return Explorer(compute, controls, plot=plot, describe=describe_quantization, figsize=(7, 2.4),
                    title="Quantisation formats: effective bits per parameter")


# -- chapter 00: a first breakdown (weights + KV cache) ---------------------------------------
def describe_anatomy(b: Breakdown) -> str:
    """Table of a first budget plus its margin on the chosen GPU (chapter 00)."""
    m = b.meta
    mem, margin = m["gpu_memory"], m["margin"]
    verdict = (f"{margin / GiB:,.2f} GiB to spare" if margin >= 0 else f"{-margin / GiB:,.2f} GiB short")
    return "\n".join([
        b.table(), "",
        f"on {m['gpu']} ({mem / GiB:,.2f} GiB, the total the runtime reports): {verdict},",
        "before activations, the CUDA context and the allocator's slack (chapters 03 and 07 measure them);",
        f"a server caps itself at 90 % ({0.9 * mem / GiB:,.2f} GiB)."])


def anatomy_explorer(model="Llama-3.1-8B", dtype: str = "bf16", kv_dtype: str = "bf16",
                     batch_size: int = 8, seq_len: int = 8192, gpu: str = "H100 80GB"):
    """Chapter 00: model × dtypes × users × context → weights + KV cache as one bar against a GPU.

    ``ex.result`` is :func:`serving_breakdown`'s Breakdown with ``meta["gpu"]``,
    ``meta["gpu_memory"]`` (:data:`memlib.hardware.GPUS`: the runtime total) and
    ``meta["margin"]`` (``gpu_memory − total``, negative when short); a context beyond the
    model's ``max_position_embeddings`` shows a message.
    """
    from dataclasses import replace

    import ipywidgets as w

    from ..serving import serving_breakdown

    controls = {
        "model": model_dropdown(model),
        "dtype": w.Dropdown(options=list(PLAIN_DTYPES), value=dtype, description="weights"),
        "kv_dtype": w.Dropdown(options=["bf16", "fp16", "fp8", "fp32"], value=kv_dtype, description="KV dtype"),
        "batch_size": w.IntSlider(value=batch_size, min=1, max=256, description="users"),
        "seq_len": w.IntText(value=seq_len, description="tokens/user"),
        "gpu": w.Dropdown(options=list(GPUS), value=gpu, description="GPU"),
    }

    def compute(model, dtype, kv_dtype, batch_size, seq_len, gpu):
        b = serving_breakdown(model, dtype, kv_dtype, batch_size, seq_len)
        mem = gpu_bytes(gpu)
        return replace(b, meta={**b.meta, "gpu": gpu, "gpu_memory": mem, "margin": mem - b.total})

    def plot(b, ax):
        plot_budget_on_gpu(b, ax, b.meta["gpu_memory"], b.meta["gpu"])

    return Explorer(compute, controls, plot=plot, describe=describe_anatomy, figsize=(7, 2.6),
                    title="A first breakdown: weights + KV cache")
