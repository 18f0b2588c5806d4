"""Chapter 02 explorers: the KV cache against context, weights and a GPU's memory.

Three layers, as in every explorer (memlib.widgets):

1. compute: :func:`memlib.kv_cache`, :func:`memlib.max_concurrency` and the vectorised
   :func:`memlib.kv_cache.max_requests` / :func:`memlib.kv_cache.kv_crossover_tokens`;
2. plot functions that draw on a matplotlib ``ax``: :func:`plot_kv_per_token`,
   :func:`plot_kv_vs_context`, :func:`plot_kv_vs_weights`, :func:`plot_concurrency`,
   :func:`plot_gpu_budget`;
3. explorers: :func:`kv_explorer` and :func:`concurrency_explorer`.

Sweeps pass numpy arrays to memlib (no Python loop over grid points).  ipywidgets and
matplotlib are imported only inside the functions that need them.  GPU memory is
:data:`memlib.hardware.GPUS`: the total the runtime reports, which vLLM multiplies by
``gpu_memory_utilization``.  The explorers redraw one figure laid out at its first draw,
so their plot functions keep titles, labels and legends inside the axes.
"""
from __future__ import annotations

import numpy as np

from ..breakdown import Breakdown
from ..hardware import GPUS
from ..kv_cache import KV_DTYPES, MLA_FORMS, bytes_per_token, kv_cache, kv_crossover_tokens, kv_summary
from ..serving import concurrency, max_requests
from ..spec import load_spec
from ..units import GB, UNITS, GiB
from ..plotting import token_ticks as _tokens
from ..weights import weight_memory

#: One colour per attention kind.
KIND_COLORS = {"MHA": "#C44E52", "GQA": "#4C72B0", "MQA": "#55A868", "MLA": "#8172B3"}

#: Weight formats offered by the concurrency explorer.
WEIGHT_DTYPES = ("bf16", "fp8", "int8", "int4", "gptq", "awq", "nf4")


def _label(spec) -> str:
    return spec.name


def _token_axis(axis):
    from matplotlib.ticker import FuncFormatter
    axis.set_major_formatter(FuncFormatter(_tokens))


