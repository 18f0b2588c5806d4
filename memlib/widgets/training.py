"""Chapter 04 explorers: training state, the step timeline, and LoRA / QLoRA on one GPU.

Three layers, as in every explorer (memlib.widgets):

1. compute: :func:`memlib.training.train_memory` (its ``meta["marks"]`` are the step
   timeline), :func:`memlib.training.state_bytes`, :func:`memlib.lora.lora_fit` and
   :func:`memlib.optimizers.optimizer_state_bytes`; here only :func:`parse_targets` turns
   the text a reader types into LoRA targets;
2. plot functions that draw on a matplotlib ``ax``: :func:`plot_step_timeline`,
   :func:`plot_bytes_per_param`, :func:`plot_step_phase`, :func:`plot_peak_vs_seq_len`,
   :func:`plot_lora_fit`, :func:`plot_predicted_vs_measured`;
3. explorers: :func:`training_explorer` and :func:`lora_explorer`.

ipywidgets and matplotlib are imported only inside the functions that need them.
"""
from __future__ import annotations


import numpy as np

from ..breakdown import Breakdown
from ..hardware import GPUS
from ..lora import BASES, TARGET_GROUPS, lora_fit
from ..plotting import plot_predicted_vs_measured  # noqa: F401  (re-exported for chapter 04)
from ..scenario import ATTENTIONS, DEFAULT_OPTIMIZER_IMPL, OPTIMIZER_IMPLS, OPTIMIZERS, PHASES, PRECISIONS, RECOMPUTE
from ..training import COMPONENTS, OPTIMIZER_LABELS, train_memory
from ..units import GB, UNITS, GiB

COMPONENT_COLORS = {"weights": "#4C72B0", "optimizer": "#DD8452", "gradients": "#55A868",
                    "autocast_cache": "#8172B3", "activations": "#C44E52", "transient": "#CCB974",
                    "master_weights": "#64B5CD"}
#: Colour of the phase that holds a step's peak.
PHASE_COLORS = {"forward": "#55A868", "backward": "#C44E52", "step": "#4C72B0"}
#: Line style and colour of each optimizer implementation.
IMPL_STYLES = {"loop": "-", "foreach": "--", "fused": ":"}
IMPL_COLORS = {"loop": "#4C72B0", "foreach": "#DD8452", "fused": "#55A868"}
#: Width of each phase on a timeline's x axis (the axis is "progress through the phase").
PHASE_WIDTH = {"forward": 1.0, "backward": 1.0, "step": 0.35}


# -- compute ---------------------------------------------------------------------------------
def parse_targets(targets):
    """LoRA targets typed as text: a group name (``all-linear``, ``attention``, ``mlp``) or
    module names separated by commas or spaces (``q_proj, v_proj`` or ``q v``)."""
    if not isinstance(targets, str):
        return targets
    text = targets.strip()
    if text in TARGET_GROUPS:
        return text
    names = tuple(t for t in text.replace(",", " ").split() if t)
    if not names:
        raise ValueError("targets: empty; give module names (q_proj, v_proj, ...) or "
                         f"one of {', '.join(TARGET_GROUPS)}")
    return names


# -- describe --------------------------------------------------------------------------------
def describe_training(r: Breakdown) -> str:
    """Table of a training step plus the peak's phase and moment, and the per-phase peaks."""
    m = r.meta
    lines = [r.table(), "",
             f"peak {r.total / GiB:,.2f} GiB = {r.total / GB:,.2f} GB in the {r.peak_phase} "
             f"(at '{r.peak_at}')",
             "phase peaks: " + "  ".join(f"{ph} {v / GiB:,.2f}" for ph, v in r.phases.items()) + " GiB",
             f"optimizer state {m['optimizer_state'] / GiB:,.2f} GiB; "
             f"activations saved by the end of the forward {m['activations_saved'] / GiB:,.2f} GiB"]
    if "params" in m:
        p = 4 if m["precision"] == "mixed" else 2
        lines.append(f"model states: {(2 * p * m['params'] + m['optimizer_state']) / m['params']:.2f} bytes/param"
                     + (f" + autocast cache {m['autocast_cache'] / m['params']:.2f}" if m.get("autocast_cache") else ""))
    return "\n".join(lines)


def describe_lora(r: Breakdown) -> str:
    """Table of a LoRA/QLoRA step plus trainable parameters and whether it fits the GPU."""
    m = r.meta
    verdict = (f"fits on {m['gpu']} ({m['gpu_memory'] / GiB:,.2f} GiB): {m['margin'] / GiB:,.2f} GiB to spare\n"
               f"  for the CUDA context and the allocator's slack (chapter 07 measures them)"
               if m["fits"] else
               f"does NOT fit on {m['gpu']} ({m['gpu_memory'] / GiB:,.2f} GiB): {-m['margin'] / GiB:,.2f} GiB short")
    lines = [r.table(), "",
             f"trainable: {m['trainable_params']:,} adapter parameters "
             f"({m['trainable_params'] / m['params']:.3%} of {m['params']:,}); targets {', '.join(m['targets'])}",
             f"frozen base ({m['base']}{' + double quant' if m['base'] == 'nf4' and m['double_quant'] else ''}): "
             f"{m['base_weights'] / GiB:,.2f} GiB = {m['base_weights'] / GB:,.2f} GB; "
             f"lora_dropout {m.get('lora_dropout', 0.0):g}",
             f"peak {r.total / GiB:,.2f} GiB = {r.total / GB:,.2f} GB in the {r.peak_phase}; {verdict}"]
    return "\n".join(lines)


# -- plot functions --------------------------------------------------------------------------
def _phase_offsets():
    offsets, start = {}, 0.0
    for ph in PHASES:
        offsets[ph] = start
        start += PHASE_WIDTH[ph]
    return offsets, start


def _event_x(phases):
    """x of each point of a measured timeline: a phase's points spread evenly over its width."""
    phases = list(phases)
    offsets, end = _phase_offsets()
    counts = {ph: phases.count(ph) for ph in PHASES}
    seen = dict.fromkeys(PHASES, 0)
    xs = []
    for ph in phases:
        xs.append(offsets[ph] + PHASE_WIDTH[ph] * seen[ph] / max(counts[ph], 1))
        seen[ph] += 1
    return np.array(xs), offsets, end


def _mark_spans(marks):
    """``(x0, x1)`` of every :class:`~memlib.training.Mark` of a predicted timeline: the
    moment it stands for, laid out as the bench's events are (layers evenly over most of
    the phase, the loss and the embedding at the ends).  Other marks are spread evenly
    over their phase."""
    offsets, _ = _phase_offsets()
    layer_ids = [mk.layer for mk in marks if mk.layer is not None]
    L = max(layer_ids) + 1 if layer_ids else 1
    fixed = {("forward", "loss"): (0.90, 0.97), ("forward", "end"): (0.97, 1.0),
             ("backward", "loss"): (0.0, 0.03), ("backward", "lm_head"): (0.03, 0.06),
             ("backward", "embedding"): (0.97, 1.0), ("step", "optimizer"): (0.0, 1.0)}
    spans = []
    for k, mk in enumerate(marks):
        ph = mk.phase
        if (ph, mk.label) in fixed:
            f0, f1 = fixed[(ph, mk.label)]
        elif ph == "forward" and mk.layer is not None:
            f0, f1 = 0.9 * mk.layer / L, 0.9 * (mk.layer + 1) / L
        elif ph == "backward" and mk.layer is not None:
            j = L - 1 - mk.layer + (0.5 if mk.part == "attention" else 0.0)
            f0, f1 = 0.06 + 0.91 * j / L, 0.06 + 0.91 * (j + 0.5) / L
        else:
            same = [q for q, m in enumerate(marks) if m.phase == ph]
            r = same.index(k)
            f0, f1 = r / len(same), (r + 1) / len(same)
        spans.append((offsets[ph] + PHASE_WIDTH[ph] * f0, offsets[ph] + PHASE_WIDTH[ph] * f1))
    return spans