# -- plot functions -------------------------------------------------------------------------
def plot_kv_per_token(models, ax, kv_dtype: str = "bf16", mla_form: str = "latent", unit: str = "KiB"):
    """One horizontal bar per model: KV bytes per token of context (all layers), coloured by
    attention kind; sliding-window models are annotated.  Returns ``ax``."""
    specs = [load_spec(m) for m in models]
    vals = [bytes_per_token(s, kv_dtype, mla_form) / UNITS[unit] for s in specs]
    colors = [KIND_COLORS[s.attention_kind] for s in specs]
    y = np.arange(len(specs))
    ax.barh(y, vals, color=colors, height=0.7)
    top = max(vals)
    for i, (s, v) in enumerate(zip(specs, vals)):
        note = f" {v:,.0f} {unit}  {s.attention_kind}"
        if s.sliding_window and s.num_sliding_layers:
            note += f", window {s.sliding_window:,} on {s.num_sliding_layers}/{s.num_layers} layers"
        ax.text(v + top * 0.01, i, note, va="center", ha="left", fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels([_label(s) for s in specs], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.6)
    ax.set_xlabel(f"KV cache per token of context ({unit}, {kv_dtype})")
    from matplotlib.patches import Patch
    ax.legend(handles=[Patch(color=c, label=k) for k, c in KIND_COLORS.items()], fontsize=8,
              loc="lower right")
    return ax


def plot_kv_vs_context(models, seq_lens, ax, batch_size: int = 1, kv_dtype: str = "bf16",
                       mla_form: str = "latent", weight_dtype: str | None = "bf16", unit: str = "GiB",
                       mark: int | None = None, relative: bool = False):
    """KV-cache bytes against context length (log-log), one line per model, each stopping at
    its ``max_position_embeddings``.  With ``weight_dtype`` the weights are a dashed line of
    the same colour; with ``relative=True`` the y axis is KV / weights instead, and the
    line ``KV = weights`` is drawn once.  ``mark`` puts a dot at that context.  Returns ``ax``."""
    from ..plotting import color_for
    seq_lens = np.asarray(seq_lens, dtype=np.int64)
    for m in models:
        spec = load_spec(m)
        s = seq_lens[seq_lens <= spec.max_position_embeddings]
        if not s.size:
            continue
        color = color_for(spec.name)
        w = weight_memory(spec, weight_dtype or "bf16").total
        scale = w if relative else UNITS[unit]
        kv = kv_cache(spec, s, batch_size, kv_dtype, mla_form=mla_form).total / scale
        ax.plot(s, kv, color=color, lw=2, label=f"{spec.name} ({spec.attention_kind})")
        if weight_dtype and not relative:
            ax.axhline(w / scale, color=color, ls="--", lw=1)
            ax.text(seq_lens[-1], w / scale, f"{spec.name} weights ({weight_dtype})", color=color,
                    fontsize=7, va="bottom", ha="right")
        if mark is not None and mark <= spec.max_position_embeddings:
            v = kv_cache(spec, mark, batch_size, kv_dtype, mla_form=mla_form).total / scale
            ax.plot([mark], [v], "o", color=color, ms=7)
    if relative:
        ax.axhline(1, color="k", lw=1, ls="--")
        ax.text(seq_lens[0], 1, f"KV = weights ({weight_dtype or 'bf16'})", fontsize=8, va="bottom")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    _token_axis(ax.xaxis)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("KV cache / weights" if relative else unit)
    ax.set_title(f"KV cache, batch {batch_size}, {kv_dtype}", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    return ax


def plot_kv_vs_weights(models, batch_sizes, ax, weight_dtype: str = "bf16", kv_dtype: str = "bf16"):
    """Context length at which the KV cache of a batch equals the weights, against batch size
    (log-log): above a model's line, the cache is bigger than the model.  Each line stops
    where that context would exceed the model's ``max_position_embeddings`` (or where a
    fully windowed model can never get there).  Returns ``ax``."""
    from ..plotting import color_for
    b = np.asarray(batch_sizes, dtype=np.int64)
    for m in models:
        spec = load_spec(m)
        s = kv_crossover_tokens(spec, b, weight_dtype, kv_dtype)
        ok = s <= spec.max_position_embeddings
        ax.plot(b, np.where(ok, s, np.nan), color=color_for(spec.name), lw=2, marker="o", ms=3,
                label=f"{spec.name} ({spec.attention_kind}, max {_tokens(spec.max_position_embeddings)})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    _token_axis(ax.yaxis)
    ax.set_xlabel("batch size (concurrent sequences)")
    ax.set_ylabel("context where KV = weights (tokens)")
    ax.set_title(f"When the KV cache overtakes the weights ({weight_dtype} weights, {kv_dtype} KV)",
                 fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    return ax


def plot_concurrency(model, seq_lens, ax, gpus=None, gpu_memory_utilization: float = 0.9,
                     weight_dtype: str = "bf16", kv_dtype: str = "bf16", block_size: int | None = 16):
    """Requests that fit at once against tokens per request, one line per GPU (log-log);
    GPUs on which the model does not fit are listed in the legend.  Returns ``ax``."""
    from ..plotting import color_for
    gpus = dict(gpus or GPUS)
    spec = load_spec(model)
    s = np.asarray(seq_lens, dtype=np.int64)
    s = s[s <= spec.max_position_embeddings]
    styles = [("o", "-"), ("s", "--"), ("^", "-"), ("v", "--"), ("D", "-"), ("x", ":")]
    for i, (name, mem) in enumerate(gpus.items()):
        n = max_requests(spec, s, mem, gpu_memory_utilization, weight_dtype, kv_dtype, block_size=block_size)
        marker, ls = styles[i % len(styles)]
        if not n.any():
            ax.plot([], [], color=color_for(name), label=f"{name}: weights do not fit")
            continue
        ax.plot(s, np.where(n > 0, n, np.nan), color=color_for(name), lw=1.8, ls=ls, marker=marker, ms=4,
                label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    _token_axis(ax.xaxis)
    ax.set_xlabel("tokens per request (prompt + output)")
    ax.set_ylabel("concurrent requests that fit")
    ax.set_title(f"{spec.name}: {weight_dtype} weights, {kv_dtype} KV, "
                 f"{gpu_memory_utilization:.0%} of the GPU", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    return ax


def plot_gpu_budget(result: Breakdown, ax, unit: str = "GiB"):
    """One horizontal stacked bar of a :func:`memlib.max_concurrency` result: weights, KV of
    the requests that fit, free budget, and the memory kept out by the utilisation cap.

    Everything stays inside the axes (legend below the bar, a short title), so an explorer's
    later redraws cannot cut it; the reason for 0 requests is in :func:`describe_concurrency`.
    """
    from ..plotting import color_for
    m = result.meta
    u = UNITS[unit]
    parts = dict(result.components)
    parts["held back (1 - utilisation)"] = m["gpu_memory"] - m["usable"]
    left = 0.0
    for name, v in parts.items():
        v = v / u
        if v <= 0:
            continue
        ax.barh([0.3], [v], left=left, color="#DDDDDD" if name.startswith("held") else color_for(name),
                label=name, height=0.5)
        left += v
    ax.axvline(m["usable"] / u, color="k", lw=1, ls="--")
    ax.axvline(m["gpu_memory"] / u, color="k", lw=1.5)
    ax.set_yticks([])
    ax.set_ylim(-1.0, 1.0)
    ax.set_xlim(0, max(m["gpu_memory"], m["gpu_memory"] - m["usable"] + result.total) / u * 1.04)
    ax.set_xlabel(f"{unit} (solid line: what the runtime reports; dashed: the utilisation cap)")
    if m["requests"] == 0 and "reason" in m:
        ax.set_title("0 requests: the weights do not fit", fontsize=10)
    else:
        ax.set_title(f"{m['requests']:,} requests of {m.get('seq_len', '?'):,} tokens fit", fontsize=10)
    ax.legend(fontsize=7, loc="lower left", ncol=4)
    return ax


# -- compute + describe (pure) --------------------------------------------------------------
def describe_kv(b: Breakdown) -> str:
    """Table of a KV Breakdown plus bytes per token, the share of the weights and the crossover."""
    m = b.meta
    x = m["crossover_tokens"]
    cross = (f"the cache equals the weights at {x:,} tokens per sequence"
             + ("" if x <= m["max_position_embeddings"] else " (beyond the model's max context)")
             if x != float("inf") else "the cache never reaches the weights (every layer is windowed)")
    lines = [b.table(), "",
             f"{m['attention']}: {m['bytes_per_token']:,} B/token = {m['bytes_per_token'] / 1024:,.2f} KiB/token "
             f"({m['kv_dtype']}" + (f", MLA {m['mla_form']}" if "mla_form" in m else "") + ")",
             f"KV / weights ({m['weight_dtype']}, {m['weights'] / GiB:,.2f} GiB): {b.total / m['weights']:.1%}",
             f"at batch {m['batch_size']}, {cross}"]
    return "\n".join(lines)


def describe_concurrency(r: Breakdown) -> str:
    """Table of a concurrency Breakdown plus the number of requests and why."""
    m = r.meta
    lines = [r.table(), ""]
    if m["requests"] == 0 and "reason" in m:
        lines.append(f"0 requests: {m['reason']};")
        lines.append("tensor parallelism splits the weights over several GPUs (chapter 07 counts how many).")
    else:
        held = m["gpu_memory"] - m["usable"]
        lines.append(f"{m['requests']:,} requests of {m['seq_len']:,} tokens fit on {m['gpu']} "
                     f"({m['gpu_memory'] / GiB:,.2f} GiB = {m['gpu_memory'] / GB:,.2f} GB, "
                     f"{m['gpu_memory_utilization']:.0%} usable);")
        lines.append(f"KV per request {m['kv_per_request'] / 2**20:,.1f} MiB"
                     + (f" in blocks of {m['block_size']} tokens" if m.get("block_size") else "")
                     + f"; {(m['budget'] - m['requests'] * m['kv_per_request']) / GiB:,.2f} GiB of the budget left over.")
        lines.append(f"Margin: {held / GiB:,.2f} GiB above the {m['gpu_memory_utilization']:.0%} cap for the CUDA "
                     "context, CUDA graphs and memory outside torch;")
        reserve = r.get("activation_reserve", 0)
        lines.append(f"activation reserve {reserve / GiB:,.2f} GiB (chapter 07 measures all of them).")
    return "\n".join(lines)


# -- explorers ------------------------------------------------------------------------------


def kv_explorer(model="Llama-3.1-8B", seq_len: int = 8192, batch_size: int = 1, kv_dtype: str = "bf16",
                mla_form: str = "latent", weight_dtype: str = "bf16"):
    """Model × context × batch × KV dtype × MLA form → the KV :class:`Breakdown` and a plot of
    KV against context with the weights line.

    ``ex.result`` is :func:`kv_summary`'s Breakdown (``meta`` has ``weights`` and
    ``crossover_tokens``); ``ex.set(seq_len=..., batch_size=...)`` drives it headless.  A
    context beyond ``max_position_embeddings`` or a batch below 1 shows a message.
    """
    import ipywidgets as w

    from .base import Explorer, model_dropdown

    controls = {
        "model": model_dropdown(model),
        "seq_len": w.IntText(value=seq_len, description="seq_len"),
        "batch_size": w.IntText(value=batch_size, description="batch_size"),
        "kv_dtype": w.Dropdown(options=list(KV_DTYPES), value=kv_dtype, description="kv_dtype"),
        "mla_form": w.Dropdown(options=list(MLA_FORMS), value=mla_form, description="MLA form"),
    }

    def compute(model, seq_len, batch_size, kv_dtype, mla_form):
        return kv_summary(model, seq_len, batch_size, kv_dtype, mla_form, weight_dtype)

    def plot(b, ax):
        m = b.meta
        top = m["max_position_embeddings"]
        grid = np.unique(np.clip(2 ** np.arange(7, int(np.ceil(np.log2(top))) + 1), 1, top))
        plot_kv_vs_context([m["model"]], grid, ax, batch_size=m["batch_size"], kv_dtype=m["kv_dtype"],
                           mla_form=m.get("mla_form", "latent"), weight_dtype=weight_dtype,
                           mark=m["seq_len"])

    return Explorer(compute, controls, plot=plot, describe=describe_kv,
                    title="KV cache: batch × context × layers × bytes per token")


def concurrency_explorer(model="Llama-3.1-8B", gpu: str = "H100 80GB", seq_len: int = 4096,
                         gpu_memory_utilization: float = 0.9, weight_dtype: str = "bf16",
                         kv_dtype: str = "bf16"):
    """Model × GPU × tokens per request × utilisation × weight and KV dtypes → how many
    requests fit (vLLM accounting, paged blocks of 16) and a bar of the GPU's memory.

    ``ex.result`` is :func:`concurrency`'s Breakdown with ``meta["requests"]``.  A model
    whose weights do not fit gives 0 requests and the reason; an invalid context shows a
    message.
    """
    import ipywidgets as w

    from .base import Explorer, model_dropdown

    controls = {
        "model": model_dropdown(model),
        "gpu": w.Dropdown(options=list(GPUS), value=gpu, description="GPU"),
        "seq_len": w.IntText(value=seq_len, description="tokens/req"),
        "gpu_memory_utilization": w.FloatSlider(value=gpu_memory_utilization, min=0.5, max=1.0, step=0.01,
                                                description="utilisation"),
        "weight_dtype": w.Dropdown(options=list(WEIGHT_DTYPES), value=weight_dtype, description="weights"),
        "kv_dtype": w.Dropdown(options=list(KV_DTYPES), value=kv_dtype, description="kv_dtype"),
    }

    def compute(model, gpu, seq_len, gpu_memory_utilization, weight_dtype, kv_dtype):
        return concurrency(model, gpu, seq_len, gpu_memory_utilization, weight_dtype, kv_dtype)

    return Explorer(compute, controls, plot=lambda r, ax: plot_gpu_budget(r, ax),
                    describe=describe_concurrency, figsize=(7, 2.2),
                    title="Concurrency: how many requests fit on one GPU")