def plot_step_timeline(result: Breakdown, ax, measured: Breakdown | None = None, unit: str = "GiB",
                       legend: bool = True, title: str | None = None, annotate: bool = True):
    """Live memory through one training step: forward, backward, optimizer step.

    ``result``: a :func:`memlib.training.train_memory` Breakdown; its ``meta["marks"]``
    (:class:`~memlib.training.Mark` records) are drawn as stacked components.  Each mark is
    drawn as a short plateau at the moment it stands for, joined linearly (live bytes change
    linearly across a run of identical layers).
    ``legend``: True (beside the axes), ``"inside"`` (components only, inside the axes) or False.
    ``measured``: a :func:`memlib.measure.measure_train` Breakdown whose
    ``meta["timeline"]`` (``(phase, live bytes)``) is drawn on top, its points spread
    evenly over each phase.  The x axis is progress through each phase (phases have fixed
    widths, :data:`PHASE_WIDTH`).  The predicted peak is a dot, the measured one a cross;
    their values are written in this axes' annotation (a legend shared by several panels
    names them without numbers).  Returns ``ax``.
    """
    scale = UNITS[unit]
    marks = result.meta["marks"]
    spans = _mark_spans(marks)
    offsets, end = _phase_offsets()
    comps = [mk.components for mk in marks]
    names = [k for k in COMPONENTS if any(c.get(k, 0) for c in comps)]
    first = comps[0]
    start = {k: (first.get(k, 0) if k in ("weights", "optimizer", "gradients") else 0) for k in names}
    xs, rows = [0.0], [start]
    for (x0, x1), c in zip(spans, comps):
        xs += [x0, x1]
        rows += [c, c]
    xs = np.array(xs)
    ys = [np.array([r.get(k, 0) for r in rows], dtype=float) / scale for k in names]
    ax.stackplot(xs, *ys, labels=[k.replace("_", " ") for k in names], colors=[COMPONENT_COLORS[k] for k in names],
                 alpha=0.85)
    totals = np.array([mk.total for mk in marks], dtype=float)
    best = int(np.argmax(totals))
    peak_x = sum(spans[best]) / 2
    ax.plot([peak_x], [totals[best] / scale], "o", color="k", ms=7, zorder=5, clip_on=False,
            label="predicted peak")
    top = totals.max()
    note = f"predicted {totals[best] / scale:,.2f} {unit}"
    if measured is not None:
        tl = measured.meta["timeline"]
        mx, _, _ = _event_x([ph for ph, _ in tl])
        mv = np.array([v for _, v in tl], dtype=float)
        ax.plot(mx, mv / scale, color="k", lw=1.2, label="measured (bench)")
        j = int(np.argmax(mv))
        ax.plot([mx[j]], [mv[j] / scale], "x", color="#b00020", ms=10, mew=2.5, zorder=6, clip_on=False,
                label="measured peak")
        top = max(top, mv.max())
        note += f", measured {mv[j] / scale:,.2f} {unit}"
    for ph in PHASES[1:]:
        ax.axvline(offsets[ph], color="0.3", lw=0.8, ls=":")
    if annotate:
        ax.text(0.02 if peak_x > end * 0.45 else 0.98, 0.97,
                f"peak in the {result.peak_phase} ({result.peak_at or ''})\n{note}",
                transform=ax.transAxes, fontsize=8, va="top", ha="left" if peak_x > end * 0.45 else "right",
                bbox=dict(boxstyle="round,pad=0.25", fc="white", ec="0.7", alpha=0.9))
    pad = 0.012 * end                      # room for the markers at either edge
    ax.set_xlim(-pad, end + pad)
    ax.set_ylim(0, top / scale * 1.25)
    ax.set_xticks([offsets[ph] + PHASE_WIDTH[ph] / 2 for ph in PHASES])
    ax.set_xticklabels([ph + (" (peak)" if ph == result.peak_phase else "") for ph in PHASES])
    ax.tick_params(axis="x", length=0)
    ax.set_ylabel(f"live memory ({unit})")
    if title is not None:
        ax.set_title(title, fontsize=10)
    if legend == "inside":      # compact: components only (the explorers draw this one fast)
        handles, labels = ax.get_legend_handles_labels()
        comp_labels = {k.replace("_", " ") for k in COMPONENT_COLORS}
        keep = [i for i, lbl in enumerate(labels) if lbl in comp_labels] or list(range(len(labels)))
        ax.legend([handles[i] for i in keep], [labels[i] for i in keep], fontsize=7, loc="lower left",
                  ncol=min(len(keep), 3), framealpha=0.9)
    elif legend:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax


def plot_bytes_per_param(rows, ax, labels=None, reference: float | None = 16):
    """Horizontal stacked bars of bytes per parameter: weights, gradients, an fp32 master copy
    (where the recipe keeps one), optimizer state and (hatched, alive during the forward and,
    for the copies autograd saved, into the backward) the autocast cache.

    ``rows``: Breakdowns from :func:`memlib.training.state_bytes`.  A dashed line marks ``reference``
    (the ZeRO paper's 16 bytes/param).  Returns ``ax``.
    """
    if isinstance(rows, Breakdown):
        rows = [rows]
    rows = list(rows)
    labels = list(labels or [r.title for r in rows])
    y = np.arange(len(rows))
    left = np.zeros(len(rows))
    for k in ("weights", "gradients", "master_weights", "optimizer", "autocast_cache"):
        vals = np.array([r.get(k, 0) / r.meta["params"] for r in rows])
        if not vals.any():
            continue
        cache = k == "autocast_cache"
        ax.barh(y, vals, left=left, height=0.65,
                label="autocast cache (not at the step)" if cache else k.replace("_", " "),
                color="white" if cache else COMPONENT_COLORS[k], edgecolor=COMPONENT_COLORS[k],
                hatch="///" if cache else None, lw=1 if cache else 0)
        left += vals
    for i, r in enumerate(rows):
        states = sum(r.get(k, 0) for k in ("weights", "gradients", "master_weights", "optimizer")) / r.meta["params"]
        cache = r.get("autocast_cache", 0) / r.meta["params"]
        ax.text(left[i], i, f" {states:.2f}" + (f" (+{cache:.2f})" if cache else ""), va="center",
                ha="left", fontsize=8)
    if reference:
        ax.axvline(reference, color="k", ls="--", lw=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(left.max(), reference or 0) * 1.38)
    ax.set_xlabel("bytes per parameter")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax


def plot_step_phase(results, ax, labels=None, measured=None, unit: str = "GiB"):
    """Horizontal stacked bars of what is live at the peak of each result's optimizer step
    (``phase_components["step"]``: weights, optimizer state, gradients and the optimizer's
    temporaries), with a black tick at the peak of the backward: a bar that passes its tick
    puts the step's peak above the backward's.

    ``results``: :func:`memlib.training.train_memory` Breakdowns (e.g. one per
    ``optimizer_impl``).  ``measured``: the bench's step-phase peak per result (bytes, or
    None where there is no measurement), drawn as red crosses.  Returns ``ax``.
    """
    if isinstance(results, Breakdown):
        results = [results]
    results = list(results)
    labels = list(labels or [r.title for r in results])
    scale = UNITS[unit]
    y = np.arange(len(results))
    left = np.zeros(len(results))
    for k in ("weights", "optimizer", "gradients", "transient"):
        vals = np.array([r.phase_components["step"].get(k, 0) for r in results], dtype=float) / scale
        if not vals.any():
            continue
        ax.barh(y, vals, left=left, height=0.62, color=COMPONENT_COLORS[k],
                label="optimizer temporaries" if k == "transient" else k)
        left += vals
    back = np.array([r.phases["backward"] for r in results], dtype=float) / scale
    ax.plot(back, y, "|", color="k", ms=22, mew=2.2, label="backward's peak")
    meas = [None if measured is None else measured[i] for i in range(len(results))]
    pts = [(v / scale, i) for i, v in enumerate(meas) if v is not None]
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "x", color="#b00020", ms=9, mew=2,
                label="measured step peak (bench)", zorder=5)
    right = max(left.max(), back.max())
    for i, r in enumerate(results):
        x = max(left[i], back[i], (meas[i] or 0) / scale) + 0.025 * right
        ax.text(x, i, f"{left[i]:,.1f} {unit}" + (" > backward" if left[i] > back[i] else ""), va="center",
                fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, right * 1.32)
    ax.set_xlabel(f"live at the optimizer step's peak ({unit})")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax


def plot_peak_vs_seq_len(model, seq_lens, ax, precision: str = "bf16", impls=OPTIMIZER_IMPLS,
                         recompute: str = "none", batch_size: int = 1, unit: str = "GiB",
                         gpu: str | None = None):
    """The peak of one training step against sequence length (log x, linear y), one line per
    optimizer implementation (colour :data:`IMPL_COLORS`, style :data:`IMPL_STYLES`); one
    vectorised :func:`memlib.training.train_memory` call per line.  Where the peak is in the
    optimizer step a line is flat; where it is at the start of the backward it rises, the
    same for every implementation.  A dot marks the first length (exact, from a sweep over
    every integer length) whose peak is in the backward; an implementation whose step never
    holds the peak says so in the legend.  ``gpu`` draws that GPU's memory.  Returns ``ax``."""
    from matplotlib.ticker import FuncFormatter

    from ..plotting import token_ticks
    s = np.asarray(seq_lens, dtype=np.int64)
    dense = np.arange(int(s.min()), int(s.max()) + 1, dtype=np.int64)
    scale = UNITS[unit]
    kw = dict(precision=precision, recompute=recompute)
    top = 0.0
    for j, impl in enumerate(impls):
        y = np.asarray(train_memory(model, batch_size, s, optimizer_impl=impl, **kw).total, dtype=float) / scale
        phase = train_memory(model, batch_size, dense, optimizer_impl=impl, **kw).meta["peak_phase"]
        step, back = phase == "step", phase == "backward"
        label = impl
        if step.any() and back.any():
            first = int(dense[np.argmax(back)])
            label += f": step holds the peak up to {first - 1:,} tokens"
            v = train_memory(model, batch_size, first, optimizer_impl=impl, **kw).total / scale
            ax.plot([first], [v], "o", color=IMPL_COLORS[impl], ms=6, zorder=4)
        elif back.all():
            label += ": the backward holds the peak at every length"
        else:
            label += ": the step holds the peak at every length"
        ax.plot(s, y, IMPL_STYLES[impl], color=IMPL_COLORS[impl], lw=1.8, label=label, zorder=3 - j * 0.1)
        top = max(top, float(y.max()))
    if gpu is not None:
        g = GPUS[gpu] / scale
        ax.axhline(g, color="k", lw=0.8, ls="-.")
        ax.text(s[0], g, f" {gpu}", fontsize=7, ha="left", va="bottom")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(token_ticks))
    ax.set_ylim(0, top * 1.3)
    ax.set_xlabel(f"sequence length (tokens, batch {batch_size})")
    ax.set_ylabel(f"peak of one step ({unit})")
    ax.legend(fontsize=7, loc="upper left", title="AdamW implementation", title_fontsize=7)
    return ax


def plot_lora_fit(results, ax, gpu_memory: int | None = None, labels=None, gpu_name: str | None = None,
                  unit: str = "GiB"):
    """One stacked bar per LoRA/QLoRA (or any training) Breakdown, and the GPU's memory as a
    line (in the legend): a bar under the line fits.  Above each bar, its peak and its margin
    to the line (spare or short), before the CUDA context and the allocator's slack, which
    come on top (chapter 07).  ``gpu_memory`` defaults to the first result's
    ``meta["gpu_memory"]``.  Returns ``ax``."""
    from ..plotting import stacked_bar
    if isinstance(results, Breakdown):
        results = [results]
    results = list(results)
    if gpu_memory is None:
        gpu_memory = results[0].meta.get("gpu_memory")
        gpu_name = gpu_name or results[0].meta.get("gpu")
    stacked_bar(results, ax=ax, unit=unit, labels=labels or [r.title for r in results],
                colors=COMPONENT_COLORS, legend=False)
    top = max(r.total for r in results) / UNITS[unit]
    if gpu_memory:
        g = gpu_memory / UNITS[unit]
        ax.axhline(g, color="k", ls="--", lw=1, label=f"{gpu_name or 'GPU'}: {g:,.2f} {unit}")
        for x, r in enumerate(results):
            m = (gpu_memory - r.total) / UNITS[unit]
            ax.annotate(f"{abs(m):,.2f} {unit} {'spare' if m >= 0 else 'short'}", (x, r.total / UNITS[unit]),
                        xytext=(0, 13), textcoords="offset points", ha="center", va="bottom", fontsize=7,
                        color="#1b7a1b" if m >= 0 else "#b00020")
        top = max(g, top)
    ax.set_ylim(0, top * 1.22)
    ax.set_ylabel(f"peak memory ({unit})")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax


# -- explorers -------------------------------------------------------------------------------
def fixed_margins(ax, left: float = 0.85, right: float = 0.15, bottom: float = 0.5, top: float = 0.3):
    """Give ``ax``'s figure fixed margins, in inches, and no layout engine: an explorer redraws
    one figure in place, and margins laid out for the first result would clip the y label
    of a later one with wider tick labels.  Returns ``ax``."""
    fig = ax.figure
    w, h = fig.get_size_inches()
    fig.set_layout_engine("none")      # a constrained layout would move the axes again at draw time
    ax.set_position([left / w, bottom / h, 1 - (left + right) / w, 1 - (bottom + top) / h])
    return ax


def training_explorer(model="Llama-3.1-8B", batch_size: int = 1, seq_len: int = 2048,
                      precision: str = "bf16", optimizer: str = "adamw", recompute: str = "none",
                      attention: str = "sdpa", grad_accum: int = 1, optimizer_impl: str = DEFAULT_OPTIMIZER_IMPL):
    """Model × batch × context × precision × optimizer (and its implementation) × recompute →
    the peak of a training step, its phase, and the stacked step timeline.

    ``ex.result`` is :func:`memlib.training.train_memory`'s Breakdown (components live at the peak,
    ``phases``, ``peak_phase``, ``meta["marks"]``).  A batch below 1 or a context beyond
    the model's ``max_position_embeddings`` shows a message instead.
    """
    import ipywidgets as w

    from .base import Explorer, model_dropdown

    controls = {
        "model": model_dropdown(model),
        "batch_size": w.IntText(value=batch_size, description="batch"),
        "seq_len": w.IntText(value=seq_len, description="seq_len"),
        "precision": w.Dropdown(options=list(PRECISIONS), value=precision, description="precision"),
        "optimizer": w.Dropdown(options=[(OPTIMIZER_LABELS[o], o) for o in OPTIMIZERS], value=optimizer,
                                description="optimizer"),
        "optimizer_impl": w.Dropdown(options=list(OPTIMIZER_IMPLS), value=optimizer_impl, description="impl"),
        "recompute": w.Dropdown(options=list(RECOMPUTE), value=recompute, description="recompute"),
        "attention": w.Dropdown(options=list(ATTENTIONS), value=attention, description="attention"),
        "grad_accum": w.IntText(value=grad_accum, description="grad accum"),
    }

    def compute(model, batch_size, seq_len, precision, optimizer, optimizer_impl, recompute, attention, grad_accum):
        return train_memory(model, batch_size, seq_len, precision, optimizer, recompute, attention, grad_accum,
                            optimizer_impl=optimizer_impl)

    def plot(r, ax):
        plot_step_timeline(r, ax, legend="inside")
        fixed_margins(ax, left=0.8, right=0.15, bottom=0.4, top=0.15)

    return Explorer(compute, controls, plot=plot, describe=describe_training, figsize=(7, 3.2),
                    title="A training step: where the peak falls")


def lora_explorer(model="Llama-2-7b", rank: int = 16, targets: str = "all-linear", base: str = "nf4",
                  double_quant: bool = False, batch_size: int = 1, seq_len: int = 2048,
                  gpu: str = "RTX 4090 24GB", recompute: str = "none", lora_dropout: float = 0.0):
    """Model × rank × targets × base (bf16 / nf4) × double quant × dropout × batch × context × GPU →
    the LoRA / QLoRA peak, whether it fits, and a bar against the GPU's memory.

    ``targets`` is text: a group (``all-linear``, ``attention``, ``mlp``) or module names
    (``q_proj, v_proj``).  ``ex.result`` is :func:`memlib.lora.lora_fit`'s Breakdown
    (``meta["fits"]``, ``meta["margin"]``, ``meta["trainable_params"]``).  A rank or batch
    below 1, an unknown target, a dropout outside [0, 1) or a context beyond the model's
    limit shows a message.
    """
    import ipywidgets as w

    from .base import Explorer, model_dropdown

    controls = {
        "model": model_dropdown(model),
        "rank": w.IntText(value=rank, description="rank r"),
        "targets": w.Combobox(value=targets, options=list(TARGET_GROUPS) + ["q_proj, v_proj", "q, k, v, o"],
                              description="targets", ensure_option=False),
        "base": w.Dropdown(options=list(BASES), value=base, description="base"),
        "double_quant": w.Checkbox(value=double_quant, description="double quant (nf4)"),
        "lora_dropout": w.FloatText(value=lora_dropout, step=0.05, description="lora dropout"),
        "batch_size": w.IntText(value=batch_size, description="batch"),
        "seq_len": w.IntText(value=seq_len, description="seq_len"),
        "gpu": w.Dropdown(options=list(GPUS), value=gpu, description="GPU"),
        "recompute": w.Dropdown(options=list(RECOMPUTE), value=recompute, description="recompute"),
    }

    def compute(model, rank, targets, base, double_quant, lora_dropout, batch_size, seq_len, gpu, recompute):
        return lora_fit(model, gpu, batch_size, seq_len, rank, parse_targets(targets), base, double_quant, recompute,
                        lora_dropout=lora_dropout)

    def plot(r, ax):
        plot_lora_fit([r], ax, labels=[f"{'QLoRA' if r.meta['base'] == 'nf4' else 'LoRA'} r={r.meta['rank']}"])
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        fixed_margins(ax, left=0.8, right=2.0, bottom=0.4, top=0.15)

    return Explorer(compute, controls, plot=plot, describe=describe_lora, figsize=(5.5, 3.6),
                    title="LoRA / QLoRA: does it fit on this GPU?")
